//! The SSE wire encoder.
//!
//! Every byte a subscriber receives is built here, so this is where framing
//! safety lives: payload text is split on every line ending the SSE spec
//! knows (`\r\n`, `\n`, `\r`) and each piece is written as its own `data:`
//! line, so no payload can end an event early or smuggle an `id:`, `event:`
//! or `retry:` field. Field values we write ourselves (ids, event names,
//! comments) are stripped of line endings for the same reason.
//!
//! A stream's bytes can also be built with their HTTP/1.1 chunk framing
//! ([`Transfer::Chunked`]): the lean HTTP/1.1 path then writes each piece
//! with one plain `send`, where framing it there would take a formatted
//! size line and a three-part `writev` per delivery (measured: about a
//! fifth of a delivery's user-space instructions, and `writev` costs the
//! kernel more than `send`). A [`Piece`] keeps room in front for the size
//! line, so framing costs no second copy.

use bytes::{BufMut, Bytes, BytesMut};

/// How a stream's bytes travel: as they are, or as HTTP/1.1 chunks
/// (`<hex size>\r\n<bytes>\r\n`) that the connection writes unchanged.
///
/// It is also the request extension with which the lean HTTP/1.1 path asks
/// `GET /events` for chunks, and the response extension with which the
/// handler says it made them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transfer {
    /// SSE bytes only (hyper, or a close-delimited HTTP/1.0 body).
    #[default]
    Plain,
    /// Each piece framed as one HTTP/1.1 chunk.
    Chunked,
}

/// Room kept in front of a piece for its chunk-size line: up to 16 hex
/// digits and CRLF.
const SIZE_LINE_ROOM: usize = 18;

/// A piece of a stream being built, with room in front for its chunk-size
/// line and behind for the chunk's CRLF.
#[derive(Debug)]
pub struct Piece(BytesMut);

impl Piece {
    /// An empty piece with room for `capacity` bytes of stream.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(SIZE_LINE_ROOM + capacity + 2);
        buf.put_bytes(0, SIZE_LINE_ROOM);
        Self(buf)
    }

    /// Appends stream bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// Stream bytes so far.
    pub fn len(&self) -> usize {
        self.0.len() - SIZE_LINE_ROOM
    }

    /// Whether no stream bytes were added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The piece as it travels. An empty piece stays empty: an empty chunk
    /// would end the body.
    pub fn finish(self, transfer: Transfer) -> Bytes {
        let (chunk, plain) = self.finish_both();
        match transfer {
            Transfer::Plain => plain,
            Transfer::Chunked => chunk,
        }
    }

    /// Both forms of the piece, sharing one buffer: (chunked, plain).
    pub fn finish_both(mut self) -> (Bytes, Bytes) {
        let len = self.len();
        if len == 0 {
            return (Bytes::new(), Bytes::new());
        }
        // The size line, written backwards from the end of the room.
        let mut start = SIZE_LINE_ROOM - 2;
        self.0[start..SIZE_LINE_ROOM].copy_from_slice(b"\r\n");
        let mut n = len;
        loop {
            start -= 1;
            self.0[start] = b"0123456789abcdef"[n & 0xf];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        self.0.extend_from_slice(b"\r\n");
        let all = self.0.freeze();
        let plain = all.slice(SIZE_LINE_ROOM..SIZE_LINE_ROOM + len);
        (all.slice(start..), plain)
    }
}

/// The heartbeat comment, as it travels (built once).
pub fn heartbeat(transfer: Transfer) -> Bytes {
    const PLAIN: &[u8] = b": keep-alive\n";
    const CHUNKED: &[u8] = b"d\r\n: keep-alive\n\r\n";
    Bytes::from_static(match transfer {
        Transfer::Plain => PLAIN,
        Transfer::Chunked => CHUNKED,
    })
}

/// Encodes one event: optional `id:` and `event:` fields, then the data.
pub fn event(id: Option<&str>, name: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    put_event(&mut out, id, name, data);
    out.freeze()
}

/// Encodes one event into a [`Piece`] of its own.
pub fn event_piece(id: Option<&str>, name: Option<&str>, data: &[u8]) -> Piece {
    let mut piece = Piece::with_capacity(data.len() + 32);
    put_event(&mut piece.0, id, name, data);
    piece
}

fn put_event(out: &mut BytesMut, id: Option<&str>, name: Option<&str>, data: &[u8]) {
    if let Some(id) = id {
        put_field(out, b"id: ", id.as_bytes());
    }
    if let Some(name) = name {
        put_field(out, b"event: ", name.as_bytes());
    }
    put_data(out, data);
    out.put_u8(b'\n');
}

/// A comment line, ignored by clients (heartbeats are [`heartbeat`]'s
/// pre-built bytes).
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

    /// Reads `bytes` as HTTP/1.1 chunks, the way a client does, and
    /// returns the body they carry.
    fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        while !bytes.is_empty() {
            let eol = bytes
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("size line");
            let size = usize::from_str_radix(std::str::from_utf8(&bytes[..eol]).unwrap(), 16)
                .expect("hex size");
            assert!(size > 0, "an empty chunk would end the body");
            let data = &bytes[eol + 2..];
            body.extend_from_slice(&data[..size]);
            assert_eq!(&data[size..size + 2], b"\r\n");
            bytes = &data[size + 2..];
        }
        body
    }

    #[test]
    fn a_piece_is_one_chunk_or_its_plain_bytes() {
        for len in [1usize, 15, 16, 255, 256, 4096, 70_000] {
            let content = vec![b'x'; len];
            let mut piece = Piece::with_capacity(0);
            piece.extend(&content);
            assert_eq!(piece.len(), len);
            let (chunk, plain) = piece.finish_both();
            assert_eq!(plain, content);
            assert!(chunk.starts_with(format!("{len:x}\r\n").as_bytes()));
            assert_eq!(dechunk(&chunk), content);
        }
        assert!(Piece::with_capacity(8).finish(Transfer::Chunked).is_empty());
        let frame = event_piece(Some("1"), Some("n"), b"a\nb");
        assert_eq!(
            frame.finish(Transfer::Plain),
            event(Some("1"), Some("n"), b"a\nb")
        );
    }

    #[test]
    fn the_heartbeat_is_the_keep_alive_comment_in_either_form() {
        assert_eq!(heartbeat(Transfer::Plain), comment("keep-alive"));
        assert_eq!(
            dechunk(&heartbeat(Transfer::Chunked)),
            &comment("keep-alive")[..]
        );
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
