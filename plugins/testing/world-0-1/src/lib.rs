//! Test fixture: a worker kind built from the frozen `wit/released/0.1.0`
//! with wit-bindgen alone, as a third party built kinds before 0.2. Its
//! `execute` uses every host interface of 0.1 and reports what it saw, so
//! a test can tell that the host still speaks 0.1 exactly: an allowed
//! program's output, a refusal as `denied(string)`, a bad cwd as
//! `invalid-cwd(string)`, an event, an artifact and a checkpoint.

wit_bindgen::generate!({
    path: "../../../wit/released/0.1.0",
    world: "worker",
});

use baa::worker::subprocess::{spawn, Command, Output, SpawnError};
use baa::worker::types::StepRequest;
use baa::worker::{checkpoint, events};
use exports::baa::worker::worker_executor::{
    Capabilities, ExecuteError, Guest, Status, WorkerInfo, WorkerOutcome,
};

struct OldWorld;

fn command(program: &str, args: &[&str], cwd: Option<&str>) -> Command {
    Command {
        program: program.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        cwd: cwd.map(Into::into),
        env: Vec::new(),
        timeout_ms: Some(10_000),
        stdin: None,
    }
}

/// What spawning `cmd` came to: its stdout, or the refusal's case and text.
fn attempt(cmd: &Command) -> String {
    match spawn(cmd) {
        Ok(process) => {
            let mut stdout = Vec::new();
            loop {
                match process.next() {
                    Output::Stdout(bytes) => stdout.extend(bytes),
                    Output::Stderr(_) => {}
                    Output::Exited(status) => {
                        let text = String::from_utf8_lossy(&stdout).trim().to_string();
                        return format!("exit {:?}: {text}", status.code);
                    }
                }
            }
        }
        Err(SpawnError::Denied(why)) => format!("denied: {why}"),
        Err(SpawnError::InvalidCwd(why)) => format!("invalid-cwd: {why}"),
        Err(SpawnError::Io(why)) => format!("io: {why}"),
    }
}

impl Guest for OldWorld {
    fn describe() -> WorkerInfo {
        WorkerInfo {
            name: "world-0-1".into(),
            version: "0.1.0".into(),
            description: "a kind of baa:worker@0.1.0".into(),
            capabilities: Capabilities {
                programs: vec!["echo".into()],
                env: vec![],
                network: false,
            },
        }
    }

    fn execute(request: StepRequest) -> Result<WorkerOutcome, ExecuteError> {
        if request.command.as_deref() != Some("observe") {
            return Err(ExecuteError::InvalidRequest(
                "this kind only knows the command `observe`".into(),
            ));
        }
        let lines = [
            format!(
                "allowed: {}",
                attempt(&command("echo", &["hello from 0.1"], None))
            ),
            format!(
                "refused: {}",
                attempt(&command("cat", &["/etc/passwd"], None))
            ),
            format!(
                "bad cwd: {}",
                attempt(&command("echo", &["x"], Some("../..")))
            ),
        ];
        events::emit(
            events::Level::Info,
            "old.observed",
            "a 0.1 kind observed its host",
            Some(r#"{"world": "0.1.0"}"#),
        );
        let report = lines.join("\n");
        let artifact =
            events::declare_artifact("observations.txt", "what it saw", report.as_bytes())
                .map_err(|e| ExecuteError::Failed(format!("artifact: {e:?}")))?;
        let seq = checkpoint::capture("observed", "what a 0.1 kind saw", Some(report.as_bytes()))
            .map_err(|e| ExecuteError::Failed(format!("checkpoint: {e:?}")))?;
        Ok(WorkerOutcome {
            status: Status::Completed,
            summary: format!("{report}\nartifact: {artifact}\ncheckpoint: {seq}"),
            needs_human: false,
            exit_code: Some(0),
            suggested_followup: Vec::new(),
        })
    }
}

export!(OldWorld);
