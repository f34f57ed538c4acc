//! Checkpoints and artifacts across hosts: each one a turn captures is
//! replicated as it is captured (payload, record, then the step's fenced
//! record lists it); a turn that takes a step over inherits the
//! checkpoints and resumes from the last.

use std::path::Path;
use std::sync::Arc;

use super::record::{ReplicatedArtifact, ReplicatedCheckpoint, MAX_LISTED_CHECKPOINTS};
use super::topology::{artifact_object, check_token, checkpoint_name};
use super::turn::Turn;
use super::ClusterError;
use crate::capabilities::events::MAX_ARTIFACT_BYTES;
use crate::checkpoints::history::INHERITED_DIR;
use crate::checkpoints::{record_file_name, MAX_PAYLOAD_BYTES};
use crate::contracts::{EventSource, StepExecutionRequest};
use crate::run::{StepEvent, StepEventBody};

/// A checkpoint record file is small; a larger one is not the host's.
const MAX_RECORD_BYTES: usize = 256 * 1024;

impl Turn<'_> {
    /// Replicate checkpoint `seq` of this turn (record and payload, from
    /// the run directory the host wrote), then list it in the step's
    /// record. `false` when the step was taken over meanwhile.
    pub async fn replicate(
        &mut self,
        run_dir: &str,
        seq: u32,
        kind: &str,
    ) -> Result<bool, ClusterError> {
        let dir = Path::new(run_dir).join("checkpoints");
        let record_file = read_capped(&dir.join(record_file_name(seq)), MAX_RECORD_BYTES)
            .await
            .map_err(ReadError::into_cluster)?;
        let payload_path = dir.join(payload_file_name(seq, kind));
        let payload = match read_capped(&payload_path, MAX_PAYLOAD_BYTES).await {
            Ok(bytes) => Some(bytes),
            Err(ReadError::Missing(_)) => None,
            Err(ReadError::Failed(e)) => return Err(e),
        };
        let delivery = self.delivery.delivered();
        let name = checkpoint_name(self.id, self.host(), delivery, seq);
        let stored = payload.is_some();
        self.transport()
            .put_checkpoint(&name, record_file, payload)
            .await?;
        let checkpoint = ReplicatedCheckpoint {
            seq,
            checkpoint_type: kind.to_owned(),
            host: self.host().to_owned(),
            delivery,
            name,
            payload: stored,
        };
        self.update(|r| r.with_checkpoint(checkpoint.clone())).await
    }

    /// Replicate artifact `name` of this turn (from the run directory the
    /// host wrote) and list it in the step's record. `false` when the step
    /// was taken over meanwhile.
    pub async fn replicate_artifact(
        &mut self,
        run_dir: &str,
        name: &str,
    ) -> Result<bool, ClusterError> {
        let path = Path::new(run_dir).join("artifacts").join(name);
        let contents = read_capped(&path, MAX_ARTIFACT_BYTES)
            .await
            .map_err(ReadError::into_cluster)?;
        let delivery = self.delivery.delivered();
        let object = artifact_object(self.id, self.host(), delivery, name);
        let bytes = contents.len() as u64;
        self.transport().put_artifact(&object, contents).await?;
        let artifact = ReplicatedArtifact {
            name: name.to_owned(),
            host: self.host().to_owned(),
            delivery,
            object,
            bytes,
        };
        self.update(|r| r.with_artifact(artifact.clone())).await
    }

    /// Whether this turn replicated its checkpoint `seq`.
    pub fn replicated(&self, seq: u32) -> bool {
        let (host, delivery) = (self.host(), self.delivery.delivered());
        (self.record.checkpoints.iter())
            .any(|c| c.seq == seq && c.host == host && c.delivery == delivery)
    }

    /// Whether this turn replicated its artifact `name`.
    pub fn stored(&self, name: &str) -> bool {
        let (host, delivery) = (self.host(), self.delivery.delivered());
        (self.record.artifacts.iter())
            .any(|a| a.name == name && a.host == host && a.delivery == delivery)
    }

    /// Replicate what this turn's run directory holds and the step's record
    /// does not list yet: the captures and declarations whose events the
    /// step's stream skipped (a slow server made this host read it late).
    /// `false` when the step was taken over meanwhile.
    pub async fn catch_up(&mut self, run_dir: &str) -> Result<bool, ClusterError> {
        let dir = Path::new(run_dir);
        let checkpoints = dir.join("checkpoints");
        let on_disk = checkpoints_on_disk(&checkpoints, |seq| !self.replicated(seq)).await;
        for (seq, kind) in on_disk {
            if self.record.checkpoints.len() >= MAX_LISTED_CHECKPOINTS {
                break; // the record lists no more
            }
            if !self.replicate(run_dir, seq, &kind).await? {
                return Ok(false);
            }
        }
        for name in artifacts_on_disk(&dir.join("artifacts")).await {
            if self.stored(&name) {
                continue;
            }
            if !self.replicate_artifact(run_dir, &name).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Put the checkpoints earlier turns replicated where the runner finds
    /// an earlier attempt's (`<step dir>/inherited/`), and resume from the
    /// last unless the request names its own resume point.
    pub async fn inherit(&self, request: &mut StepExecutionRequest) {
        let inherited = self
            .record
            .inherited(self.host(), self.delivery.delivered());
        if inherited.is_empty() {
            return;
        }
        let Ok(step_dir) = self.worker.runner.step_dir(request) else {
            return; // an invalid request: the run says why
        };
        let dir = match inherited_dir(request, &step_dir).await {
            Ok(dir) => Arc::new(dir),
            Err(e) => {
                tracing::warn!(step = %self.id, "cannot inherit checkpoints: {e}");
                return;
            }
        };
        // Resume from the last checkpoint actually written here.
        let mut last = None;
        for checkpoint in &inherited {
            match self.inherit_one(&dir, checkpoint).await {
                Ok(()) => last = Some(checkpoint.seq),
                Err(e) => {
                    tracing::warn!(step = %self.id, "checkpoint {} not inherited: {e}", checkpoint.seq)
                }
            }
        }
        let resume = &mut request
            .checkpoint
            .get_or_insert_with(Default::default)
            .resume_from_seq;
        if resume.is_none() {
            *resume = last;
        }
    }

    async fn inherit_one(
        &self,
        dir: &Arc<cap_std::fs::Dir>,
        checkpoint: &ReplicatedCheckpoint,
    ) -> Result<(), ClusterError> {
        check_token(&checkpoint.checkpoint_type).map_err(|why| ClusterError::Corrupt {
            what: format!("the type of replicated checkpoint {}", checkpoint.name),
            message: why,
        })?;
        let (record_file, payload) = self
            .transport()
            .get_checkpoint(&checkpoint.name, checkpoint.payload)
            .await?;
        let payload_name = payload_file_name(checkpoint.seq, &checkpoint.checkpoint_type);
        // The payload before its record: a record never names a payload
        // not there.
        let mut files: Vec<(String, Vec<u8>)> =
            payload.map(|p| (payload_name, p)).into_iter().collect();
        files.push((record_file_name(checkpoint.seq), record_file));
        let dir = dir.clone();
        let written = tokio::task::spawn_blocking(move || {
            let files: Vec<(&str, &[u8])> = files
                .iter()
                .map(|(name, bytes)| (name.as_str(), bytes.as_slice()))
                .collect();
            let durability = crate::fsutil::Durability::PowerLoss;
            crate::fsutil::write_all_atomic_in(&dir, &files, durability)
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClusterError::Io(e.to_string())),
            Err(e) => Err(ClusterError::Io(e.to_string())),
        }
    }
}

/// `<step dir>/inherited/checkpoints`, made and opened beneath the turn's
/// runs root with cap-std: no link can lead it elsewhere. (`step_dir` is
/// the validated `<runs root>/<task>/<run>/<step>`.)
async fn inherited_dir(
    request: &StepExecutionRequest,
    step_dir: &Path,
) -> std::io::Result<cap_std::fs::Dir> {
    let rel = Path::new(&request.task_id)
        .join(&request.run_id)
        .join(&request.step_id)
        .join(INHERITED_DIR)
        .join("checkpoints");
    let runs_root = step_dir
        .ancestors()
        .nth(3)
        .ok_or_else(|| std::io::Error::other("the step directory has no runs root"))?
        .to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&runs_root)?;
        let root = cap_std::fs::Dir::open_ambient_dir(&runs_root, cap_std::ambient_authority())?;
        root.create_dir_all(&rel)?;
        root.open_dir(&rel)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The seq and type of a checkpoint the host captured, when `event` says so
/// (a host event: a worker cannot emit one in the `checkpoint.` namespace).
pub(super) fn captured_checkpoint(event: &StepEvent) -> Option<(u32, String)> {
    let StepEventBody::Lifecycle(entry) = &event.body else {
        return None;
    };
    if entry.event != "checkpoint.captured" || entry.source != EventSource::Host {
        return None;
    }
    let data = entry.data.as_ref()?;
    let seq = u32::try_from(data.get("seq")?.as_u64()?).ok()?;
    let kind = data.get("type")?.as_str()?;
    check_token(kind).ok()?;
    Some((seq, kind.to_owned()))
}

/// The name of an artifact the host stored, when `event` says so.
pub(super) fn declared_artifact(event: &StepEvent) -> Option<String> {
    let StepEventBody::Lifecycle(entry) = &event.body else {
        return None;
    };
    if entry.event != "artifact.declared" || entry.source != EventSource::Host {
        return None;
    }
    let name = entry.data.as_ref()?.get("name")?.as_str()?;
    // The host's own rule for artifact names: one plain file name.
    crate::run::validate::check_id("artifact", name).ok()?;
    Some(name.to_owned())
}

/// The checkpoints a run directory's `checkpoints/` holds (seq, type) of
/// the numbers `wanted`, in order: each record file names its type.
async fn checkpoints_on_disk(dir: &Path, wanted: impl Fn(u32) -> bool) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for name in file_names(dir).await {
        let Some(seq) = name
            .strip_suffix(".json")
            .filter(|s| s.len() == 6)
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|seq| wanted(*seq))
        else {
            continue;
        };
        let Ok(record) = read_capped(&dir.join(&name), MAX_RECORD_BYTES).await else {
            continue;
        };
        let kind = serde_json::from_slice::<serde_json::Value>(&record)
            .ok()
            .and_then(|r| r.get("type")?.as_str().map(str::to_owned));
        if let Some(kind) = kind.filter(|k| check_token(k).is_ok()) {
            found.push((seq, kind));
        }
    }
    found.sort();
    found
}

/// The artifacts a run directory's `artifacts/` holds, by the host's rule
/// for their names.
async fn artifacts_on_disk(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = file_names(dir)
        .await
        .into_iter()
        .filter(|name| crate::run::validate::check_id("artifact", name).is_ok())
        .collect();
    names.sort();
    names
}

/// The names of the regular files in `dir` (none when it is missing).
async fn file_names(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return names;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let regular = entry.file_type().await.is_ok_and(|t| t.is_file());
        if let (true, Ok(name)) = (regular, entry.file_name().into_string()) {
            names.push(name);
        }
    }
    names
}

fn payload_file_name(seq: u32, kind: &str) -> String {
    format!("{seq:06}.{kind}.payload")
}

/// Why a run directory's file was not read.
enum ReadError {
    Missing(String),
    Failed(ClusterError),
}

impl ReadError {
    fn into_cluster(self) -> ClusterError {
        match self {
            ReadError::Missing(path) => ClusterError::Io(format!("{path}: missing")),
            ReadError::Failed(e) => e,
        }
    }
}

/// Read at most `limit` bytes of `path`, a file the host wrote in a run
/// directory (host-only; a symlink there is refused all the same).
async fn read_capped(path: &Path, limit: usize) -> Result<Vec<u8>, ReadError> {
    use std::os::unix::fs::OpenOptionsExt;
    use tokio::io::AsyncReadExt;
    let failed =
        |e: std::io::Error| ReadError::Failed(ClusterError::Io(format!("{}: {e}", path.display())));
    // Never through a link, never blocking on a FIFO; then only a regular
    // file with no other name (what the host itself writes).
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .and_then(|file| {
            use std::os::unix::fs::MetadataExt;
            let meta = file.metadata()?;
            if !meta.file_type().is_file() || meta.nlink() != 1 {
                return Err(std::io::Error::other("not a file this host wrote"));
            }
            Ok(file)
        });
    let file = match opened {
        Ok(file) => tokio::fs::File::from_std(file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ReadError::Missing(path.display().to_string()))
        }
        Err(e) => return Err(failed(e)),
    };
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(failed)?;
    if bytes.len() > limit {
        return Err(ReadError::Failed(ClusterError::Io(format!(
            "{}: longer than {limit} bytes",
            path.display()
        ))));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[tokio::test]
    async fn what_a_run_directory_holds_is_found_in_order_without_temporary_files() {
        let run = std::env::temp_dir().join(format!("baa-catch-up-{}", std::process::id()));
        let (checkpoints, artifacts) = (run.join("checkpoints"), run.join("artifacts"));
        std::fs::create_dir_all(&checkpoints).unwrap();
        std::fs::create_dir_all(&artifacts).unwrap();
        let write = |path: PathBuf, text: &str| std::fs::write(path, text).unwrap();
        write(checkpoints.join("000002.json"), r#"{"type":"git_diff"}"#);
        write(checkpoints.join("000001.json"), r#"{"type":"summary"}"#);
        write(checkpoints.join("000001.summary.payload"), "half-way");
        write(
            checkpoints.join(".000003.json.tmp-x"),
            r#"{"type":"summary"}"#,
        );
        write(checkpoints.join("000004.json"), r#"{"type":"no spaces"}"#);
        write(checkpoints.join("7.json"), r#"{"type":"summary"}"#);
        write(artifacts.join("notes.txt"), "hello");
        write(artifacts.join(".notes.txt.tmp-1"), "hel");
        assert_eq!(
            checkpoints_on_disk(&checkpoints, |_| true).await,
            [(1, "summary".to_owned()), (2, "git_diff".to_owned())]
        );
        assert_eq!(
            checkpoints_on_disk(&checkpoints, |seq| seq != 1).await,
            [(2, "git_diff".to_owned())]
        );
        assert_eq!(artifacts_on_disk(&artifacts).await, ["notes.txt"]);
        assert!(checkpoints_on_disk(&run.join("missing"), |_| true)
            .await
            .is_empty());
        std::fs::remove_dir_all(&run).unwrap();
    }
}
