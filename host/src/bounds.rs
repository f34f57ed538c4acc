//! Caps on what a worker hands the host. Every string a worker passes is cut
//! (with a marker saying how much was cut) before it is copied anywhere, so
//! whatever a worker sends costs the host a small multiple of these limits.

/// A step outcome's summary.
pub const SUMMARY: usize = 8 * 1024;
/// A failure message (`execute-error`).
pub const FAILURE_MESSAGE: usize = 8 * 1024;
/// Suggested follow-ups kept from one outcome.
pub const FOLLOWUPS: usize = 16;
/// A follow-up's step name or kind.
pub const FOLLOWUP_NAME: usize = 256;
/// A follow-up's reason.
pub const FOLLOWUP_REASON: usize = 2 * 1024;
/// A kind's name or version in `describe`.
pub const KIND_NAME: usize = 64;
/// A kind's description.
pub const DESCRIPTION: usize = 1024;
/// Programs or variables a kind may request.
pub const CAPABILITY_ITEMS: usize = 64;
/// One requested program or variable name.
pub const CAPABILITY_ITEM: usize = 256;
/// An event name.
pub const EVENT_NAME: usize = 128;
/// An event message.
pub const EVENT_MESSAGE: usize = 16 * 1024;
/// An event's `data-json`.
pub const EVENT_DATA: usize = 64 * 1024;
/// An artifact's description.
pub const ARTIFACT_DESCRIPTION: usize = 1024;
/// Arguments of one subprocess.
pub const COMMAND_ARGS: usize = 4096;
/// Program, arguments, environment and cwd of one subprocess together
/// (the kernel's own limit is about 2 MiB).
pub const COMMAND_BYTES: usize = 1024 * 1024;
/// A subprocess's program or cwd (the kernel's `PATH_MAX`).
pub const PATH_BYTES: usize = 4096;
/// One argument or environment value (the kernel's `MAX_ARG_STRLEN`).
pub const ARG_BYTES: usize = 128 * 1024;
/// Bytes a worker may write to one subprocess's stdin.
pub const STDIN_BYTES: usize = 16 * 1024 * 1024;

/// `text` cut to at most `max` bytes (on a character boundary), with a
/// marker naming how many bytes were cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

/// [`cut`] for an owned string: no copy when it is short enough.
pub fn cut_owned(text: String, max: usize) -> String {
    if text.len() <= max {
        text
    } else {
        cut(&text, max)
    }
}

/// At most `max` items of `items`, each cut to `max_len`.
pub fn cut_list(items: Vec<String>, max: usize, max_len: usize) -> Vec<String> {
    items
        .into_iter()
        .take(max)
        .map(|s| cut_owned(s, max_len))
        .collect()
}
