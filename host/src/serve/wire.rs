//! The serve protocol's wire: framing of client lines (bounded), the
//! messages each way, and output chunks as text without cutting a UTF-8
//! character in two. Shared by the local and the cluster back ends.

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::contracts::MAX_REQUEST_BYTES;
use crate::logs::Stream;
use crate::run::{StepEvent, StepEventBody};

/// What a client sends.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub(super) enum Incoming {
    Run { id: String, request: Box<Value> },
    Cancel { id: String },
}

/// A client's line as a message; when it is not one, the error and the
/// line's `id` if it has one (so the client learns which message failed).
pub(super) fn parse_message(line: &[u8]) -> Result<Incoming, (Option<String>, serde_json::Error)> {
    let value: Value = serde_json::from_slice(line).map_err(|e| (None, e))?;
    let id = value.get("id").and_then(Value::as_str).map(str::to_owned);
    serde_json::from_value(value).map_err(|e| (id, e))
}

/// Read one line of at most [`MAX_REQUEST_BYTES`] plus the envelope.
pub(super) async fn read_line(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> Result<usize, String> {
    let limit = MAX_REQUEST_BYTES + 64 * 1024;
    loop {
        let buf = reader.fill_buf().await.map_err(|e| e.to_string())?;
        if buf.is_empty() {
            return Ok(line.len());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(end) => {
                line.extend_from_slice(&buf[..=end]);
                reader.consume(end + 1);
                return Ok(line.len());
            }
            None => {
                let n = buf.len();
                line.extend_from_slice(buf);
                reader.consume(n);
            }
        }
        if line.len() > limit {
            return Err(format!(
                "a message is longer than {limit} bytes; the connection is closed"
            ));
        }
    }
}

/// A step event as the wire protocols carry it: `type` `event` (`seq`,
/// `event`: a lifecycle entry) or `output` (`seq`, `stream`, `text`);
/// `None` for the closing event, which the result stands for.
pub(crate) fn event_json(
    event: StepEvent,
    text: &mut Utf8Chunks,
) -> Option<serde_json::Map<String, Value>> {
    let message = match event.body {
        StepEventBody::Lifecycle(entry) => {
            json!({ "type": "event", "seq": event.seq, "event": entry })
        }
        StepEventBody::Output { stream, bytes } => json!({
            "type": "output",
            "seq": event.seq,
            "stream": stream.as_str(),
            "text": text.decode(stream, &bytes),
        }),
        StepEventBody::Finished(_) => return None,
    };
    match message {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Output chunks as text. A character cut between two chunks of a stream is
/// carried over to the next chunk rather than replaced; only bytes that are
/// not UTF-8 become U+FFFD.
#[derive(Default)]
pub(crate) struct Utf8Chunks {
    carried: [Vec<u8>; 2],
}

impl Utf8Chunks {
    pub(crate) fn decode(&mut self, stream: Stream, bytes: &[u8]) -> String {
        let carried = &mut self.carried[stream as usize];
        let mut joined = std::mem::take(carried);
        joined.extend_from_slice(bytes);
        let cut = joined.len() - cut_character(&joined);
        *carried = joined.split_off(cut);
        String::from_utf8_lossy(&joined).into_owned()
    }
}

/// How many bytes at the end of `bytes` begin a UTF-8 character that the
/// next chunk completes (0 to 3).
fn cut_character(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let lead = bytes[bytes.len() - back];
        if lead & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let width = match lead {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        let tail = &bytes[bytes.len() - back..];
        let incomplete = matches!(std::str::from_utf8(tail), Err(e) if e.error_len().is_none());
        return if back < width && incomplete { back } else { 0 };
    }
    0
}

pub(crate) fn error_message(
    id: Option<&str>,
    kind: &str,
    message: &str,
    field: Option<&str>,
) -> Value {
    json!({
        "id": id,
        "type": "error",
        "error": { "kind": kind, "message": message, "field": field },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_cut_between_chunks_is_carried_not_replaced() {
        let text = "é🎉x".as_bytes(); // 2 + 4 + 1 bytes
        for cut in 0..=text.len() {
            let mut chunks = Utf8Chunks::default();
            let (a, b) = text.split_at(cut);
            let joined = chunks.decode(Stream::Stdout, a) + &chunks.decode(Stream::Stdout, b);
            assert_eq!(joined, "é🎉x", "cut at {cut}");
        }
    }

    #[test]
    fn streams_carry_apart_and_invalid_bytes_are_replaced() {
        let mut chunks = Utf8Chunks::default();
        assert_eq!(chunks.decode(Stream::Stdout, &[0xF0, 0x9F]), "");
        assert_eq!(chunks.decode(Stream::Stderr, b"err"), "err");
        assert_eq!(chunks.decode(Stream::Stdout, &[0x8E, 0x89]), "🎉");
        // Not UTF-8 at all: replaced at once, never carried.
        assert_eq!(chunks.decode(Stream::Stdout, &[b'a', 0xFF]), "a\u{FFFD}");
        assert_eq!(cut_character(&[b'a', 0xE0, 0x80]), 0); // E0 80 can begin nothing
        assert_eq!(cut_character(&[0xE2, 0x82]), 2);
    }

    #[test]
    fn a_message_that_fails_names_its_id_when_it_has_one() {
        let (id, _) = parse_message(br#"{"op":"launch","id":"s7"}"#)
            .err()
            .unwrap();
        assert_eq!(id.as_deref(), Some("s7"));
        let (id, _) = parse_message(br#"{"op":"run","id":"s8","request":"\ud83c"}"#)
            .err()
            .unwrap();
        assert_eq!(id, None, "a line that is not JSON has no id to name");
        assert!(matches!(
            parse_message(br#"{"op":"cancel","id":"s9"}"#),
            Ok(Incoming::Cancel { id }) if id == "s9"
        ));
    }
}
