//! Test fixture `hostile`: a worker kind written straight against the WIT
//! with wit-bindgen that requests nothing (no programs, environment or
//! network) and attacks the host through its interfaces; its operations are
//! listed in `worker.rs`.

const KIND: &str = "hostile";
const PROGRAMS: &[&str] = &[];

mod worker;
