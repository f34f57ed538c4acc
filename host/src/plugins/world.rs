//! The versions of the `baa:worker` world this host runs, and which one a
//! component targets (by its executor export, or its manifest's world).
//! The bindings of each live in `crate::worker` (`v0_1`, `v0_2`).

use serde::Serialize;

/// A released version of the world that this host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum World {
    /// `baa:worker@0.1.0`, frozen in `wit/released/0.1.0`.
    #[serde(rename = "baa:worker/worker@0.1.0")]
    V0_1,
    /// `baa:worker@0.2.0` (`wit/worker.wit`): typed denials.
    #[serde(rename = "baa:worker/worker@0.2.0")]
    V0_2,
}

impl World {
    /// The version new kinds (the SDK, `new`, `stamp`) are built for.
    pub const LATEST: World = World::V0_2;
    /// Every version this host runs, oldest first.
    pub const ALL: [World; 2] = [World::V0_1, World::V0_2];

    /// The package with its version, as interface names carry it.
    pub fn package(self) -> &'static str {
        match self {
            World::V0_1 => "baa:worker@0.1.0",
            World::V0_2 => "baa:worker@0.2.0",
        }
    }

    /// The version alone: `0.2.0`.
    pub fn version(self) -> &'static str {
        let package = self.package();
        package.split_once('@').map_or(package, |(_, v)| v)
    }

    /// The world's full name, as a manifest names it: `baa:worker/worker@0.2.0`.
    pub fn name(self) -> String {
        format!("baa:worker/worker@{}", self.version())
    }

    /// The export every kind of this version provides.
    pub fn executor_export(self) -> String {
        format!("baa:worker/worker-executor@{}", self.version())
    }

    /// The version a component exporting `exports` implements.
    pub fn of_exports<'a>(exports: impl IntoIterator<Item = &'a str>) -> Option<World> {
        let exports: Vec<&str> = exports.into_iter().collect();
        World::ALL
            .into_iter()
            .rev()
            .find(|w| exports.contains(&w.executor_export().as_str()))
    }

    /// The version that runs a component built for `world` (as a manifest
    /// names it): the same package and world and a semver-compatible
    /// version (same major; for 0.x the same minor), as wasmtime's linker
    /// matches versioned imports.
    pub fn running(world: &str) -> Option<World> {
        let (name, version) = world.split_once('@')?;
        let wanted = semver::Version::parse(version).ok()?;
        World::ALL.into_iter().rev().find(|w| {
            let Ok(have) = semver::Version::parse(w.version()) else {
                return false;
            };
            name == "baa:worker/worker"
                && wanted.major == have.major
                && (wanted.major > 0 || wanted.minor == have.minor)
        })
    }

    /// The packages this host runs, for messages.
    pub fn supported() -> String {
        World::ALL
            .iter()
            .map(|w| w.package())
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_is_found_by_its_export_and_by_semver() {
        assert_eq!(
            World::of_exports(["baa:worker/worker-executor@0.1.0"]),
            Some(World::V0_1)
        );
        assert_eq!(
            World::of_exports(["x", "baa:worker/worker-executor@0.2.0"]),
            Some(World::V0_2)
        );
        assert_eq!(
            World::of_exports(["baa:worker/worker-executor@0.3.0"]),
            None
        );
        assert_eq!(World::running("baa:worker/worker@0.1.7"), Some(World::V0_1));
        assert_eq!(World::running(&World::LATEST.name()), Some(World::LATEST));
        assert_eq!(World::running("baa:worker/worker@0.3.0"), None);
        assert_eq!(World::running("baa:worker/worker@1.1.0"), None);
        assert_eq!(World::running("other:pkg/worker@0.1.0"), None);
        assert_eq!(World::running("baa:worker/worker@x.y"), None);
    }

    #[test]
    fn every_version_has_its_wit_file() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../wit");
        let latest = std::fs::read_to_string(format!("{root}/worker.wit")).unwrap();
        assert!(latest.contains(&format!("package {};", World::LATEST.package())));
        for world in World::ALL {
            let path = format!("{root}/released/{}/worker.wit", world.version());
            let Ok(frozen) = std::fs::read_to_string(&path) else {
                // The latest version is released when it is frozen.
                assert_eq!(world, World::LATEST, "{path} is missing");
                continue;
            };
            assert!(frozen.contains(&format!("package {};", world.package())));
        }
    }
}
