//! Test fixture `redteam`: a hostile worker kind written straight against
//! the WIT (no SDK) that requests nothing; its operations are in `worker.rs`.

const KIND: &str = "redteam";
const PROGRAMS: &[&str] = &[];

mod worker;
