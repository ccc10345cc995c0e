//! xmidt WRP messages: decoding (msgpack and JSON), validation, encoding.
//!
//! Decoding follows wrp-go v5: keys in any order, unknown keys skipped, any
//! integer width, `nil` for `status`/`rdr`, `payload` only as msgpack `bin`
//! (base64 in JSON), every string valid UTF-8. Validation then applies v5's
//! per-type field table. Encoding reproduces wrp-go's bytes exactly (key
//! order, omission rules, smallest *signed* integer form; Go's JSON escaping),
//! so that what we forward is what an xmidt consumer expects.
//!
//! Errors are split the way an HTTP client needs them: [`WrpError::Decode`]
//! is malformed input (400), [`WrpError::Invalid`] is a well-formed message
//! that breaks a WRP rule (422).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::device::{DeviceId, Locator};

/// WRP message types that can appear on the wire (codes 2 to 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// 2
    Authorization,
    /// 3
    SimpleRequestResponse,
    /// 4: the only type Caduceus ingests.
    SimpleEvent,
    /// 5
    Create,
    /// 6
    Retrieve,
    /// 7
    Update,
    /// 8
    Delete,
    /// 9
    ServiceRegistration,
    /// 10
    ServiceAlive,
    /// 11
    Unknown,
}

impl MessageType {
    /// Maps the wire code; 0, 1 and 12+ are invalid.
    /// The fields this type may carry, and the ones it must (wrp-go v5).
    pub fn fields(self) -> (&'static [&'static str], &'static [&'static str]) {
        use MessageType::*;
        const CRUD: &[&str] = &[
            "source",
            "dest",
            "transaction_uuid",
            "content_type",
            "accept",
            "status",
            "rdr",
            "headers",
            "metadata",
            "path",
            "payload",
            "partner_ids",
            "session_id",
            "qos",
        ];
        match self {
            Authorization => (&["status"], &["status"]),
            SimpleRequestResponse => (
                &[
                    "source",
                    "dest",
                    "transaction_uuid",
                    "content_type",
                    "accept",
                    "status",
                    "rdr",
                    "headers",
                    "metadata",
                    "payload",
                    "partner_ids",
                    "session_id",
                    "qos",
                ],
                &["source", "dest", "transaction_uuid"],
            ),
            SimpleEvent => (
                &[
                    "source",
                    "dest",
                    "transaction_uuid",
                    "content_type",
                    "rdr",
                    "headers",
                    "metadata",
                    "payload",
                    "partner_ids",
                    "session_id",
                    "qos",
                ],
                &["source", "dest"],
            ),
            Create | Retrieve | Update | Delete => (CRUD, &["source", "dest", "transaction_uuid"]),
            ServiceRegistration => (&["service_name", "url"], &["service_name", "url"]),
            ServiceAlive | Unknown => (&[], &[]),
        }
    }

    /// The type with this `msg_type` code.
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            2 => Self::Authorization,
            3 => Self::SimpleRequestResponse,
            4 => Self::SimpleEvent,
            5 => Self::Create,
            6 => Self::Retrieve,
            7 => Self::Update,
            8 => Self::Delete,
            9 => Self::ServiceRegistration,
            10 => Self::ServiceAlive,
            11 => Self::Unknown,
            _ => return None,
        })
    }

    /// wrp-go's friendly name (also the header form's value).
    pub fn friendly_name(self) -> &'static str {
        match self {
            Self::Authorization => "Authorization",
            Self::SimpleRequestResponse => "SimpleRequestResponse",
            Self::SimpleEvent => "SimpleEvent",
            Self::Create => "Create",
            Self::Retrieve => "Retrieve",
            Self::Update => "Update",
            Self::Delete => "Delete",
            Self::ServiceRegistration => "ServiceRegistration",
            Self::ServiceAlive => "ServiceAlive",
            Self::Unknown => "Unknown",
        }
    }
}

/// One WRP message, field for field as on the wire. Optional collections keep
/// the difference between absent and present-but-empty, which the msgpack
/// encoding preserves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Message {
    /// Raw type code; see [`MessageType`].
    pub msg_type: i64,
    /// Locator of the sender.
    pub source: String,
    /// Locator of the target; `event:<type>/...` for events.
    pub dest: String,
    /// Correlation id.
    pub transaction_uuid: String,
    /// Media type of `payload`.
    pub content_type: String,
    /// Media type wanted in the reply.
    pub accept: String,
    /// Response status.
    pub status: Option<i64>,
    /// Request delivery response.
    pub rdr: Option<i64>,
    /// Opaque header lines.
    pub headers: Option<Vec<String>>,
    /// Metadata such as `/boot-time`.
    pub metadata: Option<BTreeMap<String, String>>,
    /// CRUD target path.
    pub path: String,
    /// The body, its format given by `content_type`.
    #[serde(deserialize_with = "payload_field")]
    pub payload: Option<Vec<u8>>,
    /// ServiceRegistration only.
    pub service_name: String,
    /// ServiceRegistration only.
    pub url: String,
    /// Tenants the message belongs to.
    pub partner_ids: Option<Vec<String>>,
    /// Device connection session.
    pub session_id: String,
    /// Quality of service, 0..=99.
    pub qos: i64,
}

/// Why a WRP body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WrpError {
    /// Not a decodable message (bad msgpack/JSON, wrong value types, bad UTF-8).
    #[error("{0}")]
    Decode(String),
    /// Decoded, but breaks a WRP rule.
    #[error("{0}")]
    Invalid(String),
}

/// The routing facts the gateway takes from a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// The device the message is about.
    pub device: Option<DeviceId>,
    /// The event type (`device-status` in `event:device-status/...`), or the
    /// message type's friendly name for non-events.
    pub event_type: String,
}

impl Message {
    /// Decodes and validates a msgpack-encoded message (default depth).
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, WrpError> {
        Self::from_msgpack_within(bytes, crate::event::json::DEFAULT_MAX_DEPTH)
    }

    /// Decodes and validates a msgpack-encoded message nested at most
    /// `max_depth` deep. Bytes after the message are an error, as
    /// trailing text after a JSON value is.
    pub fn from_msgpack_within(bytes: &[u8], max_depth: usize) -> Result<Self, WrpError> {
        if bytes.is_empty() {
            return Err(WrpError::Decode("the body is empty".into()));
        }
        let mut rest = bytes;
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        de.set_max_depth(max_depth);
        let msg = Message::deserialize(&mut de).map_err(|e| decode_error(&e, max_depth))?;
        drop(de);
        if !rest.is_empty() {
            return Err(WrpError::Decode(format!(
                "{} bytes follow the WRP message; send one message per request",
                rest.len()
            )));
        }
        msg.validate()?;
        Ok(msg)
    }

    /// Decodes and validates a JSON-encoded message (default depth).
    pub fn from_json(bytes: &[u8]) -> Result<Self, WrpError> {
        Self::from_json_within(bytes, crate::event::json::DEFAULT_MAX_DEPTH)
    }

    /// Decodes and validates a JSON-encoded message nested at most
    /// `max_depth` deep.
    pub fn from_json_within(bytes: &[u8], max_depth: usize) -> Result<Self, WrpError> {
        crate::event::json::check_depth(bytes, max_depth)
            .map_err(|e| WrpError::Decode(e.to_string()))?;
        let msg: Message = serde_json::from_slice(bytes)
            .map_err(|e| WrpError::Decode(format!("malformed WRP JSON: {e}")))?;
        msg.validate()?;
        Ok(msg)
    }

    /// The message type, if the code is a valid one.
    pub fn message_type(&self) -> Option<MessageType> {
        MessageType::from_code(self.msg_type)
    }

    /// Applies wrp-go v5's validation: a known type, required fields present,
    /// unsupported fields absent, locators and qos in range.
    pub fn validate(&self) -> Result<(), WrpError> {
        use MessageType::*;
        let ty = self.message_type().ok_or_else(|| {
            WrpError::Invalid(format!(
                "msg_type {} is not a WRP message type (2 to 11)",
                self.msg_type
            ))
        })?;
        if !(0..=99).contains(&self.qos) {
            return Err(WrpError::Invalid(format!(
                "qos {} is outside 0..99",
                self.qos
            )));
        }
        let present = self.present_fields();
        let (allowed, required) = ty.fields();
        if let Some(missing) = required.iter().find(|f| !present.contains(f)) {
            return Err(WrpError::Invalid(format!(
                "{} messages require {missing}",
                ty.friendly_name()
            )));
        }
        if let Some(extra) = present.iter().find(|f| !allowed.contains(f)) {
            return Err(WrpError::Invalid(format!(
                "{} messages must not carry {extra}",
                ty.friendly_name()
            )));
        }
        for (name, value) in [("source", &self.source), ("dest", &self.dest)] {
            if !value.is_empty() {
                Locator::parse(value).map_err(|e| WrpError::Invalid(format!("{name}: {e}")))?;
            }
        }
        if ty == ServiceRegistration && self.service_name.contains('/') {
            return Err(WrpError::Invalid(
                "service_name must not contain '/'".into(),
            ));
        }
        Ok(())
    }

    /// Names of the fields that are set (non-empty); `msg_type` excluded.
    fn present_fields(&self) -> Vec<&'static str> {
        FIELDS
            .iter()
            .filter(|f| **f != Field::MsgType && f.in_json(self))
            .map(|f| f.name())
            .collect()
    }

    /// Every device the message names: in its event locator
    /// (`event:<type>/<device>/...`), its source and its dest. A scoped
    /// publisher must be allowed each of them, not only the device the
    /// event is routed to (which `?device=` may override), or it could
    /// name another tenant's device to whatever matches the event path.
    pub fn named_devices(&self) -> Vec<DeviceId> {
        let dest = Locator::parse(&self.dest).ok();
        let in_path = dest
            .as_ref()
            .filter(|d| d.scheme == "event")
            .and_then(|d| d.rest)
            .and_then(|r| r.split('/').next())
            .and_then(|dev| Locator::parse(dev).ok())
            .and_then(|l| l.device_id());
        let source = Locator::parse(&self.source)
            .ok()
            .and_then(|l| l.device_id());
        let dest = dest.as_ref().and_then(Locator::device_id);
        let mut named: Vec<DeviceId> = [in_path, source, dest].into_iter().flatten().collect();
        named.dedup();
        named
    }

    /// Device and event type for routing: the device in an event locator
    /// (`event:<type>/<device>/...`), else the source's, else the dest's.
    pub fn routing(&self) -> Routing {
        let dest = Locator::parse(&self.dest).ok();
        let source = Locator::parse(&self.source).ok();
        let (mut device, mut event_type) = (None, None);
        if let Some(d) = dest.as_ref().filter(|d| d.scheme == "event") {
            event_type = Some(d.authority.to_owned()).filter(|t| !t.is_empty());
            device = d
                .rest
                .and_then(|r| r.split('/').next())
                .and_then(|dev| Locator::parse(dev).ok())
                .and_then(|l| l.device_id());
        }
        let device = device
            .take()
            .or_else(|| source.as_ref().and_then(Locator::device_id))
            .or_else(|| dest.as_ref().and_then(Locator::device_id));
        let event_type = event_type.take().unwrap_or_else(|| {
            self.message_type()
                .map_or("Invalid", MessageType::friendly_name)
                .to_owned()
        });
        Routing { device, event_type }
    }

    /// The msgpack form, byte for byte as wrp-go v5 writes it.
    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.payload.as_ref().map_or(0, Vec::len));
        let written: Vec<Field> = FIELDS.into_iter().filter(|f| f.in_msgpack(self)).collect();
        // Writing to a Vec cannot fail: the results below are infallible.
        let _ = rmp::encode::write_map_len(&mut out, written.len() as u32);
        for f in written {
            put_str(&mut out, f.name());
            match f.value(self) {
                FieldValue::Str(v) => put_str(&mut out, v),
                FieldValue::Int(v) => put_int(&mut out, v),
                FieldValue::Strs(v) => put_str_array(&mut out, v),
                FieldValue::Map(m) => {
                    let _ = rmp::encode::write_map_len(&mut out, m.len() as u32);
                    for (k, v) in m {
                        put_str(&mut out, k);
                        put_str(&mut out, v);
                    }
                }
                FieldValue::Bin(b) => {
                    let _ = rmp::encode::write_bin(&mut out, b);
                }
                FieldValue::Absent => {}
            }
        }
        out
    }

    /// The JSON form as wrp-go v5 writes it (Go `encoding/json`, without the
    /// trailing newline): omitempty everywhere but `msg_type`, base64 payload,
    /// `<`, `>`, `&`, U+2028 and U+2029 escaped.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let mut ser = serde_json::Serializer::with_formatter(&mut out, GoJsonFormatter);
        // Serialising plain strings, integers and maps cannot fail.
        let _ = JsonView(self).serialize(&mut ser);
        out
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let _ = rmp::encode::write_str(out, s);
}

fn put_str_array(out: &mut Vec<u8>, items: &[String]) {
    let _ = rmp::encode::write_array_len(out, items.len() as u32);
    for s in items {
        put_str(out, s);
    }
}

/// Writes an integer in the smallest signed form, as tinylib/msgp does
/// (200 is `d1 00 c8`, not `cc c8`).
fn put_int(out: &mut Vec<u8>, v: i64) {
    let _ = if (0..=127).contains(&v) {
        rmp::encode::write_pfix(out, v as u8).map_err(|_| ())
    } else if (-32..0).contains(&v) {
        rmp::encode::write_nfix(out, v as i8).map_err(|_| ())
    } else if let Ok(v) = i8::try_from(v) {
        rmp::encode::write_i8(out, v).map_err(|_| ())
    } else if let Ok(v) = i16::try_from(v) {
        rmp::encode::write_i16(out, v).map_err(|_| ())
    } else if let Ok(v) = i32::try_from(v) {
        rmp::encode::write_i32(out, v).map_err(|_| ())
    } else {
        rmp::encode::write_i64(out, v).map_err(|_| ())
    };
}

/// A msgpack decode error as the client's answer, told apart by the
/// decoder's error variant: its message can quote the client's own text
/// (`invalid type: string "depth"`), so words in it decide nothing.
fn decode_error(e: &rmp_serde::decode::Error, max_depth: usize) -> WrpError {
    use rmp_serde::decode::Error;
    match e {
        Error::DepthLimitExceeded => WrpError::Decode(format!(
            "WRP msgpack nested deeper than {max_depth} levels (--max-json-depth)"
        )),
        Error::Utf8Error(_) => WrpError::Decode(format!(
            "malformed WRP msgpack: {e} (every WRP string must be valid UTF-8)"
        )),
        _ => WrpError::Decode(format!("malformed WRP msgpack: {e}")),
    }
}

/// `payload` accepts only msgpack `bin` (wrp-go v5 rejects a str) or, in
/// JSON, a standard base64 string.
fn payload_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    struct Bin;
    impl<'de> Visitor<'de> for Bin {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("msgpack bin")
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
            Ok(v)
        }
    }
    if d.is_human_readable() {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t.as_bytes())
                .map_err(|e| de::Error::custom(format!("payload is not standard base64: {e}")))
        })
        .transpose()
    } else {
        d.deserialize_byte_buf(Bin).map(Some)
    }
}

/// Serialises a [`Message`] with Go's field order and omitempty rules.
struct JsonView<'a>(&'a Message);

impl Serialize for JsonView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let m = self.0;
        let mut map = s.serialize_map(None)?;
        for f in FIELDS.into_iter().filter(|f| f.in_json(m)) {
            match f.value(m) {
                FieldValue::Str(v) => map.serialize_entry(f.name(), v)?,
                FieldValue::Int(v) => map.serialize_entry(f.name(), &v)?,
                FieldValue::Strs(v) => map.serialize_entry(f.name(), v)?,
                FieldValue::Map(v) => map.serialize_entry(f.name(), v)?,
                FieldValue::Bin(v) => map.serialize_entry(
                    f.name(),
                    &base64::engine::general_purpose::STANDARD.encode(v),
                )?,
                FieldValue::Absent => {}
            }
        }
        map.end()
    }
}

/// The one table of WRP fields, in wrp-go v5's wire order: validation,
/// msgpack and JSON all walk it, so a field is named in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    MsgType,
    Source,
    Dest,
    TransactionUuid,
    ContentType,
    Accept,
    Status,
    Rdr,
    Headers,
    Metadata,
    Path,
    Payload,
    ServiceName,
    Url,
    PartnerIds,
    SessionId,
    Qos,
}

const FIELDS: [Field; 17] = [
    Field::MsgType,
    Field::Source,
    Field::Dest,
    Field::TransactionUuid,
    Field::ContentType,
    Field::Accept,
    Field::Status,
    Field::Rdr,
    Field::Headers,
    Field::Metadata,
    Field::Path,
    Field::Payload,
    Field::ServiceName,
    Field::Url,
    Field::PartnerIds,
    Field::SessionId,
    Field::Qos,
];

/// A field's value, by wire kind.
enum FieldValue<'a> {
    Str(&'a str),
    Int(i64),
    Strs(&'a [String]),
    Map(&'a BTreeMap<String, String>),
    Bin(&'a [u8]),
    Absent,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Self::MsgType => "msg_type",
            Self::Source => "source",
            Self::Dest => "dest",
            Self::TransactionUuid => "transaction_uuid",
            Self::ContentType => "content_type",
            Self::Accept => "accept",
            Self::Status => "status",
            Self::Rdr => "rdr",
            Self::Headers => "headers",
            Self::Metadata => "metadata",
            Self::Path => "path",
            Self::Payload => "payload",
            Self::ServiceName => "service_name",
            Self::Url => "url",
            Self::PartnerIds => "partner_ids",
            Self::SessionId => "session_id",
            Self::Qos => "qos",
        }
    }

    fn value(self, m: &Message) -> FieldValue<'_> {
        use FieldValue::*;
        let opt_int = |v: Option<i64>| v.map_or(Absent, Int);
        match self {
            Self::MsgType => Int(m.msg_type),
            Self::Source => Str(&m.source),
            Self::Dest => Str(&m.dest),
            Self::TransactionUuid => Str(&m.transaction_uuid),
            Self::ContentType => Str(&m.content_type),
            Self::Accept => Str(&m.accept),
            Self::Status => opt_int(m.status),
            Self::Rdr => opt_int(m.rdr),
            Self::Headers => m.headers.as_deref().map_or(Absent, Strs),
            Self::Metadata => m.metadata.as_ref().map_or(Absent, Map),
            Self::Path => Str(&m.path),
            Self::Payload => m.payload.as_deref().map_or(Absent, Bin),
            Self::ServiceName => Str(&m.service_name),
            Self::Url => Str(&m.url),
            Self::PartnerIds => m.partner_ids.as_deref().map_or(Absent, Strs),
            Self::SessionId => Str(&m.session_id),
            Self::Qos => Int(m.qos),
        }
    }

    /// Written by wrp-go's JSON (`omitempty` everywhere but `msg_type`);
    /// also what validation counts as "carried".
    fn in_json(self, m: &Message) -> bool {
        match self.value(m) {
            _ if self == Self::MsgType => true,
            FieldValue::Str(v) => !v.is_empty(),
            FieldValue::Int(v) => self != Self::Qos || v != 0,
            FieldValue::Strs(v) => !v.is_empty(),
            FieldValue::Map(v) => !v.is_empty(),
            FieldValue::Bin(v) => !v.is_empty(),
            FieldValue::Absent => false,
        }
    }

    /// Written by wrp-go's msgpack: `msg_type` and `qos` always, strings
    /// when non-empty, the rest whenever set (an empty list included).
    fn in_msgpack(self, m: &Message) -> bool {
        match self.value(m) {
            FieldValue::Str(v) => !v.is_empty(),
            FieldValue::Absent => false,
            FieldValue::Int(_) | FieldValue::Strs(_) | FieldValue::Map(_) | FieldValue::Bin(_) => {
                true
            }
        }
    }
}

/// serde_json's compact output plus Go's extra escapes inside strings.
struct GoJsonFormatter;

impl serde_json::ser::Formatter for GoJsonFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escaped = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            w.write_all(&fragment.as_bytes()[start..i])?;
            w.write_all(escaped.as_bytes())?;
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn trailing_bytes_and_deep_nesting_are_refused() {
        let ok = serde_json::json!({"msg_type": 4, "source": "dns:a", "dest": "event:x"});
        let mut bytes = rmp_serde::to_vec_named(&ok).unwrap();
        assert!(Message::from_msgpack(&bytes).is_ok());
        bytes.push(0xc0);
        let e = Message::from_msgpack(&bytes).unwrap_err();
        assert!(e.to_string().contains("1 bytes follow"), "{e}");
        let mut deep = serde_json::json!(1);
        for _ in 0..100 {
            deep = serde_json::json!([deep]);
        }
        let nested = serde_json::json!({"msg_type": 4, "source": "dns:a", "dest": "event:x",
                                        "metadata": {"k": "v"}, "x": deep});
        let e = Message::from_msgpack(&rmp_serde::to_vec_named(&nested).unwrap()).unwrap_err();
        assert!(e.to_string().contains("deeper than 64"), "{e}");
        let e = Message::from_json(nested.to_string().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("at most 64"), "{e}");
    }
    use super::*;

    /// wrp-go v5's `Example_encode` bytes.
    const WRPGO_EXAMPLE: &str = "85a86d73675f7479706504a6736f75726365a573656c663aa464657374ac6576656e743a737461747573a77061796c6f6164c40568656c6c6fa3716f7300";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn example() -> Message {
        Message {
            msg_type: 4,
            source: "self:".into(),
            dest: "event:status".into(),
            payload: Some(b"hello".to_vec()),
            ..Default::default()
        }
    }

    #[test]
    fn encodes_the_wrpgo_example_byte_for_byte() {
        assert_eq!(hex(&example().to_msgpack()), WRPGO_EXAMPLE);
        assert_eq!(
            String::from_utf8(example().to_json()).unwrap(),
            r#"{"msg_type":4,"source":"self:","dest":"event:status","payload":"aGVsbG8="}"#
        );
    }

    #[test]
    fn integers_use_the_smallest_signed_form() {
        let mut out = Vec::new();
        put_int(&mut out, 200);
        assert_eq!(out, [0xd1, 0x00, 0xc8]);
        out.clear();
        put_int(&mut out, -33);
        assert_eq!(out, [0xd0, 0xdf]);
    }

    #[test]
    fn routing_takes_device_and_type_from_the_event_locator() {
        let m = Message {
            msg_type: 4,
            source: "dns:talaria".into(),
            dest: "event:device-status/MAC:11:22:33:44:55:66/online".into(),
            ..Default::default()
        };
        let r = m.routing();
        assert_eq!(r.event_type, "device-status");
        assert_eq!(r.device.unwrap().as_str(), "mac:112233445566");
    }

    #[test]
    fn named_devices_are_every_device_in_the_locators() {
        let m = Message {
            msg_type: 4,
            source: "mac:665544332211/x".into(),
            dest: "event:node-change/MAC:11:22:33:44:55:66/online".into(),
            ..Default::default()
        };
        let named: Vec<String> = m.named_devices().iter().map(|d| d.to_string()).collect();
        assert_eq!(named, ["mac:112233445566", "mac:665544332211"]);
        let m = Message {
            source: "dns:talaria".into(),
            dest: "event:x".into(),
            ..Default::default()
        };
        assert!(m.named_devices().is_empty());
    }

    #[test]
    fn routing_falls_back_to_the_source_device() {
        let m = Message {
            msg_type: 3,
            source: "mac:112233445566/config".into(),
            dest: "dns:tr1d1um".into(),
            transaction_uuid: "t".into(),
            ..Default::default()
        };
        let r = m.routing();
        assert_eq!(r.event_type, "SimpleRequestResponse");
        assert_eq!(r.device.unwrap().as_str(), "mac:112233445566");
    }

    #[test]
    fn go_escapes() {
        let m = Message {
            msg_type: 4,
            source: "mac:112233445566".into(),
            dest: "event:x".into(),
            metadata: Some([("/n".to_string(), "a<b & c>d\u{2028}".to_string())].into()),
            ..Default::default()
        };
        let json = String::from_utf8(m.to_json()).unwrap();
        assert!(
            json.contains(r#""a\u003cb \u0026 c\u003ed\u2028""#),
            "{json}"
        );
        assert_eq!(Message::from_json(json.as_bytes()).unwrap(), m);
    }

    mod properties {
        use super::super::*;
        use proptest::collection::{btree_map, vec};
        use proptest::option;
        use proptest::prelude::*;

        /// Valid SimpleEvents with every optional field either absent or non-empty.
        fn simple_event() -> impl Strategy<Value = Message> {
            (
                "[0-9a-f]{12}",
                "[a-z-]{1,20}",
                "\\PC{0,40}",
                option::of(vec("\\PC{1,20}", 1..4)),
                option::of(btree_map("/[a-z]{1,8}", "\\PC{0,20}", 1..20)),
                option::of(vec(any::<u8>(), 1..300)),
                option::of(any::<i64>()),
                0i64..=99,
            )
                .prop_map(|(mac, ty, tx, headers, metadata, payload, rdr, qos)| {
                    Message {
                        msg_type: 4,
                        source: format!("mac:{mac}"),
                        dest: format!("event:{ty}/mac:{mac}/x"),
                        transaction_uuid: tx,
                        headers,
                        metadata,
                        payload,
                        rdr,
                        qos,
                        ..Default::default()
                    }
                })
        }

        /// Valid messages of every type: each field the type allows is
        /// either absent or set (non-empty), each one it requires is set.
        fn any_message() -> impl Strategy<Value = Message> {
            (
                2i64..=11,
                "[0-9a-f]{12}",
                "[a-z-]{1,20}",
                (
                    option::of("\\PC{1,40}"),
                    option::of("[a-z]{1,10}/[a-z]{1,10}"),
                    option::of("[a-z]{1,10}/[a-z]{1,10}"),
                    option::of(any::<i64>()),
                    option::of(any::<i64>()),
                    option::of(vec("\\PC{1,20}", 1..4)),
                ),
                (
                    option::of(btree_map("/[a-z]{1,8}", "\\PC{0,20}", 1..8)),
                    option::of("/[a-z/]{1,20}"),
                    option::of(vec(any::<u8>(), 1..200)),
                    option::of("[a-z]{1,12}"),
                    option::of("https://[a-z]{1,12}\\.example/[a-z]{0,8}"),
                    option::of(vec("[a-z]{1,10}", 1..3)),
                    option::of("[0-9a-f]{8}"),
                    0i64..=99,
                ),
            )
                .prop_map(
                    |(
                        code,
                        mac,
                        ty,
                        (tx, ct, accept, status, rdr, headers),
                        (metadata, path, payload, service, url, partners, session, qos),
                    )| {
                        let kind = MessageType::from_code(code).unwrap();
                        let (allowed, required) = kind.fields();
                        let keep = |f: &str| allowed.contains(&f);
                        let need = |f: &str| required.contains(&f);
                        let text = |f: &str, v: Option<String>, fallback: &str| {
                            if !keep(f) {
                                String::new()
                            } else if need(f) {
                                v.unwrap_or_else(|| fallback.to_owned())
                            } else {
                                v.unwrap_or_default()
                            }
                        };
                        Message {
                            msg_type: code,
                            source: text("source", Some(format!("mac:{mac}")), ""),
                            dest: text("dest", Some(format!("event:{ty}/mac:{mac}/x")), ""),
                            transaction_uuid: text("transaction_uuid", tx, "t-1"),
                            content_type: text("content_type", ct, ""),
                            accept: text("accept", accept, ""),
                            status: if need("status") {
                                Some(status.unwrap_or(200))
                            } else {
                                status.filter(|_| keep("status"))
                            },
                            rdr: rdr.filter(|_| keep("rdr")),
                            headers: headers.filter(|_| keep("headers")),
                            metadata: metadata.filter(|_| keep("metadata")),
                            path: text("path", path, ""),
                            payload: payload.filter(|_| keep("payload")),
                            service_name: text("service_name", service, "svc"),
                            url: text("url", url, "https://svc.example/"),
                            partner_ids: partners.filter(|_| keep("partner_ids")),
                            session_id: text("session_id", session, ""),
                            qos: if keep("qos") { qos } else { 0 },
                        }
                    },
                )
        }

        proptest! {
            #[test]
            fn every_message_type_round_trips_through_both_forms(m in any_message()) {
                prop_assert!(m.validate().is_ok(), "{m:?}: {:?}", m.validate());
                prop_assert_eq!(&Message::from_msgpack(&m.to_msgpack()).unwrap(), &m);
                prop_assert_eq!(&Message::from_json(&m.to_json()).unwrap(), &m);
                // A wrong map length would leave bytes over, or run short:
                // both are errors in from_msgpack.
            }

            #[test]
            fn a_field_the_type_does_not_allow_is_refused(m in any_message()) {
                let kind = m.message_type().unwrap();
                let (allowed, _) = kind.fields();
                if !allowed.contains(&"session_id") {
                    let mut bad = m.clone();
                    bad.session_id = "s".into();
                    prop_assert!(bad.validate().is_err());
                }
            }

            #[test]
            fn msgpack_round_trips(m in simple_event()) {
                prop_assert_eq!(Message::from_msgpack(&m.to_msgpack()).unwrap(), m);
            }

            #[test]
            fn json_round_trips(m in simple_event()) {
                prop_assert_eq!(Message::from_json(&m.to_json()).unwrap(), m);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
                let _ = Message::from_msgpack(&bytes);
                let _ = Message::from_json(&bytes);
            }

            #[test]
            fn every_truncation_of_a_valid_message_is_an_error(m in simple_event(), cut in 0.0f64..1.0) {
                let bytes = m.to_msgpack();
                let at = ((bytes.len() as f64) * cut) as usize;
                prop_assert!(Message::from_msgpack(&bytes[..at]).is_err());
            }
        }
    }
}
