//! Test fixture `redteam-git`: the `redteam` kind (the same source)
//! requesting only `git`.

const KIND: &str = "redteam-git";
const PROGRAMS: &[&str] = &["git"];

#[path = "../../redteam/src/worker.rs"]
mod worker;
