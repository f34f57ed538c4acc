//! Fault injection for crash tests: with the `fault-injection` feature, the
//! process SIGKILLs itself at the point named by `BAA_FAULT_POINT` (read once)
//! or by `arm`, and a host function panics when a worker emits the event
//! [`HOST_PANIC_EVENT`]. Without the feature, both compile to nothing.

#[cfg(feature = "fault-injection")]
static ARMED: std::sync::Mutex<Option<Option<String>>> = std::sync::Mutex::new(None);

/// Kill the process at `name` from now on (tests only).
#[cfg(feature = "fault-injection")]
pub fn arm(name: &str) {
    *ARMED.lock().unwrap_or_else(|p| p.into_inner()) = Some(Some(name.to_string()));
}

/// A named point where a test may kill the process.
#[inline]
pub fn point(name: &str) {
    #[cfg(feature = "fault-injection")]
    {
        let mut armed = ARMED.lock().unwrap_or_else(|p| p.into_inner());
        let armed = armed.get_or_insert_with(|| std::env::var("BAA_FAULT_POINT").ok());
        if armed.as_deref() == Some(name) {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = name;
}

/// The worker event that makes the host's `emit` panic (with the
/// `fault-injection` feature): a host bug, as the isolation tests need one.
pub const HOST_PANIC_EVENT: &str = "fault.host-panic";

/// Panic when `event` is [`HOST_PANIC_EVENT`] (tests only).
#[inline]
pub fn host_panic(event: &str) {
    #[cfg(feature = "fault-injection")]
    if event == HOST_PANIC_EVENT {
        panic!("injected host panic");
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = event;
}
