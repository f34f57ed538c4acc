//! The step lifecycle: validate → prepare (run directory, metadata, state,
//! logs) → execute (the kind's component) → finish (result, final state).
//! [`Runner`] is what the conductor embeds.

mod admission;
pub mod author;
mod end;
mod execute;
mod finish;
mod grant;
pub mod handle;
pub mod lock;
mod outcome;
pub mod prepare;
mod records;
pub mod recover;
pub mod validate;

use std::path::Path;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use handle::{EventStream, Finished, StepEvent, StepEventBody, StepHandle};
pub use prepare::PreparedStepRun;

use crate::config::RunnerConfig;
use crate::contracts::{RunStateSnapshot, RunStatus, StepExecutionRequest, StepExecutionResult};
use crate::error::Error;
use crate::fsutil::now_rfc3339;
use crate::logs::Observer;
use crate::plugins::{PluginCache, PluginRegistry};

/// What every step of a runner shares.
pub(crate) struct RunnerShared {
    /// The engine, the linker and the kinds linked against it.
    pub workers: crate::worker::Workers,
    pub plugins: PluginRegistry,
    pub cache: PluginCache,
    pub config: RunnerConfig,
    pub admission: admission::Admission,
    /// What looks wrong in the config without making it unusable.
    pub warnings: Vec<String>,
}

/// Runs steps: built once (engine, plugins, policy, limits), used for many.
#[derive(Clone)]
pub struct Runner {
    shared: Arc<RunnerShared>,
}

impl Runner {
    /// Build a runner: one engine, the linker, and the kinds in the config's
    /// plugin directories (plus the built-in kinds).
    pub fn new(config: RunnerConfig) -> Result<Self, Error> {
        let admission = admission::Admission::new(&config.concurrency)?;
        let engine = crate::worker::engine::engine(&config.limits, config.concurrency.max_steps)?;
        let plugins = PluginRegistry::discover(&config.plugin_dirs)?;
        let disk = if !config.compiled_cache {
            None
        } else if let Some(dir) = &config.compiled_cache_dir {
            // Configured explicitly: a directory that cannot be used is an error.
            Some(
                crate::plugins::cache::DiskCache::open(dir, &engine)
                    .map(|cache| cache.with_max_mib(config.compiled_cache_max_mib))
                    .map_err(|e| {
                        Error::Config(crate::config::ConfigError::Setting {
                            setting: "compiled-cache-dir".into(),
                            message: e.to_string(),
                        })
                    })?,
            )
        } else {
            crate::plugins::cache::default_dir().and_then(|dir| {
                crate::plugins::cache::DiskCache::open(&dir, &engine)
                    .map(|cache| cache.with_max_mib(config.compiled_cache_max_mib))
                    .map_err(|e| tracing::warn!("no compiled cache: {e}"))
                    .ok()
            })
        };
        let warnings = config_warnings(&config, &plugins);
        for warning in &warnings {
            tracing::debug!("config: {warning}");
        }
        Ok(Runner {
            shared: Arc::new(RunnerShared {
                workers: crate::worker::Workers::new(engine)?,
                plugins,
                cache: PluginCache::new(disk),
                config,
                admission,
                warnings,
            }),
        })
    }

    /// What looks wrong in the configuration without making it unusable:
    /// grants or limits for kinds no plugin directory has (a misspelling,
    /// say), each with the nearest known name. Shown by the CLI at start.
    pub fn warnings(&self) -> &[String] {
        &self.shared.warnings
    }

    /// `kind` is one this runner can run: a built-in or a plugin file.
    /// Otherwise the error names the field, the kinds found, and the
    /// nearest one.
    pub fn known_kind(&self, kind: &crate::contracts::WorkerKind) -> Result<(), Error> {
        match self.shared.plugins.find(kind) {
            Ok(_) => Ok(()),
            Err(e) => {
                let known: Vec<&str> = self
                    .shared
                    .plugins
                    .entries()
                    .map(|e| e.kind.as_str())
                    .collect();
                let hint = match nearest(kind.as_str(), &known) {
                    Some(near) => format!("; did you mean `{near}`?"),
                    None => String::new(),
                };
                Err(Error::invalid(
                    "workerKind",
                    format!("{e}{hint} (kinds found: {})", known.join(", ")),
                ))
            }
        }
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.shared.config
    }

    pub fn plugins(&self) -> &PluginRegistry {
        &self.shared.plugins
    }

    /// Validate `request` and create its run directory, metadata, state
    /// snapshot and log session. `observer` sees every event and output
    /// chunk as it is written.
    pub fn prepare(
        &self,
        request: StepExecutionRequest,
        observer: Option<Observer>,
    ) -> Result<PreparedStepRun, Error> {
        // Nothing is written for a step no kind can run.
        self.known_kind(&request.worker_kind)?;
        prepare::prepare(
            request,
            observer,
            &self.shared.config,
            prepare::Existing::Reopen,
        )
    }

    /// Only prepare `request` (outcome `prepared`, written to `result.json`):
    /// a later [`Runner::prepare`] of the same request executes it. An
    /// attempt that exists already is refused, a prepared one included.
    pub fn prepare_only(
        &self,
        request: StepExecutionRequest,
    ) -> Result<StepExecutionResult, Error> {
        self.known_kind(&request.worker_kind)?;
        let prepared = prepare::prepare(
            request,
            None,
            &self.shared.config,
            prepare::Existing::Refuse,
        )?;
        self.finish_prepared(prepared)
    }

    /// Check `request` as [`Runner::prepare`] would, and its kind's grants as
    /// executing it would, writing nothing: bad input is an `Err`; what
    /// would stop it (an attempt already run, grants missing) is in the
    /// report.
    pub async fn dry_run(&self, request: &StepExecutionRequest) -> Result<DryRun, Error> {
        self.known_kind(&request.worker_kind)?;
        let step_dir = self.step_dir(request)?;
        let run_dir = step_dir.join(format!("attempt-{}", request.attempt));
        let mut attempt = self.attempt_state(request, request.attempt)?;
        if attempt == AttemptState::Prepared
            && prepare::same_step(&run_dir, request, &validate::validate(request)?).is_err()
        {
            attempt = AttemptState::Taken;
        }
        if let Some(seq) = request.checkpoint.as_ref().and_then(|c| c.resume_from_seq) {
            crate::checkpoints::StepHistory::load(&step_dir, request.attempt)
                .resume_from(&step_dir, seq)?;
        }
        let kind = match self.kind(request.worker_kind.as_str()).await {
            Some(kind) => kind,
            None => {
                return Err(Error::Host(format!(
                    "kind {} vanished",
                    request.worker_kind
                )))
            }
        };
        let ready =
            attempt != AttemptState::Taken && kind.error.is_none() && kind.missing.is_empty();
        Ok(DryRun {
            ready,
            run_dir: crate::fsutil::display(&run_dir),
            attempt: request.attempt,
            attempt_state: attempt,
            kind,
        })
    }

    /// The directory holding every attempt of `request`'s step.
    pub fn step_dir(&self, request: &StepExecutionRequest) -> Result<std::path::PathBuf, Error> {
        let paths = validate::validate(request)?;
        Ok(paths
            .runs_root
            .join(&request.task_id)
            .join(&request.run_id)
            .join(&request.step_id))
    }

    /// How far attempt `n` of `request`'s step got.
    pub fn attempt_state(
        &self,
        request: &StepExecutionRequest,
        n: u32,
    ) -> Result<AttemptState, Error> {
        let run_dir = self.step_dir(request)?.join(format!("attempt-{n}"));
        let state = crate::fsutil::read_record::<RunStateSnapshot>(&run_dir.join("state.json"));
        Ok(match state {
            _ if !run_dir.exists() => AttemptState::Free,
            Ok(state)
                if state.status == RunStatus::Prepared && !lock::RunLock::is_held(&run_dir) =>
            {
                AttemptState::Prepared
            }
            _ => AttemptState::Taken,
        })
    }

    /// The attempt number after the highest one `request`'s step already has.
    pub fn next_attempt(&self, request: &StepExecutionRequest) -> Result<u32, Error> {
        let dir = self.step_dir(request)?;
        let highest = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("attempt-")?
                    .parse::<u32>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        Ok(highest + 1)
    }

    /// Confine a process as `kind`'s subprocesses are and let it try what
    /// it must not do (`baa-runner sandbox`).
    pub fn sandbox_self_test(
        &self,
        kind: &str,
    ) -> Result<
        crate::capabilities::subprocess::confinement::SelfTest,
        crate::capabilities::subprocess::ConfinementError,
    > {
        crate::capabilities::subprocess::confinement::self_test(&self.shared.config, kind)
    }

    /// Close every attempt at or below `dir` that a stopped host left
    /// running (see [`recover`]).
    pub fn recover(&self, dir: &Path) -> recover::RecoveryReport {
        let mut report = recover::recover(dir);
        if crate::capabilities::subprocess::user::dedicated(&self.shared.config.sandbox)
            .unwrap_or(false)
        {
            report.handed_back = crate::capabilities::subprocess::user::recover_abandoned(
                &self.shared.config.sandbox,
            );
        }
        report
    }

    /// The result of a step that was only prepared (outcome `prepared`),
    /// written to `result.json`.
    pub fn finish_prepared(&self, prepared: PreparedStepRun) -> Result<StepExecutionResult, Error> {
        let summary = format!("prepared; run directory {}", prepared.log_paths.run_dir);
        let report = outcome::Report::prepared(summary);
        finish::finish(prepared, report, now_rfc3339(), std::time::Instant::now())
    }

    /// Execute a prepared step to its outcome and write the result. Step
    /// failures (including timeouts, traps and policy denials) are outcomes;
    /// `Err` means the run records themselves could not be written.
    pub async fn execute(&self, prepared: PreparedStepRun) -> Result<StepExecutionResult, Error> {
        self.execute_with(prepared, &CancellationToken::new()).await
    }

    /// [`Runner::execute`], stopped when `cancel` fires: the guest is
    /// interrupted, its subprocesses killed, and the records say `failed`
    /// with reason `interrupted`. A step over a concurrency limit first
    /// waits for a slot.
    pub async fn execute_with(
        &self,
        mut prepared: PreparedStepRun,
        cancel: &CancellationToken,
    ) -> Result<StepExecutionResult, Error> {
        let logs = prepared.logs.clone();
        let admitted = self
            .shared
            .admission
            .admit(prepared.request.worker_kind.as_str(), &logs, cancel)
            .await;
        let Some(_permits) = admitted else {
            let report = outcome::Report::interrupted("cancelled while waiting for a slot");
            return finish::finish(prepared, report, now_rfc3339(), std::time::Instant::now());
        };
        let started_at = now_rfc3339();
        let started = Instant::now();
        prepared.state.status = RunStatus::Running;
        prepared.state.started_at = Some(started_at.clone());
        prepared.state.updated_at = started_at.clone();
        logs.host_info(
            format!(
                "started `{}` on {} (timeout {}s)",
                prepared.request.step_name,
                prepared.request.worker_kind,
                prepared.request.timeout_sec
            ),
            crate::contracts::HostEvent::StepStarted {
                timeout_sec: prepared.request.timeout_sec,
            },
        );
        prepared.state.lifecycle_event_count = logs.event_count();
        records::write(
            &prepared.log_paths,
            prepared.durability,
            &[records::Record::State(&prepared.state)],
        )?;

        // One deadline for all of the step's work, the host's included.
        let deadlines = execute::Deadlines::new(
            started,
            prepared.request.timeout_sec,
            self.shared.config.limits.timeout_grace_ms,
        );
        let report = execute::run_worker(&self.shared, &prepared, deadlines, cancel).await;
        end::final_checkpoints(&self.shared, &prepared, &report, deadlines).await;
        finish::finish(prepared, report, started_at, started.into_std())
    }

    /// Prepare `request` and execute it on a task of its own; the handle
    /// streams its events, cancels it, and yields its result. Bad input is
    /// refused here, before anything runs; so is a call from outside a tokio
    /// runtime (the step's task needs one).
    pub fn start(&self, request: StepExecutionRequest) -> Result<StepHandle, Error> {
        self.start_with(request, &CancellationToken::new())
    }

    /// [`Runner::start`] under `cancel`: cancelling it (or a parent of it)
    /// cancels the step; cancelling the step does not cancel `cancel`.
    pub fn start_with(
        &self,
        request: StepExecutionRequest,
        cancel: &CancellationToken,
    ) -> Result<StepHandle, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Host("Runner::start must be called within a tokio runtime".into())
        })?;
        let feed = handle::Feed::new();
        let events = feed.subscribe();
        let prepared = self.prepare(request, Some(feed.observer()))?;
        let run_dir = prepared.log_paths.run_dir.clone();
        let cancel = cancel.child_token();
        let runner = self.clone();
        let task = {
            let (feed, cancel) = (feed.clone(), cancel.clone());
            runtime.spawn(async move {
                let result = runner.execute_with(prepared, &cancel).await;
                feed.finish(&result);
                result
            })
        };
        Ok(StepHandle {
            events,
            feed,
            cancel,
            task: Some(task),
            run_dir,
        })
    }

    /// Prepare and execute `request`.
    pub async fn run(
        &self,
        request: StepExecutionRequest,
        observer: Option<Observer>,
    ) -> Result<StepExecutionResult, Error> {
        let prepared = self.prepare(request, observer)?;
        self.execute(prepared).await
    }
}

/// Config entries naming kinds this runner does not know.
fn config_warnings(config: &RunnerConfig, plugins: &PluginRegistry) -> Vec<String> {
    let known: Vec<&str> = plugins.entries().map(|e| e.kind.as_str()).collect();
    let named = (config.kinds.keys().map(|k| ("kinds", k))).chain(
        config
            .concurrency
            .kinds
            .keys()
            .map(|k| ("concurrency.kinds", k)),
    );
    let mut warnings = Vec::new();
    for (table, name) in named {
        if known.contains(&name.as_str()) {
            continue;
        }
        let hint = match nearest(name, &known) {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!("kinds found: {}", known.join(", ")),
        };
        warnings.push(format!(
            "config `[{table}.{name}]`: no kind `{name}` is built in or in a plugin directory; {hint}"
        ));
    }
    warnings
}

/// The known name closest to `name`, when it is close enough to be a
/// misspelling.
fn nearest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .filter(|(distance, k)| *distance <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

/// A worker kind as listed by [`Runner::list_kinds`].
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    /// What the kind requests.
    pub capabilities: crate::config::Capabilities,
    /// What the operator grants it (built-in grant plus config).
    pub granted: GrantInfo,
    /// What it requests beyond the grant: its steps would be `blocked`.
    pub missing: crate::config::Capabilities,
    /// `builtin` or the `.wasm` file.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// An earlier kind of the same name takes precedence over this one.
    pub shadowed: bool,
    /// Why the kind cannot be loaded, if it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What [`Runner::dry_run`] found.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    /// Whether running the request now would start its worker: the attempt
    /// is free (or only prepared) and the kind loads and is granted what it
    /// requests.
    pub ready: bool,
    /// The run directory the attempt would use.
    pub run_dir: String,
    pub attempt: u32,
    pub attempt_state: AttemptState,
    /// The kind, what it requests, what it is granted and what is missing.
    pub kind: KindInfo,
}

/// Whether an attempt's run directory exists, and how far it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AttemptState {
    /// Nothing exists yet.
    Free,
    /// `prepare` made it; `run` executes it in place.
    Prepared,
    /// It ran (or is running): use the next attempt.
    Taken,
}

/// An operator's grant as JSON output shows it (camelCase, as every
/// document the CLI prints).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantInfo {
    pub programs: Vec<String>,
    pub env: Vec<String>,
    pub network: bool,
    pub tcp_connect: Vec<u16>,
    pub unrestricted_tcp: bool,
    pub read_paths: Vec<std::path::PathBuf>,
    pub write_paths: Vec<std::path::PathBuf>,
    pub nested_sandbox: bool,
}

impl From<crate::config::KindGrant> for GrantInfo {
    fn from(g: crate::config::KindGrant) -> Self {
        GrantInfo {
            programs: g.programs,
            env: g.env,
            network: g.network,
            tcp_connect: g.tcp_connect,
            unrestricted_tcp: g.unrestricted_tcp,
            read_paths: g.read_paths,
            write_paths: g.write_paths,
            nested_sandbox: g.nested_sandbox,
        }
    }
}

impl Runner {
    /// Every kind found, with what it describes itself as (its `describe`
    /// runs in a store with no capabilities and a short deadline).
    pub async fn list_kinds(&self) -> Vec<KindInfo> {
        let shared = &self.shared;
        let mut out = Vec::new();
        let all = shared
            .plugins
            .entries()
            .map(|e| (e, false))
            .chain(shared.plugins.shadowed().iter().map(|e| (e, true)));
        for (entry, shadowed) in all {
            out.push(self.kind_info(entry, shadowed).await);
        }
        out
    }

    /// One kind by name, as [`Runner::list_kinds`] describes it: its code is
    /// loaded (from the in-memory or disk cache when it can be), instantiated
    /// and asked to `describe` itself.
    pub async fn kind(&self, name: &str) -> Option<KindInfo> {
        let entry = self
            .shared
            .plugins
            .entries()
            .find(|e| e.kind.as_str() == name)?;
        Some(self.kind_info(entry, false).await)
    }

    async fn kind_info(&self, entry: &crate::plugins::PluginEntry, shadowed: bool) -> KindInfo {
        let shared = &self.shared;
        let grant = shared.config.grant(entry.kind.as_str());
        let mut info = KindInfo {
            name: entry.kind.to_string(),
            version: String::new(),
            description: String::new(),
            capabilities: Default::default(),
            granted: grant.clone().into(),
            missing: Default::default(),
            source: entry.source.describe(),
            sha256: None,
            shadowed,
            error: None,
        };
        match execute::describe(shared, entry).await {
            Ok((described, sha256)) => {
                info.sha256 = Some(sha256);
                if described.name != info.name {
                    info.error = Some(format!("describes itself as `{}`", described.name));
                }
                info.version = described.version;
                info.description = described.description;
                info.missing = grant.missing(&described.capabilities);
                info.capabilities = described.capabilities;
            }
            Err(e) => info.error = Some(e.to_string()),
        }
        info
    }
}
