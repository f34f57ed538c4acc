//! Test fixture: a worker kind built against `baa:worker@0.9.0`, a version
//! this host does not implement. The host must refuse it naming both versions.

wit_bindgen::generate!({
    inline: "
        package baa:worker@0.9.0;
        interface worker-executor {
            describe: func() -> string;
        }
        world worker {
            export worker-executor;
        }
    ",
});

struct Future;

impl exports::baa::worker::worker_executor::Guest for Future {
    fn describe() -> String {
        "wrong-version".into()
    }
}

export!(Future);
