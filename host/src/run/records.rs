//! The one writer of a step's records in its run directory: `metadata.json`,
//! `state.json` and `result.json`, each serialized with its checksum and
//! written whole (temporary file, rename; fsync per `durability`). A phase
//! that changes several writes them in one go, renamed in the order given.

use std::path::Path;

use crate::contracts::{LocalRunPaths, RunMetadata, RunStateSnapshot, StepExecutionResult};
use crate::error::Error;
use crate::fsutil::{record_bytes, write_all_atomic, Durability};

/// One record of a step.
pub(crate) enum Record<'a> {
    Metadata(&'a RunMetadata),
    State(&'a RunStateSnapshot),
    Result(&'a StepExecutionResult),
}

/// Write `records` into the run directory of `paths`, in order.
pub(crate) fn write(
    paths: &LocalRunPaths,
    durability: Durability,
    records: &[Record<'_>],
) -> Result<(), Error> {
    let mut files = Vec::with_capacity(records.len());
    for record in records {
        let (path, bytes) = match record {
            Record::Metadata(m) => (&paths.metadata_path, record_bytes(m)),
            Record::State(s) => (&paths.state_path, record_bytes(s)),
            Record::Result(r) => (&paths.result_path, record_bytes(r)),
        };
        let path = Path::new(path);
        files.push((path, bytes.map_err(Error::io(path))?));
    }
    let staged: Vec<(&Path, &[u8])> = files.iter().map(|(p, b)| (*p, b.as_slice())).collect();
    let last = staged.last().map_or(Path::new(&paths.run_dir), |(p, _)| *p);
    write_all_atomic(&staged, durability).map_err(Error::io(last))
}
