//! What plugin authors run against a `.wasm` file: `stamp` (write its
//! manifest section from its own `describe`), `inspect` (manifest, digest
//! and interface, without running guest code) and `check` (component, world
//! and version, linking, manifest, `describe`, and a conformance step in a
//! scratch repository that must stay inside its worktree).

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::{execute, Runner};
use crate::contracts::{StepExecutionOutcome, WorkerKind};
use crate::plugins::manifest::{self, Capabilities, Manifest};
use crate::plugins::{PluginEntry, PluginSource};

/// `baa-runner inspect`: what a plugin file is, read without running it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    pub file: String,
    pub size: u64,
    pub sha256: String,
    /// Its manifest section, if it carries one.
    pub manifest: Option<Manifest>,
    /// The `baa:worker` interface it exports (`…@version`), if any.
    pub world: Option<String>,
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    /// Compiled now or loaded from the compiled cache.
    pub compiled: Option<String>,
    /// Why it cannot be loaded, if it cannot.
    pub error: Option<String>,
}

/// One item of `baa-runner check`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckItem {
    pub name: String,
    /// `pass`, `warn` or `fail`.
    pub level: &'static str,
    pub detail: String,
}

/// `baa-runner check`: every item, what the kind requests, the verdict.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub file: String,
    pub items: Vec<CheckItem>,
    pub requests: Option<Capabilities>,
    /// No item failed.
    pub passed: bool,
}

/// Why `stamp` could not write a kind's manifest.
#[derive(Debug, thiserror::Error)]
pub enum StampError {
    /// The file's name is not `<kind>.wasm`.
    #[error("{0}")]
    Name(String),
    /// The kind could not be loaded.
    #[error(transparent)]
    Plugin(#[from] crate::plugins::PluginError),
    /// Its `describe` failed.
    #[error("its describe failed: {0}")]
    Describe(String),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The plugin at `path`, named by its file name as discovery names it.
fn entry_for(path: &Path) -> Result<PluginEntry, String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let kind = WorkerKind::new(stem).map_err(|why| {
        format!(
            "{}: the file name must be `<kind>.wasm` with a valid kind name: {why}",
            path.display()
        )
    })?;
    Ok(PluginEntry {
        kind,
        source: PluginSource::File(path.to_path_buf()),
    })
}

impl Runner {
    /// Read `path`'s manifest, digest and interface (compiling it, or
    /// loading it from the compiled cache, but running none of its code).
    pub fn inspect(&self, path: &Path) -> Inspection {
        let shared = &self.shared;
        let mut out = Inspection {
            file: path.display().to_string(),
            size: 0,
            sha256: String::new(),
            manifest: None,
            world: None,
            exports: Vec::new(),
            imports: Vec::new(),
            compiled: None,
            error: None,
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                out.error = Some(format!("cannot read {}: {e}", path.display()));
                return out;
            }
        };
        out.size = bytes.len() as u64;
        out.sha256 = crate::fsutil::sha256_hex(&bytes);
        match manifest::read(&bytes) {
            Ok(m) => out.manifest = m,
            Err(e) => out.error = Some(e.to_string()),
        }
        let entry = match entry_for(path) {
            Ok(entry) => entry,
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        };
        match shared.cache.get(
            shared.workers.engine(),
            &entry,
            shared.config.limits.plugin_file_bytes,
        ) {
            Ok(plugin) => {
                let ty = plugin.component.component_type();
                out.exports = ty
                    .exports(shared.workers.engine())
                    .map(|(n, _)| n.to_string())
                    .collect();
                out.imports = ty
                    .imports(shared.workers.engine())
                    .map(|(n, _)| n.to_string())
                    .collect();
                out.world = Some(plugin.world.name());
                out.compiled = Some(plugin.origin.describe());
            }
            Err(e) => out.error = Some(e.to_string()),
        }
        out
    }

    /// Ask `path`'s `describe` (in a store without capabilities) and write
    /// the answer into the file as its manifest section.
    pub async fn stamp(&self, path: &Path) -> Result<Manifest, StampError> {
        let entry = entry_for(path).map_err(StampError::Name)?;
        let (info, _) = execute::describe(&self.shared, &entry)
            .await
            .map_err(|e| StampError::Describe(e.to_string()))?;
        let shared = &self.shared;
        let compiled = shared.cache.get(
            shared.workers.engine(),
            &entry,
            shared.config.limits.plugin_file_bytes,
        )?;
        let manifest = Manifest {
            name: info.name,
            version: info.version,
            description: info.description,
            world: compiled.world.name(),
            capabilities: info.capabilities,
        };
        let io = |source| StampError::Io {
            path: path.display().to_string(),
            source,
        };
        let bytes = std::fs::read(path).map_err(io)?;
        let stamped = manifest::write(&bytes, &manifest)?;
        crate::fsutil::write_atomic(path, &stamped).map_err(io)?;
        // Only a custom section changed: the code compiled for the old bytes
        // is the code of the new ones.
        shared
            .cache
            .store_equivalent(&crate::fsutil::sha256_hex(&stamped), &compiled.component);
        Ok(manifest)
    }

    /// Check `path` the way the host will use it, then run one trivial step
    /// of it in a scratch repository (one commit, `command` as given),
    /// granted what it requests.
    pub async fn check(&self, path: &Path, command: &str) -> CheckReport {
        let mut items = Vec::new();
        let mut item = |name: &str, level: &'static str, detail: String| {
            items.push(CheckItem {
                name: name.into(),
                level,
                detail,
            })
        };
        let inspection = self.inspect(path);
        let file = inspection.file.clone();
        let finish = |items: Vec<CheckItem>, requests| CheckReport {
            file: file.clone(),
            passed: items.iter().all(|i| i.level != "fail"),
            items,
            requests,
        };
        if let Some(error) = &inspection.error {
            item("loads as a baa:worker component", "fail", error.clone());
            return finish(items, None);
        }
        item(
            "loads as a baa:worker component",
            "pass",
            format!(
                "{} bytes, sha256 {}, implements {}",
                inspection.size,
                inspection.sha256,
                inspection.world.clone().unwrap_or_default()
            ),
        );
        let described = match async {
            execute::describe(&self.shared, &entry_for(path)?)
                .await
                .map_err(|e| e.to_string())
        }
        .await
        {
            Ok((info, _)) => {
                item(
                    "describe answers",
                    "pass",
                    format!("{} {}: {}", info.name, info.version, info.description),
                );
                info
            }
            Err(e) => {
                item("describe answers", "fail", e.to_string());
                return finish(items, None);
            }
        };
        let requests = described.capabilities.clone();
        let (level, detail) = manifest_check(inspection.manifest.as_ref(), &described);
        item("carries a manifest", level, detail);
        if let Some(taken) = builtin_name(path, &described.name) {
            item(
                "has a name of its own",
                "fail",
                format!(
                    "`{taken}` is a built-in kind, which takes precedence over any plugin file of that name; rename it"
                ),
            );
            return finish(items, Some(requests));
        }
        let (name, level, detail) = self
            .conformance_step(path, &described.name, &requests, command)
            .await;
        item(&name, level, detail);
        finish(items, Some(requests))
    }

    /// One trivial step of the kind in a scratch repository.
    async fn conformance_step(
        &self,
        path: &Path,
        name: &str,
        requests: &Capabilities,
        command: &str,
    ) -> (String, &'static str, String) {
        let title = "a trivial step runs and stays in its worktree".to_string();
        let scratch = match crate::fsutil::new_temp_dir("baa-check") {
            Ok(dir) => dir,
            Err(e) => return (title, "fail", format!("no scratch directory: {e}")),
        };
        let result = async {
            let plugins = scratch.join("plugins");
            let repo = scratch.join("repo");
            let outside = scratch.join("outside");
            for dir in [&plugins, &repo, &outside] {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            std::fs::copy(path, plugins.join(format!("{name}.wasm")))
                .map_err(|e| format!("copying the plugin: {e}"))?;
            std::fs::write(outside.join("canary.txt"), "canary\n").map_err(|e| e.to_string())?;
            std::fs::write(repo.join("README.md"), "# check\n").map_err(|e| e.to_string())?;
            crate::capabilities::subprocess::hostgit::init_scratch(&repo)?;
            let mut config = self.shared.config.clone();
            config.plugin_dirs = vec![plugins.clone()];
            config.kinds.insert(
                name.to_string(),
                crate::config::KindGrant {
                    programs: requests.programs.clone(),
                    env: requests.env.clone(),
                    ..Default::default()
                },
            );
            let runner = Runner::new(config).map_err(|e| e.to_string())?;
            let request = json!({
                "taskId": "check", "stepId": "conformance", "runId": "check", "attempt": 1,
                "stepName": "conformance check: change nothing", "stepKind": name,
                "workerKind": name, "timeoutSec": 30,
                "promptSummary": "Conformance check by baa-runner: do nothing and report success.",
                "command": command,
                "runtime": { "repoRoot": repo, "worktreePath": repo, "runsRootDir": scratch.join("runs") },
                "checkpoint": { "mode": "capture" }
            });
            let request = crate::contracts::parse_request(request.to_string().as_bytes())
                .map_err(|e| e.to_string())?;
            let result = runner.run(request, None).await.map_err(|e| e.to_string())?;
            let canary = std::fs::read_to_string(outside.join("canary.txt")).unwrap_or_default();
            let mut around: Vec<String> = std::fs::read_dir(&scratch)
                .map_err(|e| e.to_string())?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect();
            around.sort();
            Ok::<_, String>((result, canary, around))
        }
        .await;
        let _ = std::fs::remove_dir_all(&scratch);
        match result {
            Err(e) => (title, "fail", format!("could not run: {e}")),
            Ok((_, canary, around))
                if canary != "canary\n" || around != ["outside", "plugins", "repo", "runs"] =>
            {
                (
                    title,
                    "fail",
                    format!("it changed what lies outside its worktree: {around:?}"),
                )
            }
            Ok((result, _, _)) => {
                let (level, detail) = conformance_verdict(&result);
                (title, level, detail)
            }
        }
    }
}

/// How a trivial step's result rates: completed passes; a trap, timeout,
/// invalid plugin, host error or memory limit fails; anything else (it
/// answered, but did not complete) warns.
fn conformance_verdict(result: &crate::contracts::StepExecutionResult) -> (&'static str, String) {
    use crate::contracts::FailureReason as R;
    let reason = result.state.failure.as_ref().map(|f| f.reason);
    match (result.outcome, reason) {
        (StepExecutionOutcome::Completed, _) => ("pass", format!("completed: {}", result.summary)),
        (_, Some(R::Trap | R::Timeout | R::InvalidPlugin | R::HostError | R::MemoryLimit)) => (
            "fail",
            format!("{}: {}", result.outcome.as_str(), result.summary),
        ),
        (outcome, _) => (
            "warn",
            format!(
                "{} (it answered, but did not complete a trivial step): {}",
                outcome.as_str(),
                result.summary
            ),
        ),
    }
}

/// Whether a kind's manifest says what its `describe` answers.
fn manifest_check(
    manifest: Option<&Manifest>,
    described: &crate::worker::KindInfo,
) -> (&'static str, String) {
    match manifest {
        None => (
            "warn",
            "no `baa:worker-manifest` section: the host must run it to learn what it is; add one with `baa-runner stamp`".into(),
        ),
        Some(m)
            if described.agrees_with(m) =>
        {
            ("pass", format!("built for {}", m.world))
        }
        Some(m) => (
            "fail",
            format!(
                "the manifest ({} {}, {:?}) differs from describe; stamp it again",
                m.name, m.version, m.capabilities
            ),
        ),
    }
}

/// The built-in kind's name a plugin would take (by its describe or its
/// file name), if it would.
fn builtin_name<'a>(path: &'a Path, described: &'a str) -> Option<&'a str> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    [described, stem]
        .into_iter()
        .find(|n| crate::plugins::is_builtin(n))
}
