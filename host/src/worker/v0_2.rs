//! `baa:worker@0.2.0` (`wit/released/0.2.0`, the version new kinds build
//! against): its bindings, the shared host interfaces expanded on its
//! types, and its typed denial records.

use crate::capabilities::subprocess::DenialReason as Reason;

wasmtime::component::bindgen!({
    path: "../wit/released/0.2.0",
    world: "worker",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "baa:worker/subprocess.process": crate::capabilities::subprocess::ProcessHandle,
    },
});

super::interfaces::interfaces!();

/// A refusal as 0.2 reports it: a typed denial (reason, message, what the
/// operator could grant).
fn spawn_error(e: sub::SpawnError) -> SpawnError {
    use subprocess::{Denial, DenialReason};
    match e {
        sub::SpawnError::Denied(denial) => SpawnError::Denied(Denial {
            reason: match denial.reason {
                Reason::Program => DenialReason::Program,
                Reason::Argument => DenialReason::Argument,
                Reason::Environment => DenialReason::Environment,
                Reason::InsideWorktree => DenialReason::InsideWorktree,
                Reason::Cwd => DenialReason::Cwd,
                Reason::Size => DenialReason::Size,
                Reason::ProcessLimit => DenialReason::ProcessLimit,
                Reason::TimeUp => DenialReason::TimeUp,
                Reason::Confinement => DenialReason::Confinement,
            },
            message: denial.message,
            operator_can_grant: denial.grant,
        }),
        sub::SpawnError::Io(why) => SpawnError::Io(why),
    }
}
