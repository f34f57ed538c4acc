//! Checkpoints and artifacts across hosts: each one a turn captures is
//! replicated as it is captured (payload, record, then the step's fenced
//! record lists it); a turn that takes a step over inherits the
//! checkpoints and resumes from the last.

use std::path::Path;

use super::record::{ReplicatedArtifact, ReplicatedCheckpoint};
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

    /// Put the checkpoints earlier turns replicated where the runner finds
    /// an earlier attempt's (`<step dir>/inherited/`), and resume from the
    /// last unless the request names its own resume point.
    pub async fn inherit(&self, request: &mut StepExecutionRequest) {
        let inherited = self
            .record
            .inherited(self.host(), self.delivery.delivered());
        let Some(last) = inherited.last() else {
            return;
        };
        let Ok(step_dir) = self.worker.runner.step_dir(request) else {
            return; // an invalid request: the run says why
        };
        let dir = step_dir.join(INHERITED_DIR).join("checkpoints");
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            tracing::warn!(step = %self.id, "cannot inherit checkpoints: {e}");
            return;
        }
        for checkpoint in &inherited {
            if let Err(e) = self.inherit_one(&dir, checkpoint).await {
                tracing::warn!(step = %self.id, "checkpoint {} not inherited: {e}", checkpoint.seq);
            }
        }
        let resume = &mut request
            .checkpoint
            .get_or_insert_with(Default::default)
            .resume_from_seq;
        if resume.is_none() {
            *resume = Some(last.seq);
        }
    }

    async fn inherit_one(
        &self,
        dir: &Path,
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
        let mut files = vec![(dir.join(record_file_name(checkpoint.seq)), record_file)];
        files.extend(payload.map(|p| (dir.join(payload_name), p)));
        let written = tokio::task::spawn_blocking(move || {
            let files: Vec<(&Path, &[u8])> = files
                .iter()
                .map(|(p, b)| (p.as_path(), b.as_slice()))
                .collect();
            crate::fsutil::write_all_atomic(&files, crate::fsutil::Durability::PowerLoss)
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClusterError::Io(e.to_string())),
            Err(e) => Err(ClusterError::Io(e.to_string())),
        }
    }
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
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
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
