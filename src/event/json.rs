//! Plain JSON events (the Pillarbox Event Dispatcher's API).
//!
//! Any JSON value is a valid payload and is broadcast as posted. When the
//! value is an object, its top-level string fields `device`, `type` and
//! `source` are routing hints (a client that cannot set query parameters or
//! headers can still route its events); fields of other types are ignored.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

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

/// Checks that `body` is one JSON value and reads its routing hints.
pub fn parse(body: &[u8]) -> Result<JsonHints, serde_json::Error> {
    // One pass validates the whole text (including UTF-8) without building a tree.
    let raw: &serde_json::value::RawValue = serde_json::from_slice(body)?;
    if raw.get().starts_with('{') {
        return serde_json::from_str::<Hints>(raw.get()).map(|h| h.0);
    }
    Ok(JsonHints::default())
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
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeString(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<MaybeString, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeString(None))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Visitor<'de> for HintsVisitor {
    type Value = Hints;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Hints, A::Error> {
        let mut hints = JsonHints::default();
        while let Some(key) = a.next_key::<std::borrow::Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "device" => &mut hints.device,
                "type" => &mut hints.event_type,
                "source" => &mut hints.source,
                _ => {
                    a.next_value::<IgnoredAny>()?;
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

    #[test]
    fn malformed_json_and_bad_utf8_are_errors() {
        for bad in [&b"{"[..], b"", b"{\"a\":1} x", b"\"\xff\"", b"{'a':1}"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
