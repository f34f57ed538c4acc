//! Test fixture: a component that does not export `worker-executor`.

wit_bindgen::generate!({
    inline: "
        package test:missing-export;
        world plugin {
            export run: func() -> u32;
        }
    ",
});

struct Nothing;

impl Guest for Nothing {
    fn run() -> u32 {
        0
    }
}

export!(Nothing);
