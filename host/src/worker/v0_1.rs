//! `baa:worker@0.1.0`, frozen in `wit/released/0.1.0` and kept running as
//! Zed keeps its `since_vX` modules: the shared host interfaces expanded on
//! its types. It differs from 0.2 only in how a refusal reads
//! (`denied(string)`, and `invalid-cwd(string)` for a bad cwd).

use crate::capabilities::subprocess::DenialReason;

wasmtime::component::bindgen!({
    path: "../wit/released/0.1.0",
    world: "worker",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "baa:worker/subprocess.process": crate::capabilities::subprocess::ProcessHandle,
    },
});

super::interfaces::interfaces!();

/// A refusal as 0.1 reports it: a string.
fn spawn_error(e: sub::SpawnError) -> SpawnError {
    match e {
        sub::SpawnError::Denied(d) if d.reason == DenialReason::Cwd => {
            SpawnError::InvalidCwd(d.message)
        }
        sub::SpawnError::Denied(d) => SpawnError::Denied(d.message),
        sub::SpawnError::Io(why) => SpawnError::Io(why),
    }
}
