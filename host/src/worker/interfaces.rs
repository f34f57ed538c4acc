//! The host interfaces and conversions every world version shares, written
//! once and expanded inside each version's module (`v0_1`, `v0_2`), where
//! the paths name that version's generated types. A version module adds
//! only what differs: its `spawn_error`.

/// Expand, in a module holding a `bindgen!` of the `worker` world and a
/// `fn spawn_error(sub::SpawnError) -> SpawnError`: `add_to_linker` (each
/// interface on its view) and the `Host` impls, plus the conversions of
/// the executor's types to the host's own ([`crate::worker`]).
macro_rules! interfaces {
    () => {
        use wasmtime::component::{Linker, Resource};

        use super::store::{CheckpointCap, CheckpointView, EventsCap, EventsView, StepState};
        use super::store::{SubprocessCap, SubprocessView};
        use crate::bounds::{self, cut_list, cut_owned};
        use crate::capabilities::checkpoint::CaptureError;
        use crate::capabilities::events::ArtifactError as HostArtifactError;
        use crate::capabilities::subprocess::{self as sub, ProcessHandle};
        use crate::contracts::EventLevel;
        use baa::worker::checkpoint::{self, CheckpointError};
        use baa::worker::events::{self, ArtifactError, Level};
        use baa::worker::subprocess::{self, Command, ExitStatus, Output, SpawnError};
        use exports::baa::worker::worker_executor as executor;

        /// Add this version's host interfaces to `linker`, each on its view.
        pub(super) fn add_to_linker(linker: &mut Linker<StepState>) -> wasmtime::Result<()> {
            baa::worker::types::add_to_linker::<_, EventsCap>(linker, StepState::events_view)?;
            subprocess::add_to_linker::<_, SubprocessCap>(linker, StepState::subprocess_view)?;
            events::add_to_linker::<_, EventsCap>(linker, StepState::events_view)?;
            checkpoint::add_to_linker::<_, CheckpointCap>(linker, StepState::checkpoint_view)?;
            Ok(())
        }

        impl baa::worker::types::Host for EventsView<'_> {}

        impl subprocess::Host for SubprocessView<'_> {
            async fn spawn(
                &mut self,
                cmd: Command,
            ) -> wasmtime::Result<Result<Resource<ProcessHandle>, SpawnError>> {
                let request = sub::SpawnRequest {
                    program: cmd.program,
                    args: cmd.args,
                    cwd: cmd.cwd,
                    env: cmd.env,
                    timeout_ms: cmd.timeout_ms,
                    stdin: cmd.stdin,
                };
                match self.subprocesses.spawn(request).await {
                    Ok(handle) => Ok(Ok(self.table.push(handle)?)),
                    Err(e) => Ok(Err(spawn_error(e))),
                }
            }

            async fn scratch_file(
                &mut self,
                name: String,
                contents: Vec<u8>,
            ) -> wasmtime::Result<Result<String, SpawnError>> {
                let written = self.subprocesses.scratch_file(&name, contents).await;
                Ok(written.map_err(spawn_error))
            }
        }

        impl subprocess::HostProcess for SubprocessView<'_> {
            async fn pid(&mut self, process: Resource<ProcessHandle>) -> wasmtime::Result<u32> {
                Ok(self.table.get(&process)?.pid())
            }

            async fn next(&mut self, process: Resource<ProcessHandle>) -> wasmtime::Result<Output> {
                Ok(match self.table.get_mut(&process)?.next().await {
                    sub::Chunk::Stdout(bytes) => Output::Stdout(bytes),
                    sub::Chunk::Stderr(bytes) => Output::Stderr(bytes),
                    sub::Chunk::Exited(exit) => Output::Exited(ExitStatus {
                        code: exit.code,
                        signal: exit.signal,
                        timed_out: exit.timed_out,
                        output_limit_exceeded: exit.output_limit_exceeded,
                    }),
                })
            }

            async fn kill(&mut self, process: Resource<ProcessHandle>) -> wasmtime::Result<()> {
                self.table.get(&process)?.kill();
                Ok(())
            }

            async fn drop(&mut self, process: Resource<ProcessHandle>) -> wasmtime::Result<()> {
                // Dropping the handle kills the group if it is still running.
                self.table.delete(process)?;
                Ok(())
            }
        }

        impl events::Host for EventsView<'_> {
            async fn emit(
                &mut self,
                level: Level,
                event: String,
                message: String,
                data_json: Option<String>,
            ) -> wasmtime::Result<()> {
                let level = match level {
                    Level::Debug => EventLevel::Debug,
                    Level::Info => EventLevel::Info,
                    Level::Warn => EventLevel::Warn,
                    Level::Error => EventLevel::Error,
                };
                self.events.emit(level, &event, message, data_json);
                Ok(())
            }

            async fn declare_artifact(
                &mut self,
                name: String,
                description: String,
                contents: Vec<u8>,
            ) -> wasmtime::Result<Result<String, ArtifactError>> {
                let declared = self.events.declare_artifact(name, description, contents);
                Ok(declared.map_err(|e| match e {
                    HostArtifactError::Invalid(why) => ArtifactError::Invalid(why),
                    HostArtifactError::Io(why) => ArtifactError::Io(why),
                }))
            }
        }

        impl checkpoint::Host for CheckpointView<'_> {
            async fn capture(
                &mut self,
                checkpoint_type: String,
                summary: String,
                payload: Option<Vec<u8>>,
            ) -> wasmtime::Result<Result<u32, CheckpointError>> {
                let captured = self
                    .checkpoints
                    .capture(self.subprocesses, &checkpoint_type, &summary, payload)
                    .await;
                Ok(captured.map_err(|e| match e {
                    CaptureError::Disabled => CheckpointError::Disabled,
                    CaptureError::Invalid(why) => CheckpointError::Invalid(why),
                    e @ (CaptureError::Io(_) | CaptureError::CutShort) => {
                        CheckpointError::Io(e.to_string())
                    }
                }))
            }
        }

        /// What the kind says of itself, each string cut to its cap before
        /// it is copied anywhere.
        pub(super) fn kind_info(info: executor::WorkerInfo) -> super::KindInfo {
            let caps = info.capabilities;
            let list = |items| cut_list(items, bounds::CAPABILITY_ITEMS, bounds::CAPABILITY_ITEM);
            super::KindInfo {
                name: cut_owned(info.name, bounds::KIND_NAME),
                version: cut_owned(info.version, bounds::KIND_NAME),
                description: cut_owned(info.description, bounds::DESCRIPTION),
                capabilities: crate::config::Capabilities {
                    programs: list(caps.programs),
                    env: list(caps.env),
                    network: caps.network,
                },
            }
        }

        /// The worker's answer to `execute`, cut to its caps.
        pub(super) fn answer(
            answer: Result<executor::WorkerOutcome, executor::ExecuteError>,
        ) -> Result<super::WorkerOutcome, super::ExecuteError> {
            let outcome = match answer {
                Ok(outcome) => outcome,
                Err(executor::ExecuteError::InvalidRequest(why)) => {
                    let why = cut_owned(why, bounds::FAILURE_MESSAGE);
                    return Err(super::ExecuteError::InvalidRequest(why));
                }
                Err(executor::ExecuteError::Failed(why)) => {
                    let why = cut_owned(why, bounds::FAILURE_MESSAGE);
                    return Err(super::ExecuteError::Failed(why));
                }
            };
            let followups = outcome
                .suggested_followup
                .into_iter()
                .take(bounds::FOLLOWUPS)
                .map(|f| super::Followup {
                    step_name: cut_owned(f.step_name, bounds::FOLLOWUP_NAME),
                    step_kind: cut_owned(f.step_kind, bounds::FOLLOWUP_NAME),
                    reason: cut_owned(f.reason, bounds::FOLLOWUP_REASON),
                })
                .collect();
            Ok(super::WorkerOutcome {
                status: match outcome.status {
                    executor::Status::Completed => super::WorkerStatus::Completed,
                    executor::Status::Failed => super::WorkerStatus::Failed,
                    executor::Status::Blocked => super::WorkerStatus::Blocked,
                },
                summary: cut_owned(outcome.summary, bounds::SUMMARY),
                needs_human: outcome.needs_human,
                exit_code: outcome.exit_code,
                followups,
            })
        }

        /// The step as this version's `step-request`.
        pub(super) fn step_request(input: super::StepInput) -> baa::worker::types::StepRequest {
            use baa::worker::types::{ResumeCheckpoint, StepRequest};
            StepRequest {
                task_id: input.task_id,
                step_id: input.step_id,
                run_id: input.run_id,
                attempt: input.attempt,
                step_name: input.step_name,
                step_kind: input.step_kind,
                worker_kind: input.worker_kind,
                prompt_summary: input.prompt_summary,
                command: input.command,
                timeout_ms: input.timeout_ms,
                resume: input.resume.map(|r| ResumeCheckpoint {
                    seq: r.seq,
                    checkpoint_type: r.checkpoint_type,
                    summary: r.summary,
                    payload: r.payload,
                }),
                checkpoints_enabled: input.checkpoints_enabled,
            }
        }
    };
}

pub(super) use interfaces;
