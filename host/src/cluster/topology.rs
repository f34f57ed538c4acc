//! Where things live on the NATS server: stream, bucket and subject names,
//! and how a step's identity becomes a subject token and a key. Pure: the
//! names are the cluster's wire contract (README "Cluster").

use std::fmt;

use crate::contracts::StepExecutionRequest;

/// The work queue: one subject per worker kind, `baa.steps.<kind>`.
pub const STEPS_STREAM: &str = "BAA_STEPS";
/// Every step's answer (its result, or why it could not run), one per
/// identity, on `baa.results.<identity>`.
pub const RESULTS_STREAM: &str = "BAA_RESULTS";
/// Who runs each step, its replicated checkpoints, and its answer, at key
/// `<identity>`; every write is revision-checked (the fencing token).
pub const STEPS_BUCKET: &str = "baa-steps";
/// Cancellations asked for, at key `<identity>`: a step still queued, or
/// moving between hosts, is cancelled when a host picks it up.
pub const CANCELS_BUCKET: &str = "baa-cancels";
/// The digest of each step's submitted request, by key: the same identity
/// submitted again must be the same request.
pub const SUBMISSIONS_BUCKET: &str = "baa-submissions";
/// Replicated checkpoint records, at [`checkpoint_name`].
pub const CHECKPOINTS_BUCKET: &str = "baa-checkpoints";
/// Replicated checkpoint payloads (up to 8 MiB each), at [`checkpoint_name`].
pub const PAYLOADS_STORE: &str = "baa-payloads";
/// Each worker process's heartbeat: its kinds and load.
pub const HOSTS_BUCKET: &str = "baa-hosts";

const PREFIX: &str = "baa";

/// One step attempt, as the conductor names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StepIdentity {
    pub task_id: String,
    pub step_id: String,
    pub run_id: String,
    pub attempt: u32,
}

impl StepIdentity {
    pub fn of(request: &StepExecutionRequest) -> Self {
        StepIdentity {
            task_id: request.task_id.clone(),
            step_id: request.step_id.clone(),
            run_id: request.run_id.clone(),
            attempt: request.attempt,
        }
    }

    /// `<task>.<step>.<run>.<attempt>`, each id a [`token`]: the key in the
    /// buckets, the tail of the events, result and cancel subjects, and the
    /// submission's `Nats-Msg-Id`.
    pub fn key(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            token(&self.task_id),
            token(&self.step_id),
            token(&self.run_id),
            self.attempt
        )
    }
}

impl fmt::Display for StepIdentity {
    /// `taskId/stepId/runId/attempt`, as the conductor writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let StepIdentity {
            task_id,
            step_id,
            run_id,
            attempt,
        } = self;
        write!(f, "{task_id}/{step_id}/{run_id}/{attempt}")
    }
}

/// An id as one subject token: ids are letters, digits, `.`, `_` and `-`
/// (the request's validation says so); `.` separates tokens, so it
/// becomes `=`, which no id has. Anything else a subject cannot hold is
/// refused by [`check_token`].
pub fn token(id: &str) -> String {
    id.replace('.', "=")
}

/// `name` can be a subject token and a consumer name once [`token`]ed: it
/// is not empty and holds only letters, digits, `.`, `_` and `-`.
pub fn check_token(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "`{name}` has `{c}`, which a cluster subject cannot carry: use letters, digits, `.`, `_` and `-`"
        )),
        None => Ok(()),
    }
}

/// Where checkpoint `seq` of `host`'s turn (`delivery`) at a step is
/// replicated: unique to that turn, so no host overwrites another's.
pub fn checkpoint_name(id: &StepIdentity, host: &str, delivery: u64, seq: u32) -> String {
    format!("{}.{}.d{delivery}.{seq}", id.key(), token(host))
}

/// Where artifact `name` of `host`'s turn (`delivery`) at a step is
/// replicated in the payloads object store.
pub fn artifact_object(id: &StepIdentity, host: &str, delivery: u64, name: &str) -> String {
    format!("{}.{}.d{delivery}.artifact.{name}", id.key(), token(host))
}

/// Where steps of `kind` are queued.
pub fn steps_subject(kind: &str) -> String {
    format!("{PREFIX}.steps.{}", token(kind))
}

/// Every kind's queue (the steps stream's subjects).
pub fn all_steps() -> String {
    format!("{PREFIX}.steps.>")
}

/// The durable consumer every host serving `kind` pulls from.
pub fn consumer_name(kind: &str) -> String {
    format!("steps-{}", token(kind))
}

/// The kind a steps subject queues (`None` for any other subject).
pub fn kind_of_subject(subject: &str) -> Option<String> {
    let tail = subject.strip_prefix(PREFIX)?.strip_prefix(".steps.")?;
    (!tail.is_empty() && !tail.contains('.')).then(|| tail.replace('=', "."))
}

/// A step's live events (core NATS: a view, the host's run directory is
/// the record).
pub fn events_subject(id: &StepIdentity) -> String {
    format!("{PREFIX}.events.{}", id.key())
}

/// A step's answer.
pub fn result_subject(id: &StepIdentity) -> String {
    format!("{PREFIX}.results.{}", id.key())
}

/// The step key a result subject names.
pub fn key_of_result(subject: &str) -> Option<&str> {
    subject.strip_prefix(PREFIX)?.strip_prefix(".results.")
}

/// Every answer (the results stream's subjects).
pub fn all_results() -> String {
    format!("{PREFIX}.results.>")
}

/// Cancel a step wherever it runs.
pub fn cancel_subject(id: &StepIdentity) -> String {
    format!("{PREFIX}.cancel.{}", id.key())
}

/// Every cancellation (a host listens to all, and acts on its own steps).
/// The server's announcements that a steps consumer stopped delivering a
/// message (`max-deliver` reached).
pub fn max_deliveries_advisories() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STEPS_STREAM}.*")
}

/// The queue group of the hosts answering those: one hears each.
pub const EXPIRY_GROUP: &str = "baa-expiry";

pub fn all_cancels() -> String {
    format!("{PREFIX}.cancel.>")
}

/// The step key a cancel subject names.
pub fn key_of_cancel(subject: &str) -> Option<&str> {
    subject.strip_prefix(PREFIX)?.strip_prefix(".cancel.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(task: &str, step: &str, run: &str, attempt: u32) -> StepIdentity {
        StepIdentity {
            task_id: task.into(),
            step_id: step.into(),
            run_id: run.into(),
            attempt,
        }
    }

    #[test]
    fn dotted_ids_stay_one_token_each_and_keys_do_not_collide() {
        let a = id("t.1", "s", "r", 1);
        let b = id("t", "1.s", "r", 1);
        assert_eq!(a.key(), "t=1.s.r.1");
        assert_ne!(a.key(), b.key());
        assert_eq!(events_subject(&a), "baa.events.t=1.s.r.1");
        assert_eq!(a.to_string(), "t.1/s/r/1");
        assert_eq!(key_of_cancel(&cancel_subject(&a)), Some("t=1.s.r.1"));
        assert_eq!(key_of_result(&result_subject(&a)), Some("t=1.s.r.1"));
    }

    #[test]
    fn kinds_round_trip_through_their_subject() {
        for kind in ["shell", "todo-scan", "acme.lint"] {
            check_token(kind).unwrap();
            assert_eq!(kind_of_subject(&steps_subject(kind)).as_deref(), Some(kind));
            assert!(!consumer_name(kind).contains('.'));
        }
        assert!(check_token("a b").unwrap_err().contains("` `"));
        assert!(check_token("x>").is_err() && check_token("").is_err());
        assert_eq!(kind_of_subject("baa.results.x"), None);
    }
}
