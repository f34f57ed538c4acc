//! Test fixture `hostile-sh`: the `hostile` worker kind (the same source)
//! requesting `sh`, so that it can plant links in its scratch directory
//! (`$TMPDIR`) before asking the host to write there.

const KIND: &str = "hostile-sh";
const PROGRAMS: &[&str] = &["sh"];

#[path = "../../hostile/src/worker.rs"]
mod worker;
