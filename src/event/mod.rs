//! The event model: what ingest produces and everything downstream consumes.
//!
//! Both ingest formats (plain JSON and xmidt WRP) become one [`Event`]. Its
//! `data` is the JSON text subscribers receive by default: the body as
//! posted for JSON events, the WRP JSON form for WRP events. The original WRP
//! message is kept so that forwarders can send it in its own encoding.

pub mod device;
pub mod id;
pub mod json;
pub mod wire;
pub mod wrp;

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

pub use device::DeviceId;
pub use id::EventId;

/// An event as ingest builds it, before the hub gives it an id.
#[derive(Debug, Clone)]
pub struct EventDraft {
    /// When the gateway received it.
    pub received_at: DateTime<Utc>,
    /// The device it is about, if known.
    pub device: Option<DeviceId>,
    /// Its type, if known.
    pub event_type: Option<String>,
    /// Who sent it (a WRP source locator, a client-given name, or the peer address).
    pub source: String,
    /// The media type it was posted as.
    pub content_type: String,
    /// Free-form string metadata (WRP metadata for WRP events).
    pub metadata: BTreeMap<String, String>,
    /// The JSON text subscribers receive by default.
    pub data: Bytes,
    /// The original message, for WRP events.
    pub wrp: Option<wrp::Message>,
}

/// An accepted event with its id.
#[derive(Debug, Clone)]
pub struct Event {
    /// Monotonic, sortable id.
    pub id: EventId,
    /// Everything else.
    pub draft: EventDraft,
}

impl Event {
    /// The full envelope as JSON: id, type, device, source, received_at,
    /// content_type, metadata and the payload (the event's JSON data).
    pub fn envelope_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Envelope<'a> {
            id: String,
            #[serde(rename = "type")]
            event_type: Option<&'a str>,
            device: Option<&'a str>,
            source: &'a str,
            received_at: String,
            content_type: &'a str,
            metadata: &'a BTreeMap<String, String>,
            payload: Option<&'a serde_json::value::RawValue>,
        }
        let d = &self.draft;
        let envelope = Envelope {
            id: self.id.to_string(),
            event_type: d.event_type.as_deref(),
            device: d.device.as_ref().map(DeviceId::as_str),
            source: &d.source,
            received_at: d.received_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            content_type: &d.content_type,
            metadata: &d.metadata,
            // `data` was validated as JSON at ingest; None only if that invariant broke.
            payload: serde_json::from_slice(&d.data).ok(),
        };
        serde_json::to_vec(&envelope).unwrap_or_default()
    }
}

/// An event for unit tests elsewhere in the crate, and for fuzzing.
#[cfg(any(test, fuzzing))]
pub fn test_event(id: u64, device: Option<&str>, event_type: Option<&str>) -> Event {
    Event {
        id: EventId::from_u64(id),
        draft: EventDraft {
            received_at: Utc::now(),
            device: device.map(|d| DeviceId::parse(d).expect("test device id")),
            event_type: event_type.map(str::to_owned),
            source: "test".into(),
            content_type: "application/json".into(),
            metadata: BTreeMap::new(),
            data: Bytes::from_static(b"1"),
            wrp: None,
        },
    }
}
