//! A step's record in the steps bucket (who runs it, every host that ran
//! it, its answer) and the transitions a host makes on it. Pure: the
//! revision-checked write that makes each transition safe is the
//! transport's; here is only what each one writes.

use serde::{Deserialize, Serialize};

use crate::contracts::StepExecutionResult;

/// Most checkpoints a step's record lists (with the answer and the hosts'
/// turns it stays well under the server's message size).
pub const MAX_LISTED_CHECKPOINTS: usize = 200;

/// The value at a step's key in [`super::topology::STEPS_BUCKET`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// `taskId/stepId/runId/attempt`.
    pub step: String,
    pub worker_kind: String,
    /// The host that holds the step now.
    pub owner: String,
    /// The queue delivery the owner runs (1 for the first).
    pub delivery: u64,
    /// The queue message the step came from (its stream sequence): another
    /// message naming the same step is a duplicate submission.
    #[serde(default)]
    pub sequence: u64,
    /// Every host that took the step, in order.
    pub runs: Vec<HostRun>,
    /// The checkpoints its hosts replicated, in the order they were
    /// captured: a host that takes the step over resumes from the last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<ReplicatedCheckpoint>,
    /// The artifacts its hosts stored, replicated as they were declared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ReplicatedArtifact>,
    /// The answer, once a host finished the step: nothing changes after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
}

/// One host's turn at a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRun {
    pub host: String,
    pub delivery: u64,
    pub started_at: String,
    /// How the turn ended; absent while it runs (or if its host died
    /// without a successor yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<RunEnd>,
    /// The run directory on that host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<String>,
}

/// A checkpoint a host captured and replicated: its record in the
/// checkpoints bucket and its payload in the payloads object store, both
/// under `name` (unique to the host's turn, so a late host never
/// overwrites a newer one's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedCheckpoint {
    pub seq: u32,
    #[serde(rename = "type")]
    pub checkpoint_type: String,
    pub host: String,
    pub delivery: u64,
    pub name: String,
    /// Whether a payload was stored beside the record.
    pub payload: bool,
}

/// An artifact a host stored and replicated to the payloads object store
/// as `object` (unique to the host's turn).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedArtifact {
    pub name: String,
    pub host: String,
    pub delivery: u64,
    pub object: String,
    pub bytes: u64,
}

/// How a host's turn at a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunEnd {
    /// It wrote the answer.
    Finished,
    /// Its delivery expired (the host died, stalled or was cut off) and
    /// another host took the step.
    TakenOver,
    /// It came back after being taken over: its late work was refused.
    Superseded,
    /// It gave the step back to the queue (its host could not run it).
    Released,
    /// Its delivery expired (the host died, stalled or was cut off) and it
    /// was the queue's last (`max-deliver`): the step was answered without
    /// a result.
    Expired,
}

/// A step's answer: its result, or why no host could run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reply {
    Result(Box<StepExecutionResult>),
    Error(ReplyError),
}

/// Why a step has no result: the same kinds and fields as `serve`'s errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplyError {
    /// `invalid-request`, `invalid-input` or `host-error`.
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Reply {
    /// The reply, made to fit in `limit` bytes of JSON: a result too large
    /// loses its lifecycle events first (the run directory has them), then
    /// becomes an error that says where the result is.
    pub fn fit(self, limit: usize) -> Reply {
        let size = |reply: &Reply| serde_json::to_vec(reply).map_or(usize::MAX, |v| v.len());
        let Reply::Result(mut result) = self else {
            return self;
        };
        if size(&Reply::Result(result.clone())) <= limit {
            return Reply::Result(result);
        }
        result.lifecycle_events.clear();
        let trimmed = Reply::Result(result.clone());
        if size(&trimmed) <= limit {
            return trimmed;
        }
        Reply::Error(ReplyError {
            kind: "host-error".into(),
            message: format!(
                "the step {} ({}), but its result is larger than the queue carries; it is in {}/result.json on the host that ran it",
                result.outcome.as_str(),
                result.summary.chars().take(200).collect::<String>(),
                result.log_paths.run_dir
            ),
            field: None,
        })
    }
}

impl From<&crate::Error> for ReplyError {
    fn from(error: &crate::Error) -> Self {
        let (kind, field) = error.wire_kind();
        ReplyError {
            kind: kind.into(),
            message: error.to_string(),
            field: field.map(str::to_owned),
        }
    }
}

/// What the results stream carries for a step: exactly one per identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    #[serde(flatten)]
    pub reply: Reply,
    /// Every host that took the step, how each turn ended.
    pub runs: Vec<HostRun>,
    /// The finishing turn's artifacts in the payloads object store
    /// ([`crate::cluster::Cluster::artifact`] reads one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ReplicatedArtifact>,
}

/// What a host that received delivery `delivery` of a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Run it: write this record (it names this host the owner).
    Run(StepRecord),
    /// It is answered already: publish the answer again (a duplicate is
    /// dropped) and acknowledge the delivery.
    Answered(Answer),
    /// A newer delivery owns it: leave this one alone.
    Stale { owner: String, delivery: u64 },
    /// Another message names a step already taken: a duplicate submission,
    /// dropped (acknowledged) without running.
    Duplicate,
}

/// What becomes of a step whose message the queue stopped delivering
/// (`max-deliver` deliveries, none finished).
#[derive(Debug, Clone, PartialEq)]
pub enum GiveUp {
    /// Answer it with this record's reply (write it, then publish).
    Answer(StepRecord),
    /// It is answered already: publish that again.
    Answered(Answer),
    /// The message was a duplicate of another that holds the step.
    Duplicate,
}

/// The queue gave up on message `sequence` of step `step` after
/// `deliveries`: the step is answered `host-error`, naming each host's turn.
pub fn give_up(
    existing: Option<StepRecord>,
    step: &str,
    worker_kind: &str,
    sequence: u64,
    deliveries: u64,
) -> GiveUp {
    let mut record = match existing {
        Some(record) if record.reply.is_some() => {
            return record.answer().map_or(GiveUp::Duplicate, GiveUp::Answered)
        }
        Some(record) if record.sequence != 0 && record.sequence != sequence => {
            return GiveUp::Duplicate
        }
        Some(record) => record,
        None => StepRecord {
            step: step.to_owned(),
            worker_kind: worker_kind.to_owned(),
            owner: String::new(),
            delivery: 0,
            sequence,
            runs: Vec::new(),
            checkpoints: Vec::new(),
            artifacts: Vec::new(),
            reply: None,
        },
    };
    for turn in record.runs.iter_mut().filter(|r| r.end.is_none()) {
        turn.end = Some(RunEnd::Expired);
    }
    let turns: Vec<String> = record
        .runs
        .iter()
        .map(|r| {
            let end = r.end.map_or("running", RunEnd::as_str);
            format!("{} (delivery {}: {end})", r.host, r.delivery)
        })
        .collect();
    let hosts = if turns.is_empty() {
        "no host claimed it".to_owned()
    } else {
        turns.join(", ")
    };
    record.reply = Some(Reply::Error(ReplyError {
        kind: "host-error".into(),
        message: format!(
            "no host finished step {step} in {deliveries} {}, the queue's max-deliver: {hosts}; submit it again as the next attempt",
            if deliveries == 1 { "delivery" } else { "deliveries" }
        ),
        field: None,
    }));
    GiveUp::Answer(record)
}

impl RunEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            RunEnd::Finished => "finished",
            RunEnd::TakenOver => "taken-over",
            RunEnd::Superseded => "superseded",
            RunEnd::Released => "released",
            RunEnd::Expired => "expired",
        }
    }
}

/// Who takes a step.
#[derive(Debug, Clone)]
pub struct Taker<'a> {
    pub step: &'a str,
    pub worker_kind: &'a str,
    pub host: &'a str,
    pub delivery: u64,
    /// The queue message's stream sequence.
    pub sequence: u64,
    pub now: String,
}

/// The claim `taker` makes on a step whose record is `existing`.
pub fn claim(existing: Option<StepRecord>, taker: &Taker<'_>) -> Claim {
    let run = HostRun {
        host: taker.host.to_owned(),
        delivery: taker.delivery,
        started_at: taker.now.clone(),
        end: None,
        run_dir: None,
    };
    let Some(mut record) = existing else {
        return Claim::Run(StepRecord {
            step: taker.step.to_owned(),
            worker_kind: taker.worker_kind.to_owned(),
            owner: taker.host.to_owned(),
            delivery: taker.delivery,
            sequence: taker.sequence,
            runs: vec![run],
            checkpoints: Vec::new(),
            artifacts: Vec::new(),
            reply: None,
        });
    };
    if let Some(answer) = record.answer() {
        return Claim::Answered(answer);
    }
    if record.sequence != 0 && record.sequence != taker.sequence {
        return Claim::Duplicate;
    }
    if record.delivery >= taker.delivery {
        return Claim::Stale {
            owner: record.owner,
            delivery: record.delivery,
        };
    }
    for earlier in record.runs.iter_mut().filter(|r| r.end.is_none()) {
        earlier.end = Some(RunEnd::TakenOver);
    }
    record.owner = taker.host.to_owned();
    record.delivery = taker.delivery;
    record.runs.push(run);
    Claim::Run(record)
}

impl StepRecord {
    fn turn(&mut self, host: &str, delivery: u64) -> Option<&mut HostRun> {
        self.runs
            .iter_mut()
            .rev()
            .find(|r| r.host == host && r.delivery == delivery)
    }

    /// The owner records where its run directory is.
    pub fn started(mut self, host: &str, delivery: u64, run_dir: &str) -> Self {
        if let Some(turn) = self.turn(host, delivery) {
            turn.run_dir = Some(run_dir.to_owned());
        }
        self
    }

    /// The owner's turn ends with `reply`, the step's answer.
    pub fn finished(mut self, host: &str, delivery: u64, reply: Reply) -> Self {
        if let Some(turn) = self.turn(host, delivery) {
            turn.end = Some(RunEnd::Finished);
        }
        self.reply = Some(reply);
        self
    }

    /// The answer, once the step has one: with the artifacts of the turn
    /// that finished it.
    pub fn answer(&self) -> Option<Answer> {
        let finished = self.runs.iter().find(|r| r.end == Some(RunEnd::Finished));
        let artifacts = self
            .artifacts
            .iter()
            .filter(|a| finished.is_some_and(|f| f.host == a.host && f.delivery == a.delivery))
            .cloned()
            .collect();
        Some(Answer {
            reply: self.reply.clone()?,
            runs: self.runs.clone(),
            artifacts,
        })
    }

    /// The owner adds an artifact it replicated.
    pub fn with_artifact(mut self, artifact: ReplicatedArtifact) -> Self {
        if !self.artifacts.iter().any(|a| a.object == artifact.object) {
            self.artifacts.push(artifact);
        }
        self
    }

    /// Whether `host`'s delivery `delivery` of message `sequence` holds
    /// the step.
    pub fn held_by_message(&self, host: &str, delivery: u64, sequence: u64) -> bool {
        self.held_by(host, delivery) && self.sequence == sequence
    }

    /// The owner adds a checkpoint it replicated.
    /// The list keeps the newest [`MAX_LISTED_CHECKPOINTS`] (a successor
    /// resumes from the last; numbering continues from the highest).
    pub fn with_checkpoint(mut self, checkpoint: ReplicatedCheckpoint) -> Self {
        if self.checkpoints.iter().any(|c| c.name == checkpoint.name) {
            return self;
        }
        self.checkpoints.push(checkpoint);
        let over = self
            .checkpoints
            .len()
            .saturating_sub(MAX_LISTED_CHECKPOINTS);
        self.checkpoints.drain(..over);
        self
    }

    /// The checkpoints earlier turns replicated, for a host taking over.
    pub fn inherited(&self, host: &str, delivery: u64) -> Vec<ReplicatedCheckpoint> {
        let this_turn = |c: &&ReplicatedCheckpoint| c.host == host && c.delivery == delivery;
        self.checkpoints
            .iter()
            .filter(|c| !this_turn(c))
            .cloned()
            .collect()
    }

    /// The owner gives the step back to the queue.
    pub fn released(mut self, host: &str, delivery: u64) -> Self {
        if let Some(turn) = self.turn(host, delivery) {
            turn.end = Some(RunEnd::Released);
        }
        self
    }

    /// A host that lost the step records that its late work was refused
    /// (a turn the queue's giving up ended stays as the answer says).
    pub fn superseded(mut self, host: &str, delivery: u64) -> Self {
        if let Some(turn) = self.turn(host, delivery) {
            if turn.end != Some(RunEnd::Expired) {
                turn.end = Some(RunEnd::Superseded);
            }
        }
        self
    }

    /// Whether `host`'s delivery `delivery` holds the step.
    pub fn held_by(&self, host: &str, delivery: u64) -> bool {
        self.reply.is_none() && self.owner == host && self.delivery == delivery
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taker(host: &str, delivery: u64) -> Taker<'_> {
        Taker {
            step: "t/s/r/1",
            worker_kind: "shell",
            host,
            delivery,
            sequence: 7,
            now: format!("t{delivery}"),
        }
    }

    fn run(claim: Claim) -> StepRecord {
        match claim {
            Claim::Run(record) => record,
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn a_later_delivery_takes_over_and_the_earlier_host_is_marked() {
        let first = run(claim(None, &taker("a", 1)));
        assert!(first.held_by("a", 1));
        let second = run(claim(Some(first.clone()), &taker("b", 2)));
        assert!(second.held_by("b", 2) && !second.held_by("a", 1));
        assert_eq!(second.runs[0].end, Some(RunEnd::TakenOver));
        assert_eq!(second.runs[1].end, None);
        // The old delivery coming back is stale, whoever brings it.
        assert!(matches!(
            claim(Some(second.clone()), &taker("a", 1)),
            Claim::Stale { ref owner, delivery: 2 } if owner == "b"
        ));
        let superseded = second.clone().superseded("a", 1);
        assert_eq!(superseded.runs[0].end, Some(RunEnd::Superseded));
        assert!(
            superseded.held_by("b", 2),
            "the record of a late host changes no owner"
        );
    }

    #[test]
    fn another_message_for_a_taken_step_is_a_duplicate() {
        let first = run(claim(None, &taker("a", 1)));
        let mut copy = taker("b", 1);
        copy.sequence = 8;
        assert_eq!(claim(Some(first.clone()), &copy), Claim::Duplicate);
        copy.delivery = 5;
        assert_eq!(claim(Some(first.clone()), &copy), Claim::Duplicate);
        assert!(first.held_by_message("a", 1, 7) && !first.held_by_message("a", 1, 8));
    }

    #[test]
    fn a_step_the_queue_gives_up_on_is_answered_naming_its_turns() {
        let first = run(claim(None, &taker("a", 1))).released("a", 1);
        let second = run(claim(Some(first), &taker("b", 2)));
        let GiveUp::Answer(record) = give_up(Some(second.clone()), "t/s/r/1", "shell", 7, 2) else {
            panic!("expected an answer");
        };
        let answer = record.answer().unwrap();
        let Reply::Error(error) = &answer.reply else {
            panic!("expected an error")
        };
        assert_eq!(error.kind, "host-error");
        assert!(
            error.message.contains("2 deliveries")
                && error
                    .message
                    .contains("a (delivery 1: released), b (delivery 2: expired)"),
            "{}",
            error.message
        );
        assert_eq!(answer.runs[1].end, Some(RunEnd::Expired));
        // The stalled host coming back holds nothing.
        assert!(!record.held_by("b", 2));
        // Answered once: giving up again publishes the same answer.
        assert_eq!(
            give_up(Some(record), "t/s/r/1", "shell", 7, 2),
            GiveUp::Answered(answer)
        );
        // Another message naming the step is only a duplicate.
        assert_eq!(
            give_up(Some(second), "t/s/r/1", "shell", 8, 2),
            GiveUp::Duplicate
        );
        // No host ever claimed it.
        let GiveUp::Answer(unclaimed) = give_up(None, "t/s/r/1", "shell", 9, 3) else {
            panic!("expected an answer");
        };
        assert!(format!("{:?}", unclaimed.reply).contains("no host claimed it"));
    }

    #[test]
    fn an_answered_step_is_answered_again_never_rerun() {
        let record = run(claim(None, &taker("a", 1))).started("a", 1, "/runs/x");
        let error = Reply::Error(ReplyError {
            kind: "invalid-request".into(),
            message: "bad".into(),
            field: Some("runtime.worktreePath".into()),
        });
        let done = record.finished("a", 1, error);
        let answer = done.answer().unwrap();
        assert_eq!(answer.runs[0].end, Some(RunEnd::Finished));
        assert_eq!(answer.runs[0].run_dir.as_deref(), Some("/runs/x"));
        assert!(!done.held_by("a", 1));
        assert_eq!(
            claim(Some(done), &taker("b", 2)),
            Claim::Answered(answer.clone())
        );
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(json["error"]["field"], "runtime.worktreePath");
        assert_eq!(json["runs"][0]["end"], "finished");
        assert_eq!(serde_json::from_value::<Answer>(json).unwrap(), answer);
    }
}
