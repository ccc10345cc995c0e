//! Plain JSON events (the Pillarbox Event Dispatcher's API).
//!
//! Any JSON value is a valid payload and is broadcast as posted. When the
//! value is an object, its top-level string fields `device`, `type` and
//! `source` are routing hints (a client that cannot set query parameters or
//! headers can still route its events); fields of other types are ignored.
//!
//! A payload is checked whole before it is accepted: nesting at most the
//! configured depth (a scan without recursion, so 100,000 `[` cost a
//! pass, not a stack), and every value representable (a number past f64
//! range, or a lone UTF-16 surrogate, is refused: a schema or CEL filter
//! must never see it as something else). It is then kept minified,
//! without insignificant whitespace but with key order and number text as
//! posted, so a megabyte of newlines costs nothing and every event is one
//! `data:` line.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Default deepest nesting of arrays and objects.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Why a JSON payload was refused (all 400s).
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Not JSON, or more than one value.
    #[error("malformed JSON: {0}")]
    Malformed(serde_json::Error),
    /// JSON, but with a value no consumer can represent.
    #[error("the payload cannot be represented: {0}")]
    Unrepresentable(serde_json::Error),
    /// Nested deeper than allowed.
    #[error("JSON nested {depth} levels deep; at most {max} are allowed (--max-json-depth)")]
    TooDeep {
        /// How deep it got before the scan stopped.
        depth: usize,
        /// The limit.
        max: usize,
    },
}

/// A checked JSON payload.
#[derive(Debug)]
pub struct Parsed {
    /// Routing hints from a top-level object.
    pub hints: JsonHints,
    /// The payload without insignificant whitespace.
    pub data: Bytes,
}

/// Checks `body` (one JSON value, nesting at most `max_depth`), reads its
/// routing hints and minifies it.
///
/// The payload comes back in an allocation of its own, even when `body` is
/// already minified. A request body is a slice of hyper's read buffer (and
/// an NDJSON line a slice of its whole batch): kept as such in the replay
/// ring, a 200-byte event held a buffer of kilobytes, and a one-line event
/// a megabyte batch, bytes no budget counted (the ring's 256 MiB could hold
/// gigabytes). The copy also lets hyper reuse its buffer for the next
/// request instead of allocating a new one.
pub fn parse_payload(body: &[u8], max_depth: usize) -> Result<Parsed, JsonError> {
    let shape = scan(body, max_depth)?;
    let hints = parse(body).map_err(|e| {
        let at = offset_of(body, e.line(), e.column());
        if e.is_syntax() && first_unrepresentable(body).is_some_and(|start| start <= at) {
            JsonError::Unrepresentable(e)
        } else {
            JsonError::Malformed(e)
        }
    })?;
    let data = if shape.spaces == 0 {
        Bytes::copy_from_slice(body)
    } else {
        Bytes::from(minify(body, shape.spaces))
    };
    Ok(Parsed { hints, data })
}

/// The byte offset of serde_json's 1-based `line` and `column` in `body`.
fn offset_of(body: &[u8], line: usize, column: usize) -> usize {
    let line_start = body
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(line.saturating_sub(2))
        .map_or(0, |(i, _)| i + 1);
    if line <= 1 {
        column
    } else {
        line_start + column
    }
}

/// Where the first value no consumer can represent starts: a number past
/// f64 range, or a `\u` escape that is a lone UTF-16 surrogate.
///
/// serde_json tells its errors apart no finer than "syntax" (its codes
/// are private), and its message text is no contract; so the cause of a
/// refused body is found in the body itself. A parser that reads left to
/// right stops at the first such value (where it ends), so when one starts
/// at or before the error's position, that value is why. Run only on a
/// refused body: it costs one more pass, on the error path alone.
fn first_unrepresentable(body: &[u8]) -> Option<usize> {
    let hex4 = |at: usize| -> Option<u16> {
        let digits = std::str::from_utf8(body.get(at..at + 4)?).ok()?;
        u16::from_str_radix(digits, 16).ok()
    };
    let low = |unit: u16| (0xDC00..=0xDFFF).contains(&unit);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                i += 1;
                while i < body.len() && body[i] != b'"' {
                    if body[i] != b'\\' {
                        i += 1;
                        continue;
                    }
                    if body.get(i + 1) != Some(&b'u') {
                        i += 2;
                        continue;
                    }
                    // A malformed escape stops the parser first.
                    let unit = hex4(i + 2)?;
                    let start = i;
                    i += 6;
                    if low(unit) {
                        return Some(start);
                    }
                    if (0xD800..=0xDBFF).contains(&unit) {
                        let paired = body.get(i) == Some(&b'\\')
                            && body.get(i + 1) == Some(&b'u')
                            && hex4(i + 2).is_some_and(low);
                        if !paired {
                            return Some(start);
                        }
                        i += 6;
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while body
                    .get(i)
                    .is_some_and(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                {
                    i += 1;
                }
                let finite = std::str::from_utf8(&body[start..i])
                    .ok()
                    .and_then(|t| t.parse::<f64>().ok())
                    .is_none_or(f64::is_finite);
                if !finite {
                    return Some(start);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The non-blank lines of an NDJSON body, numbered from 1, each without
/// its `\n` or `\r\n`, as slices of `body` (no copy).
pub fn split_lines(body: &Bytes) -> Vec<(usize, Bytes)> {
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .map(|(i, l)| (i, body.slice_ref(l)))
        .collect()
}

/// Refuses text nested deeper than `max_depth` (one pass, no recursion).
pub fn check_depth(body: &[u8], max_depth: usize) -> Result<(), JsonError> {
    scan(body, max_depth).map(|_| ())
}

/// What one pass over the text found.
struct Shape {
    /// Insignificant whitespace bytes.
    spaces: usize,
}

/// Whether a byte of JSON text is inside a string, byte by byte.
#[derive(Default)]
struct Strings {
    inside: bool,
    escaped: bool,
}

impl Strings {
    /// Takes the next byte; `true` when it is outside every string (quotes
    /// count as inside).
    fn outside(&mut self, b: u8) -> bool {
        if self.inside {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.inside = false;
            }
            false
        } else if b == b'"' {
            self.inside = true;
            false
        } else {
            true
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Depth and insignificant whitespace, in one pass without recursion.
/// Inside a string only `"` and `\\` matter, so the scan jumps to the
/// next of them (`memchr2`, many bytes per step) instead of stepping a
/// state machine through every byte of every string.
fn scan(body: &[u8], max_depth: usize) -> Result<Shape, JsonError> {
    let (mut depth, mut spaces) = (0usize, 0usize);
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        i += 1;
        match b {
            b'"' => loop {
                // Inside a string: to its closing quote, past escapes.
                let rest = body.get(i..).unwrap_or_default();
                match memchr::memchr2(b'"', b'\\', rest) {
                    None => return Ok(Shape { spaces }), // unterminated: serde says so
                    Some(at) if body[i + at] == b'\\' => i += at + 2,
                    Some(at) => {
                        i += at + 1;
                        break;
                    }
                }
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(JsonError::TooDeep {
                        depth,
                        max: max_depth,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b if is_space(b) => spaces += 1,
            _ => {}
        }
    }
    Ok(Shape { spaces })
}

/// `body` without whitespace outside strings (it was checked to be JSON).
fn minify(body: &[u8], spaces: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() - spaces);
    let mut strings = Strings::default();
    out.extend(
        body.iter()
            .copied()
            .filter(|&b| !(strings.outside(b) && is_space(b))),
    );
    out
}

/// Any JSON value, read in full (every number and string decoded, so
/// unrepresentable ones fail) and kept as nothing.
struct Valid;

impl<'de> Deserialize<'de> for Valid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Valid;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Valid, A::Error> {
                while a.next_element::<Valid>()?.is_some() {}
                Ok(Valid)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Valid, A::Error> {
                while a.next_entry::<Valid, Valid>()?.is_some() {}
                Ok(Valid)
            }
        }
        d.deserialize_any(V)
    }
}

/// Routing hints found in a JSON object's top-level fields.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JsonHints {
    /// `device`, when a string.
    pub device: Option<String>,
    /// `type`, when a string.
    pub event_type: Option<String>,
    /// `source`, when a string.
    pub source: Option<String>,
}

/// Checks that `body` is one representable JSON value and reads its
/// routing hints, without building a tree. Callers bound its depth first
/// (serde_json's own limit, 128, is the backstop).
pub fn parse(body: &[u8]) -> Result<JsonHints, serde_json::Error> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        return serde_json::from_slice::<Hints>(body).map(|h| h.0);
    }
    serde_json::from_slice::<Valid>(body).map(|_| JsonHints::default())
}

struct Hints(JsonHints);

impl<'de> Deserialize<'de> for Hints {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(HintsVisitor)
    }
}

struct HintsVisitor;

/// A value that is kept when it is a string and skipped otherwise.
struct MaybeString(Option<String>);

impl<'de> Deserialize<'de> for MaybeString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MaybeString, E> {
                Ok(MaybeString(Some(v.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<MaybeString, A::Error> {
                while a.next_element::<Valid>()?.is_some() {}
                Ok(MaybeString(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<MaybeString, A::Error> {
                while a.next_entry::<Valid, Valid>()?.is_some() {}
                Ok(MaybeString(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A top-level key, compared where it lies: a key is not copied to be
/// read (`Cow<str>` would be, for every key of every event).
enum HintKey {
    Device,
    Type,
    Source,
    Other,
}

impl<'de> Deserialize<'de> for HintKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HintKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HintKey, E> {
                Ok(match v {
                    "device" => HintKey::Device,
                    "type" => HintKey::Type,
                    "source" => HintKey::Source,
                    _ => HintKey::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Visitor<'de> for HintsVisitor {
    type Value = Hints;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Hints, A::Error> {
        let mut hints = JsonHints::default();
        while let Some(key) = a.next_key::<HintKey>()? {
            let slot = match key {
                HintKey::Device => &mut hints.device,
                HintKey::Type => &mut hints.event_type,
                HintKey::Source => &mut hints.source,
                HintKey::Other => {
                    a.next_value::<Valid>()?;
                    continue;
                }
            };
            *slot = a.next_value::<MaybeString>()?.0;
        }
        Ok(Hints(hints))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-by-byte scan that [`scan`] replaced: the reference.
    fn scan_bytewise(body: &[u8], max_depth: usize) -> Result<usize, usize> {
        let (mut depth, mut spaces) = (0usize, 0usize);
        let mut strings = Strings::default();
        for &b in body {
            if !strings.outside(b) {
                continue;
            }
            match b {
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max_depth {
                        return Err(depth);
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                b if is_space(b) => spaces += 1,
                _ => {}
            }
        }
        Ok(spaces)
    }

    proptest::proptest! {
        #[test]
        fn the_jumping_scan_agrees_with_the_bytewise_one(
            text in proptest::collection::vec(proptest::sample::select(b"{}[]\"\\ \tax:,".to_vec()), 0..200),
            max in 0usize..6,
        ) {
            let fast = match scan(&text, max) {
                Ok(shape) => Ok(shape.spaces),
                Err(JsonError::TooDeep { depth, .. }) => Err(depth),
                Err(e) => panic!("{e}"),
            };
            let slow = scan_bytewise(&text, max);
            proptest::prop_assert_eq!(fast, slow);
        }
    }

    #[test]
    fn any_value_is_accepted() {
        for ok in [
            &b"1"[..],
            b"\"s\"",
            b"[1,2]",
            b"null",
            b"{}",
            b" {\"msg\":\"data\"} ",
        ] {
            assert_eq!(parse(ok).unwrap(), JsonHints::default());
        }
    }

    #[test]
    fn string_hints_are_read_and_others_ignored() {
        let h = parse(
            br#"{"device":"mac:112233445566","type":"online","source":7,"x":{"device":"no"}}"#,
        )
        .unwrap();
        assert_eq!(h.device.as_deref(), Some("mac:112233445566"));
        assert_eq!(h.event_type.as_deref(), Some("online"));
        assert_eq!(h.source, None);
    }

    fn payload(body: &[u8]) -> Result<Parsed, JsonError> {
        parse_payload(body, DEFAULT_MAX_DEPTH)
    }

    #[test]
    fn depth_is_limited_without_recursion() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        let e = payload(deep.as_bytes()).unwrap_err();
        assert!(
            matches!(e, JsonError::TooDeep { depth: 65, max: 64 }),
            "{e}"
        );
        let ok = "[".repeat(64) + &"]".repeat(64);
        assert!(payload(ok.as_bytes()).is_ok());
        // Brackets inside strings do not count.
        let s = format!("\"{}\"", "[".repeat(100));
        assert!(payload(s.as_bytes()).is_ok());
    }

    #[test]
    fn unrepresentable_values_are_refused() {
        for bad in [
            &br#"{"a":1e400}"#[..],
            br#"["\ud800"]"#,
            br#"{"device":"\udc00x"}"#,
            b"-1e309",
            b"[1,\n 2,\n \"\\ud800\\u0041\"]",
            br#"{"k":"\ud800\n"}"#,
        ] {
            let e = payload(bad).unwrap_err();
            assert!(matches!(e, JsonError::Unrepresentable(_)), "{bad:?}: {e}");
        }
        // What is malformed before (or instead of) an unrepresentable value
        // is malformed, whatever serde_json's message says.
        for bad in [
            &br#"[tru, 1e400]"#[..],
            b"[1,\n 2 3,\n \"\\udc00\"]",
            br#"["\u12"]"#,
            br#"["\ud83d\ude00" "x"]"#,
        ] {
            let e = payload(bad).unwrap_err();
            assert!(matches!(e, JsonError::Malformed(_)), "{bad:?}: {e}");
        }
        assert!(payload(br#"["\ud83d\ude00", 1e308]"#).is_ok());
    }

    #[test]
    fn whitespace_is_dropped_but_strings_keys_and_numbers_are_kept() {
        let body = "1".to_owned() + &"\n".repeat(1 << 20);
        let p = payload(body.as_bytes()).unwrap();
        assert_eq!(&p.data[..], b"1");
        let p = payload(b" { \"z\" : [ 1.50 , \"a b\\\" \\n\" ] ,\r\n \"a\":1E2 }\n").unwrap();
        assert_eq!(
            std::str::from_utf8(&p.data).unwrap(),
            r#"{"z":[1.50,"a b\" \n"],"a":1E2}"#
        );
    }

    #[test]
    fn the_payload_never_holds_the_body_it_came_from() {
        // Already minified, and a line inside a larger buffer (a request
        // body, an NDJSON batch): the bytes kept are a copy, not a view
        // that would keep the whole buffer alive.
        let batch = Bytes::from(format!("{}\n{}", r#"{"a":1}"#, "x".repeat(4096)));
        let line = batch.slice(..7);
        let p = parse_payload(&line, 64).unwrap();
        assert_eq!(&p.data[..], br#"{"a":1}"#);
        assert!(!batch.as_ptr_range().contains(&p.data.as_ptr()));
    }

    #[test]
    fn malformed_json_and_bad_utf8_are_errors() {
        for bad in [&b"{"[..], b"", b"{\"a\":1} x", b"\"\xff\"", b"{'a':1}"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
