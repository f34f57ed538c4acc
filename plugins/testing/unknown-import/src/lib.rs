//! Test fixture: a worker kind that imports an interface the host does not
//! provide (`baa:worker/secrets`). The host must refuse to link it.

wit_bindgen::generate!({
    inline: "
        package baa:worker@0.1.0;
        interface secrets {
            read-secret: func(name: string) -> string;
        }
        interface worker-executor {
            describe: func() -> string;
        }
        world worker {
            import secrets;
            export worker-executor;
        }
    ",
});

struct Greedy;

impl exports::baa::worker::worker_executor::Guest for Greedy {
    fn describe() -> String {
        baa::worker::secrets::read_secret("host-token")
    }
}

export!(Greedy);
