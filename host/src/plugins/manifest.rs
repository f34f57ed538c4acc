//! A worker kind's manifest: name, version, the `baa:worker` world it was
//! built for and the capabilities it requests, stored as a top-level custom
//! section (`baa:worker-manifest`, JSON) of the component, so the host reads
//! it without running guest code. Any language's build can add it:
//! `baa-runner stamp kind.wasm` asks the component's own `describe` once (in
//! the sandbox) and writes the section.

use serde::{Deserialize, Serialize};

use crate::sandbox::bindings::WIT_PACKAGE;

/// The custom section's name.
pub const SECTION: &str = "baa:worker-manifest";

/// What a worker kind says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// The world it implements, e.g. `baa:worker/worker@0.1.0`.
    pub world: String,
    pub capabilities: Capabilities,
}

/// What the kind requests (the operator grants a subset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub programs: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub network: bool,
}

/// The world this host implements, as a manifest names it.
pub fn host_world() -> String {
    let (package, version) = WIT_PACKAGE.split_once('@').unwrap_or((WIT_PACKAGE, ""));
    format!("{package}/worker@{version}")
}

/// Whether a component built for `world` runs on this host: the same
/// package and world, and a semver-compatible version (same major; for
/// 0.x, the same minor).
pub fn compatible(world: &str) -> bool {
    let host = host_world();
    let split = |w: &str| {
        let (name, version) = w.split_once('@')?;
        let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
        Some((name.to_string(), parts.next()??, parts.next()??))
    };
    match (split(world), split(&host)) {
        (Some((name, major, minor)), Some((host_name, host_major, host_minor))) => {
            name == host_name && major == host_major && (major > 0 || minor == host_minor)
        }
        _ => false,
    }
}

/// A top-level section: its id, its whole extent and its contents.
type Section = (u8, std::ops::Range<usize>, std::ops::Range<usize>);

/// The top-level sections of a component or module. Errors name the offset
/// where the binary stops making sense.
fn sections(bytes: &[u8]) -> Result<Vec<Section>, String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly binary".into());
    }
    let mut out = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let start = at;
        let id = bytes[at];
        at += 1;
        let (size, used) = leb128(&bytes[at..]).ok_or(format!("bad section size at byte {at}"))?;
        at += used;
        let end = at
            .checked_add(size as usize)
            .filter(|end| *end <= bytes.len())
            .ok_or(format!("section at byte {start} runs past the end"))?;
        out.push((id, start..end, at..end));
        at = end;
    }
    Ok(out)
}

fn leb128(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn push_leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The name and payload of a custom section's contents.
fn custom(contents: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, used) = leb128(contents)?;
    let name_end = used.checked_add(len as usize)?;
    Some((contents.get(used..name_end)?, contents.get(name_end..)?))
}

/// The manifest of a component, if it carries one.
pub fn read(bytes: &[u8]) -> Result<Option<Manifest>, String> {
    for (id, _, contents) in sections(bytes)? {
        if id != 0 {
            continue;
        }
        if let Some((name, payload)) = custom(&bytes[contents]) {
            if name == SECTION.as_bytes() {
                return serde_json::from_slice(payload)
                    .map(Some)
                    .map_err(|e| format!("its `{SECTION}` section is not a valid manifest: {e}"));
            }
        }
    }
    Ok(None)
}

/// `bytes` with `manifest` as its manifest section (replacing any earlier one).
pub fn write(bytes: &[u8], manifest: &Manifest) -> Result<Vec<u8>, String> {
    let mut out = bytes[..8.min(bytes.len())].to_vec();
    for (id, whole, contents) in sections(bytes)? {
        let ours =
            id == 0 && custom(&bytes[contents]).is_some_and(|(n, _)| n == SECTION.as_bytes());
        if !ours {
            out.extend_from_slice(&bytes[whole]);
        }
    }
    let payload = serde_json::to_vec(manifest).map_err(|e| e.to_string())?;
    let mut contents = Vec::new();
    push_leb128(&mut contents, SECTION.len() as u64);
    contents.extend_from_slice(SECTION.as_bytes());
    contents.extend_from_slice(&payload);
    out.push(0);
    push_leb128(&mut out, contents.len() as u64);
    out.extend_from_slice(&contents);
    Ok(out)
}
