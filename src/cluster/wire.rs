//! How an event is kept in the shared Redis stream, and how stream ids map
//! onto event ids.
//!
//! A stream id is `<ms>-<seq>`; an [`EventId`] is `ms << 16 | seq`, so the
//! mapping is one-to-one and keeps order (Redis gives at most 65,536 ids
//! in one millisecond to this mapping; an entry past that is refused, and
//! said in the log, rather than given a colliding id). An entry holds three
//! fields: `m`, the routing facts and metadata as JSON; `d`, the payload
//! bytes as posted; and `w`, the WRP message as msgpack when there is one.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{wrp, DeviceId, EventDraft, EventId};

/// Why an entry could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A stream id that is not `<ms>-<seq>` with `seq < 65536`.
    #[error("stream id {0:?} does not map onto an event id")]
    Id(String),
    /// A field is missing or does not decode.
    #[error("stream entry {0}: {1}")]
    Entry(String, String),
}

/// The event id for a stream id.
pub fn event_id(stream_id: &str) -> Result<EventId, WireError> {
    let bad = || WireError::Id(stream_id.to_owned());
    let (ms, seq) = stream_id.split_once('-').ok_or_else(bad)?;
    let ms: u64 = ms.parse().map_err(|_| bad())?;
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    if seq > 0xffff || ms >= 1 << 48 {
        return Err(bad());
    }
    Ok(EventId::from_u64(ms << 16 | seq))
}

/// The stream id for an event id.
pub fn stream_id(id: EventId) -> String {
    format!("{}-{}", id.as_u64() >> 16, id.as_u64() & 0xffff)
}

#[derive(Serialize, Deserialize)]
struct Meta {
    at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r#type: Option<String>,
    source: String,
    content_type: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
}

/// The entry's fields for `draft`. The payload is shared, not copied.
pub fn encode(draft: &EventDraft) -> Vec<(&'static str, Bytes)> {
    let meta = Meta {
        at: draft.received_at,
        device: draft.device.as_ref().map(|d| d.as_str().to_owned()),
        r#type: draft.event_type.clone(),
        source: draft.source.clone(),
        content_type: draft.content_type.clone(),
        metadata: draft.metadata.clone(),
    };
    let mut fields = vec![
        (
            "m",
            Bytes::from(serde_json::to_vec(&meta).expect("plain fields serialise")),
        ),
        ("d", draft.data.clone()),
    ];
    if let Some(w) = &draft.wrp {
        fields.push(("w", Bytes::from(w.to_msgpack())));
    }
    fields
}

/// The draft in an entry's fields (taken, not copied).
pub fn decode(
    stream_id: &str,
    mut fields: std::collections::HashMap<String, redis::Value>,
) -> Result<EventDraft, WireError> {
    let bad = |why: String| WireError::Entry(stream_id.to_owned(), why);
    let mut bytes = |name: &str| -> Result<Option<Vec<u8>>, WireError> {
        match fields.remove(name) {
            None => Ok(None),
            Some(redis::Value::BulkString(b)) => Ok(Some(b)),
            Some(other) => Err(bad(format!("field {name} is {other:?}"))),
        }
    };
    let meta: Meta = serde_json::from_slice(&bytes("m")?.ok_or_else(|| bad("no m".into()))?)
        .map_err(|e| bad(format!("m: {e}")))?;
    let data = bytes("d")?.ok_or_else(|| bad("no d".into()))?;
    let wrp = bytes("w")?
        .map(|w| wrp::Message::from_msgpack(&w).map_err(|e| bad(format!("w: {e}"))))
        .transpose()?;
    let device = meta
        .device
        .map(|d| DeviceId::parse(&d).map_err(|e| bad(format!("device: {e}"))))
        .transpose()?;
    Ok(EventDraft {
        received_at: meta.at,
        device,
        event_type: meta.r#type,
        source: meta.source,
        content_type: meta.content_type,
        metadata: meta.metadata,
        data: Bytes::from(data),
        wrp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_both_ways_and_keep_order() {
        let a = event_id("1764480000000-0").unwrap();
        let b = event_id("1764480000000-1").unwrap();
        let c = event_id("1764480000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(stream_id(b), "1764480000000-1");
        assert_eq!(event_id(&stream_id(c)).unwrap(), c);
        assert_eq!(a, EventId::floor_at(1_764_480_000_000));
        for bad in ["", "1", "1-x", "1-65536", "x-1"] {
            assert!(event_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_draft_round_trips_through_its_fields() {
        let mut draft = crate::event::test_event(1, Some("mac:112233445566"), Some("t")).draft;
        draft.metadata.insert("k".into(), "v".into());
        draft.wrp = Some(wrp::Message {
            msg_type: 4,
            source: "mac:112233445566".into(),
            dest: "event:t".into(),
            payload: Some(vec![0, 1, 2]),
            ..Default::default()
        });
        let fields: std::collections::HashMap<String, redis::Value> = encode(&draft)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), redis::Value::BulkString(v.to_vec())))
            .collect();
        let back = decode("1-0", fields).unwrap();
        assert_eq!(back.device, draft.device);
        assert_eq!(back.event_type, draft.event_type);
        assert_eq!(back.metadata, draft.metadata);
        assert_eq!(back.data, draft.data);
        assert_eq!(back.wrp, draft.wrp);
        assert_eq!(back.received_at, draft.received_at);
    }
}
