//! Host bindings of the `baa:worker` WIT world (the only `bindgen!` call).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "worker",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "baa:worker/subprocess.process": crate::capabilities::subprocess::ProcessHandle,
    },
});

/// The interface version this host implements, as it appears in export names.
pub const WIT_PACKAGE: &str = "baa:worker@0.1.0";
/// The export every worker kind must provide.
pub const EXECUTOR_EXPORT: &str = "baa:worker/worker-executor@0.1.0";
