//! The SSE wire encoder.
//!
//! Every byte a subscriber receives is built here, so this is where framing
//! safety lives: payload text is split on every line ending the SSE spec
//! knows (`\r\n`, `\n`, `\r`) and each piece is written as its own `data:`
//! line, so no payload can end an event early or smuggle an `id:`, `event:`
//! or `retry:` field. Field values we write ourselves (ids, event names,
//! comments) are stripped of line endings for the same reason.

use bytes::{BufMut, Bytes, BytesMut};

/// Encodes one event: optional `id:` and `event:` fields, then the data.
pub fn event(id: Option<&str>, name: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    if let Some(id) = id {
        put_field(&mut out, b"id: ", id.as_bytes());
    }
    if let Some(name) = name {
        put_field(&mut out, b"event: ", name.as_bytes());
    }
    put_data(&mut out, data);
    out.put_u8(b'\n');
    out.freeze()
}

/// A comment line, ignored by clients: used for heartbeats and notices.
/// No blank line after it: a blank line ends an event, and some clients
/// (httpx-sse) then report an empty message for a block that held only a
/// comment. By the WHATWG rules the line is skipped either way.
pub fn comment(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 3);
    put_field(&mut out, b": ", text.as_bytes());
    out.freeze()
}

/// The `retry:` field that sets the client's reconnection delay: a line of
/// its own, applied when parsed, with no blank line (a block with no data
/// dispatches nothing by the spec, but some clients report it as an empty
/// message, and some drop it unread).
pub fn retry(millis: u64) -> Bytes {
    Bytes::from(format!("retry: {millis}\n"))
}

/// Writes `prefix value\n` with any line ending in `value` replaced by a space.
fn put_field(out: &mut BytesMut, prefix: &[u8], value: &[u8]) {
    out.put_slice(prefix);
    out.extend(
        value
            .iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    out.put_u8(b'\n');
}

/// Writes one `data:` line per line of `data`, whatever its line endings.
fn put_data(out: &mut BytesMut, data: &[u8]) {
    let mut rest = data;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        let line = &rest[..end.unwrap_or(rest.len())];
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
        match end {
            None => return,
            Some(i) => {
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
}

/// How a browser reads a stream: the checker for this module's
/// guarantee, in tests and fuzzing.
#[cfg(any(test, fuzzing))]
pub mod interpret {
    /// One dispatched SSE event, as a browser's EventSource would see it.
    #[derive(Debug, Default, PartialEq, Eq)]
    pub struct Parsed {
        /// The last event id set.
        pub id: Option<String>,
        /// The `event:` name.
        pub name: Option<String>,
        /// The `data:` lines, joined with `\n`.
        pub data: String,
    }

    /// A parser written from the WHATWG "event stream interpretation" rules.
    pub fn parse_stream(text: &str) -> Vec<Parsed> {
        let mut events = Vec::new();
        let (mut data, mut name, mut id, mut has_data) = (String::new(), None, None, false);
        let normalised = text.replace("\r\n", "\n").replace('\r', "\n");
        for line in normalised.split('\n') {
            if line.is_empty() {
                if has_data {
                    if data.ends_with('\n') {
                        data.pop();
                    }
                    events.push(Parsed {
                        id: id.clone(),
                        name: name.take(),
                        data: std::mem::take(&mut data),
                    });
                }
                has_data = false;
                data.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                    has_data = true;
                }
                "event" => name = Some(value.to_owned()),
                "id" if !value.contains('\0') => id = Some(value.to_owned()),
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::interpret::parse_stream;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hostile_payload_cannot_forge_fields() {
        let payload = "{\"a\":1}\n\nid: 999\nevent: admin\r\ndata: forged\rretry: 1\n";
        let frame = event(Some("00000000000000a1"), None, payload.as_bytes());
        let parsed = parse_stream(std::str::from_utf8(&frame).unwrap());
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].id.as_deref(), Some("00000000000000a1"));
        assert_eq!(parsed[0].name, None);
        assert_eq!(
            parsed[0].data,
            "{\"a\":1}\n\nid: 999\nevent: admin\ndata: forged\nretry: 1\n"
        );
    }

    #[test]
    fn names_and_comments_cannot_break_lines() {
        let frame = event(Some("1\n2"), Some("x\r\ndata: y"), b"z");
        assert_eq!(&frame[..], b"id: 1 2\nevent: x  data: y\ndata: z\n\n");
        assert_eq!(&comment("a\nb")[..], b": a b\n");
    }

    proptest! {
        #[test]
        fn any_payload_round_trips_as_one_event(payload in "\\PC*(\r\n|\r|\n)?\\PC*(\r|\n)?", id in "[0-9a-f]{16}") {
            let frame = event(Some(&id), None, payload.as_bytes());
            let parsed = parse_stream(std::str::from_utf8(&frame).unwrap());
            prop_assert_eq!(parsed.len(), 1);
            prop_assert_eq!(parsed[0].id.as_deref(), Some(id.as_str()));
            let expected = payload.replace("\r\n", "\n").replace('\r', "\n");
            prop_assert_eq!(&parsed[0].data, &expected);
        }

        #[test]
        fn arbitrary_bytes_never_yield_more_than_one_event(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let frame = event(Some("1"), None, &payload);
            let text = String::from_utf8_lossy(&frame);
            prop_assert!(parse_stream(&text).len() <= 1);
        }
    }
}
