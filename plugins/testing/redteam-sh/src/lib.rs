//! Test fixture `redteam-sh`: the `redteam` kind (the same source)
//! requesting only `sh`.

const KIND: &str = "redteam-sh";
const PROGRAMS: &[&str] = &["sh"];

#[path = "../../redteam/src/worker.rs"]
mod worker;
