//! The host's lifecycle events, one variant per event name with its `data`
//! typed: what `lifecycle.jsonl` holds in `event` and `data` for every
//! entry whose `source` is `host`. Published as `host-event.schema.json`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    CheckpointMode, CheckpointSource, CheckpointType, FailureRecord, StepExecutionOutcome,
};

/// A host lifecycle event: its name (`event`) and its data (`data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", content = "data")]
pub enum HostEvent {
    /// The attempt's run directory was made.
    #[serde(rename = "run.prepared", rename_all = "camelCase")]
    RunPrepared {
        run_dir: String,
        checkpoint_mode: CheckpointMode,
    },
    /// An attempt `prepare` made is executed in place.
    #[serde(rename = "run.reopened", rename_all = "camelCase")]
    RunReopened {
        run_dir: String,
        checkpoint_mode: CheckpointMode,
    },
    /// An earlier attempt a stopped host left running was closed.
    #[serde(rename = "run.recovered", rename_all = "camelCase")]
    RunRecovered {
        run_dir: String,
        /// Its latest valid checkpoint, 0 when there is none.
        last_checkpoint_seq: u32,
    },
    /// The step waits for a slot.
    #[serde(rename = "step.queued", rename_all = "camelCase")]
    StepQueued {
        /// `kind` ([concurrency.kinds]) or `runner` (max-steps).
        limit: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
        max: u32,
    },
    /// The step got its slot after waiting.
    #[serde(rename = "step.admitted", rename_all = "camelCase")]
    StepAdmitted { waited_ms: u64 },
    #[serde(rename = "step.started", rename_all = "camelCase")]
    StepStarted { timeout_sec: f64 },
    #[serde(rename = "step.finished", rename_all = "camelCase")]
    StepFinished {
        outcome: StepExecutionOutcome,
        exit_code: Option<i32>,
        failure: Option<FailureRecord>,
        duration_ms: u64,
    },
    /// The kind's component was loaded and described itself.
    #[serde(rename = "plugin.loaded", rename_all = "camelCase")]
    PluginLoaded {
        name: String,
        version: String,
        source: String,
        sha256: String,
        compiled: Option<String>,
        requested: Capabilities,
        granted: Granted,
    },
    /// A command passed the policy check.
    #[serde(rename = "subprocess.allowed", rename_all = "camelCase")]
    SubprocessAllowed {
        program: String,
        args: Vec<String>,
        cwd: Option<String>,
    },
    /// A command was refused.
    #[serde(rename = "subprocess.denied", rename_all = "camelCase")]
    SubprocessDenied {
        program: String,
        args: Vec<String>,
        cwd: Option<String>,
        /// Why, for people.
        reason: String,
        /// Why, for programs: `program`, `argument`, `environment`,
        /// `inside-worktree`, `cwd`, `size`, `process-limit`, `time-up`,
        /// `confinement`.
        denial: DenialReason,
        operator_can_grant: Option<String>,
    },
    #[serde(rename = "subprocess.started", rename_all = "camelCase")]
    SubprocessStarted {
        pid: u32,
        supervisor_pid: u32,
        program: String,
        args: Vec<String>,
        cwd: String,
        env_names: Vec<String>,
        /// `none`, `unrestricted`, or `{ "tcpConnect": [ports] }`.
        network: serde_json::Value,
        /// The confinement that took effect (the launcher's report).
        confinement: serde_json::Value,
        for_worker: bool,
        /// The process's start time (clock ticks since boot), which tells
        /// it from a later process with the same pid.
        start_time: Option<u64>,
    },
    #[serde(rename = "subprocess.exited", rename_all = "camelCase")]
    SubprocessExited {
        pid: u32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
        output_limit_exceeded: bool,
        output_bytes: u64,
        duration_ms: u64,
        for_worker: bool,
    },
    /// The launcher could not start a command.
    #[serde(rename = "subprocess.failed", rename_all = "camelCase")]
    SubprocessFailed { stage: String, message: String },
    /// Process trees left running when the worker returned were stopped.
    #[serde(rename = "subprocess.cleanup", rename_all = "camelCase")]
    SubprocessCleanup { stopped: usize },
    #[serde(rename = "checkpoint.captured", rename_all = "camelCase")]
    CheckpointCaptured {
        seq: u32,
        #[serde(rename = "type")]
        checkpoint_type: CheckpointType,
        path: String,
        source: CheckpointSource,
    },
    #[serde(rename = "checkpoint.failed", rename_all = "camelCase")]
    CheckpointFailed {
        #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
        checkpoint_type: Option<CheckpointType>,
    },
    /// The step's deadline came before a final snapshot.
    #[serde(rename = "checkpoint.cut-short", rename_all = "camelCase")]
    CheckpointCutShort {
        #[serde(rename = "type")]
        checkpoint_type: CheckpointType,
    },
    /// A checkpoint of an earlier attempt failed validation and was skipped.
    #[serde(rename = "checkpoint.corrupt", rename_all = "camelCase")]
    CheckpointCorrupt { reason: String },
    #[serde(rename = "checkpoint.resumed", rename_all = "camelCase")]
    CheckpointResumed {
        seq: u32,
        path: String,
        attempt: u32,
    },
    #[serde(rename = "artifact.declared", rename_all = "camelCase")]
    ArtifactDeclared {
        name: String,
        path: String,
        bytes: u64,
    },
}

/// What a kind was granted, as `plugin.loaded` says it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Granted {
    /// Program name → the absolute path it runs.
    pub programs: BTreeMap<String, String>,
    pub env: Vec<String>,
    pub network: bool,
}

/// What a refused command ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DenialReason {
    /// The program is not granted to this kind, or cannot be used here.
    Program,
    /// An argument the host never allows.
    Argument,
    /// An environment variable not granted, malformed or never passed.
    Environment,
    /// The program lies inside the worktree.
    InsideWorktree,
    /// The cwd is not a directory inside the worktree.
    Cwd,
    /// The command exceeds the host's size limits.
    Size,
    /// Too many subprocesses are running (`limits.max-processes`).
    ProcessLimit,
    /// The step's time is up.
    TimeUp,
    /// The OS confinement the host requires is not available here.
    Confinement,
}

/// What a kind requests, in its `describe` (every world version) and its
/// manifest: the operator grants a subset (`config::KindGrant`). The same type
/// says what a kind requests beyond its grant (`KindGrant::missing`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capabilities {
    /// Programs its subprocesses run (names or absolute paths).
    #[serde(default)]
    pub programs: Vec<String>,
    /// Environment variable names passed to its subprocesses.
    #[serde(default)]
    pub env: Vec<String>,
    /// Whether its subprocesses need the network.
    #[serde(default)]
    pub network: bool,
}

impl Capabilities {
    pub fn is_empty(&self) -> bool {
        self.programs.is_empty() && self.env.is_empty() && !self.network
    }

    /// The config lines that would grant these, e.g.
    /// `programs = ["curl"]`, `network = true`.
    pub fn config_lines(&self) -> Vec<String> {
        let quoted = |items: &[String]| {
            let items: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
            items.join(", ")
        };
        let mut lines = Vec::new();
        if !self.programs.is_empty() {
            lines.push(format!("programs = [{}]", quoted(&self.programs)));
        }
        if !self.env.is_empty() {
            lines.push(format!("env = [{}]", quoted(&self.env)));
        }
        if self.network {
            lines.push("network = true".to_string());
        }
        lines
    }
}

impl HostEvent {
    /// The event's name and its data, as a lifecycle entry holds them.
    pub fn into_parts(self) -> (String, Option<serde_json::Value>) {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        let name = value
            .get("event")
            .and_then(|e| e.as_str())
            .unwrap_or("host.unknown")
            .to_string();
        let data = value.as_object_mut().and_then(|o| o.remove("data"));
        (name, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_splits_into_its_name_and_typed_data() {
        let (name, data) = HostEvent::StepAdmitted { waited_ms: 7 }.into_parts();
        assert_eq!(name, "step.admitted");
        assert_eq!(data, Some(serde_json::json!({ "waitedMs": 7 })));
        let (name, data) = HostEvent::CheckpointFailed {
            checkpoint_type: None,
        }
        .into_parts();
        assert_eq!(name, "checkpoint.failed");
        assert_eq!(data, Some(serde_json::json!({})));
        let captured = HostEvent::CheckpointCaptured {
            seq: 3,
            checkpoint_type: CheckpointType::GitDiff,
            path: "p".into(),
            source: CheckpointSource::Host,
        };
        let (_, data) = captured.into_parts();
        assert_eq!(data.unwrap()["type"], "git-diff");
    }

    #[test]
    fn every_event_name_is_in_a_host_namespace() {
        let schema = schemars::schema_for!(HostEvent);
        let text = serde_json::to_string(&schema).unwrap();
        for name in ["run.prepared", "subprocess.denied", "checkpoint.cut-short"] {
            assert!(text.contains(name), "{name}");
        }
    }
}
