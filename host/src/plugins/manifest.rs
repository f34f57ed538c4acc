//! A worker kind's manifest: name, version, the `baa:worker` world it was
//! built for and the capabilities it requests, stored as a top-level custom
//! section (`baa:worker-manifest`, JSON) of the component, so the host reads
//! it without running guest code. Any language's build can add it:
//! `baa-runner stamp kind.wasm` asks the component's own `describe` once (in
//! the sandbox) and writes the section.

use serde::{Deserialize, Serialize};

use super::world::World;
pub use crate::config::Capabilities;

/// The custom section's name.
pub const SECTION: &str = "baa:worker-manifest";

/// Why a manifest could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not a valid WebAssembly binary: {0}")]
    NotWasm(#[from] wasmparser::BinaryReaderError),
    #[error("its `{SECTION}` section is not a valid manifest: {0}")]
    Invalid(#[source] serde_json::Error),
    #[error("the manifest cannot be encoded: {0}")]
    Encode(#[source] serde_json::Error),
}

/// What a worker kind says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// The world it implements, e.g. `baa:worker/worker@0.2.0`.
    pub world: String,
    pub capabilities: Capabilities,
}

/// The world new kinds are built for, as a manifest names it.
pub fn host_world() -> String {
    World::LATEST.name()
}

/// Whether a component built for `world` runs on this host.
pub fn compatible(world: &str) -> bool {
    World::running(world).is_some()
}

/// A top-level section: its id and the range of its contents.
type Section = (u8, std::ops::Range<usize>);

/// The top-level sections of a component or module (nested modules and
/// components are one section each), read with `wasmparser`.
fn sections(bytes: &[u8]) -> Result<Vec<Section>, ManifestError> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload?;
        match &payload {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => {
                if depth == 0 {
                    out.extend(payload.as_section());
                }
                depth += 1;
            }
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.extend(payload.as_section()),
            _ => {}
        }
    }
    Ok(out)
}

/// The name and payload of a custom section's contents.
fn custom(contents: &[u8]) -> Option<(&str, &[u8])> {
    let reader =
        wasmparser::CustomSectionReader::new(wasmparser::BinaryReader::new(contents, 0)).ok()?;
    Some((reader.name(), reader.data()))
}

/// The manifest of a component, if it carries one.
pub fn read(bytes: &[u8]) -> Result<Option<Manifest>, ManifestError> {
    for (id, contents) in sections(bytes)? {
        match custom(&bytes[contents]) {
            Some((SECTION, payload)) if id == 0 => {
                return serde_json::from_slice(payload)
                    .map(Some)
                    .map_err(ManifestError::Invalid);
            }
            _ => {}
        }
    }
    Ok(None)
}

/// `bytes` with `manifest` as its manifest section (replacing any earlier
/// one), written with `wasm-encoder`.
pub fn write(bytes: &[u8], manifest: &Manifest) -> Result<Vec<u8>, ManifestError> {
    use wasm_encoder::Encode;
    let sections = sections(bytes)?;
    // `sections` checked the preamble.
    let mut out = bytes[..8].to_vec();
    for (id, contents) in sections {
        let data = &bytes[contents];
        if id == 0 && custom(data).is_some_and(|(name, _)| name == SECTION) {
            continue;
        }
        out.push(id);
        wasm_encoder::RawSection { id, data }.encode(&mut out);
    }
    let payload = serde_json::to_vec(manifest).map_err(ManifestError::Encode)?;
    out.push(0);
    wasm_encoder::CustomSection {
        name: SECTION.into(),
        data: payload.into(),
    }
    .encode(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(world: &str) -> Manifest {
        Manifest {
            name: "hello".into(),
            version: "1.2.3".into(),
            description: "says hello".into(),
            world: world.into(),
            capabilities: Capabilities {
                programs: vec!["git".into()],
                env: vec![],
                network: false,
            },
        }
    }

    /// A minimal component: the preamble and one custom section.
    fn component() -> Vec<u8> {
        let mut component = wasm_encoder::Component::new();
        component.section(&wasm_encoder::CustomSection {
            name: "other".into(),
            data: b"kept".as_slice().into(),
        });
        component.finish()
    }

    #[test]
    fn a_written_manifest_reads_back_and_replaces_an_earlier_one() {
        let bytes = component();
        assert_eq!(read(&bytes).unwrap(), None);
        let first = write(&bytes, &manifest("baa:worker/worker@0.1.0")).unwrap();
        let mut second_manifest = manifest("baa:worker/worker@0.1.0");
        second_manifest.version = "2.0.0".into();
        let second = write(&first, &second_manifest).unwrap();
        assert_eq!(read(&second).unwrap(), Some(second_manifest));
        // One manifest section, and the other custom section kept.
        let names: Vec<String> = sections(&second)
            .unwrap()
            .into_iter()
            .filter_map(|(_, r)| custom(&second[r]).map(|(n, _)| n.to_string()))
            .collect();
        assert_eq!(names, ["other", SECTION]);
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&second)
            .unwrap();
    }

    #[test]
    fn garbage_and_bad_manifests_are_errors_naming_the_problem() {
        let err = read(b"not wasm at all").unwrap_err().to_string();
        assert!(err.contains("not a valid WebAssembly"), "{err}");
        let mut component = wasm_encoder::Component::new();
        component.section(&wasm_encoder::CustomSection {
            name: SECTION.into(),
            data: br#"{"name": 1}"#.as_slice().into(),
        });
        let err = read(&component.finish()).unwrap_err();
        assert!(matches!(err, ManifestError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("not a valid manifest"), "{err}");
    }
}
