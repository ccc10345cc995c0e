//! How an event is kept, field by field, in the shared Redis stream and in
//! the embedded event log, and how stream ids map
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
    /// A reply that is not shaped like stream entries.
    #[error("unexpected stream reply: {0}")]
    Shape(String),
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

/// A field of an XINFO reply (a flat `name, value, …` list in RESP2, a
/// map in RESP3), as text.
pub fn info_field(reply: &redis::Value, name: &str) -> Option<String> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(i) => Some(i.to_string()),
        _ => None,
    };
    match reply {
        redis::Value::Array(items) => items
            .chunks(2)
            .find(|kv| text(&kv[0]).as_deref() == Some(name))
            .and_then(|kv| kv.get(1).and_then(text)),
        redis::Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some(name))
            .and_then(|(_, v)| text(v)),
        _ => None,
    }
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

/// One stream entry as Redis sent it: its id and its `field, value, …` list.
///
/// Replies are walked as raw values rather than through the client's typed
/// stream replies, which build a `HashMap` and a `String` per entry: every
/// node's reader decodes every entry, so this is on each event's path.
#[derive(Debug)]
pub struct RawEntry {
    id: Vec<u8>,
    fields: Vec<redis::Value>,
}

impl RawEntry {
    /// An entry made of `fields` (the embedded event log's records, which
    /// keep the stream's fields).
    pub fn from_fields(id: EventId, fields: Vec<(String, Bytes)>) -> Self {
        Self {
            id: stream_id(id).into_bytes(),
            fields: fields
                .into_iter()
                .flat_map(|(n, v)| {
                    [
                        redis::Value::BulkString(n.into_bytes()),
                        redis::Value::BulkString(v.to_vec()),
                    ]
                })
                .collect(),
        }
    }

    /// The entry's stream id, as Redis wrote it.
    pub fn stream_id(&self) -> String {
        String::from_utf8_lossy(&self.id).into_owned()
    }

    /// Bytes of its id and fields, as a resume's byte budget counts them.
    pub fn size(&self) -> usize {
        self.id.len()
            + self
                .fields
                .iter()
                .map(|f| match f {
                    redis::Value::BulkString(b) => b.len(),
                    _ => 0,
                })
                .sum::<usize>()
    }

    /// The event id and the draft in this entry (fields taken, not copied).
    pub fn decode(self) -> Result<(EventId, EventDraft), WireError> {
        self.decode_as(event_id)
    }

    /// As [`RawEntry::decode`], with the event id that `id_of` maps the
    /// stream id onto (a partition's: see `cluster::layout`).
    pub fn decode_as(
        self,
        id_of: impl FnOnce(&str) -> Result<EventId, WireError>,
    ) -> Result<(EventId, EventDraft), WireError> {
        // The id as text only for an error message.
        let raw_id = self.id;
        let text_id = || String::from_utf8_lossy(&raw_id).into_owned();
        let id = std::str::from_utf8(&raw_id)
            .map_err(|_| WireError::Id(text_id()))
            .and_then(id_of)?;
        let bad = |why: String| WireError::Entry(text_id(), why);
        let (mut m, mut d, mut w) = (None, None, None);
        let mut fields = self.fields.into_iter();
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            let slot = match &name {
                redis::Value::BulkString(n) if n == b"m" => &mut m,
                redis::Value::BulkString(n) if n == b"d" => &mut d,
                redis::Value::BulkString(n) if n == b"w" => &mut w,
                _ => continue,
            };
            match value {
                redis::Value::BulkString(b) => *slot = Some(b),
                other => return Err(bad(format!("field {name:?} is {other:?}"))),
            }
        }
        let meta: Meta = serde_json::from_slice(&m.ok_or_else(|| bad("no m".into()))?)
            .map_err(|e| bad(format!("m: {e}")))?;
        let data = d.ok_or_else(|| bad("no d".into()))?;
        let wrp = w
            .map(|w| wrp::Message::from_msgpack(&w).map_err(|e| bad(format!("w: {e}"))))
            .transpose()?;
        let device = meta
            .device
            .map(|d| DeviceId::parse(&d).map_err(|e| bad(format!("device: {e}"))))
            .transpose()?;
        Ok((
            id,
            EventDraft {
                received_at: meta.at,
                device,
                event_type: meta.r#type,
                source: meta.source,
                content_type: meta.content_type,
                metadata: meta.metadata,
                data: Bytes::from(data),
                wrp,
            },
        ))
    }
}

/// The entries of an XRANGE reply: `[[id, [field, value, …]], …]`.
pub fn range_entries(reply: redis::Value) -> Result<Vec<RawEntry>, WireError> {
    let redis::Value::Array(items) = reply else {
        return Err(WireError::Shape(format!("entries: {reply:?}")));
    };
    items
        .into_iter()
        .map(|item| match item {
            redis::Value::Array(pair) if pair.len() == 2 => {
                let mut pair = pair.into_iter();
                match (pair.next(), pair.next()) {
                    (Some(redis::Value::BulkString(id)), Some(redis::Value::Array(fields))) => {
                        Ok(RawEntry { id, fields })
                    }
                    other => Err(WireError::Shape(format!("entry: {other:?}"))),
                }
            }
            other => Err(WireError::Shape(format!("entry: {other:?}"))),
        })
        .collect()
}

/// The entries of an XREAD reply on one stream: nil when the block timed
/// out, else `[[key, entries]]` (RESP2) or `{key: entries}` (RESP3).
pub fn read_entries(reply: redis::Value) -> Result<Vec<RawEntry>, WireError> {
    let per_stream = match reply {
        redis::Value::Nil => return Ok(Vec::new()),
        redis::Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                redis::Value::Array(mut pair) if pair.len() == 2 => Ok(pair.swap_remove(1)),
                other => Err(WireError::Shape(format!("stream: {other:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        redis::Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        other => return Err(WireError::Shape(format!("read reply: {other:?}"))),
    };
    let mut out = Vec::new();
    for entries in per_stream {
        out.extend(range_entries(entries)?);
    }
    Ok(out)
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
        let fields = encode(&draft)
            .into_iter()
            .flat_map(|(k, v)| {
                [
                    redis::Value::BulkString(k.as_bytes().to_vec()),
                    redis::Value::BulkString(v.to_vec()),
                ]
            })
            .collect();
        let reply = redis::Value::Array(vec![redis::Value::Array(vec![
            redis::Value::BulkString(b"1-0".to_vec()),
            redis::Value::Array(fields),
        ])]);
        let mut entries = range_entries(reply).unwrap();
        assert_eq!(entries.len(), 1);
        let (id, back) = entries.remove(0).decode().unwrap();
        assert_eq!(id, event_id("1-0").unwrap());
        assert_eq!(back.device, draft.device);
        assert_eq!(back.event_type, draft.event_type);
        assert_eq!(back.metadata, draft.metadata);
        assert_eq!(back.data, draft.data);
        assert_eq!(back.wrp, draft.wrp);
        assert_eq!(back.received_at, draft.received_at);
    }

    fn entry(id: &str, fields: &[(&str, &[u8])]) -> redis::Value {
        redis::Value::Array(vec![
            redis::Value::BulkString(id.as_bytes().to_vec()),
            redis::Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| {
                        [
                            redis::Value::BulkString(k.as_bytes().to_vec()),
                            redis::Value::BulkString(v.to_vec()),
                        ]
                    })
                    .collect(),
            ),
        ])
    }

    #[test]
    fn read_replies_in_both_protocols_give_their_entries_in_order() {
        let meta =
            br#"{"at":"2026-11-30T00:00:00Z","source":"s","content_type":"application/json"}"#;
        let entries = || {
            redis::Value::Array(vec![
                entry("5-0", &[("m", meta), ("d", b"1")]),
                entry("5-1", &[("m", meta), ("d", b"2"), ("x", b"ignored")]),
            ])
        };
        let key = || redis::Value::BulkString(b"ratatoskr:events".to_vec());
        let resp2 = redis::Value::Array(vec![redis::Value::Array(vec![key(), entries()])]);
        let resp3 = redis::Value::Map(vec![(key(), entries())]);
        for reply in [resp2, resp3] {
            let got: Vec<_> = read_entries(reply)
                .unwrap()
                .into_iter()
                .map(|e| e.decode().unwrap())
                .collect();
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].0, event_id("5-0").unwrap());
            assert_eq!(&got[1].1.data[..], b"2");
        }
        assert!(read_entries(redis::Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn malformed_replies_and_entries_are_errors_not_panics() {
        assert!(read_entries(redis::Value::Int(3)).is_err());
        assert!(range_entries(redis::Value::Array(vec![redis::Value::Int(1)])).is_err());
        let no_meta =
            range_entries(redis::Value::Array(vec![entry("1-0", &[("d", b"x")])])).unwrap();
        assert!(no_meta.into_iter().next().unwrap().decode().is_err());
        let bad_id =
            range_entries(redis::Value::Array(vec![entry("1-x", &[("d", b"x")])])).unwrap();
        assert!(matches!(
            bad_id.into_iter().next().unwrap().decode(),
            Err(WireError::Id(_))
        ));
        let odd = redis::Value::Array(vec![redis::Value::Array(vec![
            redis::Value::BulkString(b"1-0".to_vec()),
            redis::Value::Array(vec![
                redis::Value::BulkString(b"m".to_vec()),
                redis::Value::Int(1),
            ]),
        ])]);
        assert!(range_entries(odd).unwrap().remove(0).decode().is_err());
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        let info = redis::Value::Array(vec![
            bulk("length"),
            redis::Value::Int(0),
            bulk("max-deleted-entry-id"),
            bulk("5-1"),
        ]);
        assert_eq!(
            info_field(&info, "max-deleted-entry-id").as_deref(),
            Some("5-1")
        );
        assert_eq!(info_field(&info, "length").as_deref(), Some("0"));
        assert_eq!(info_field(&info, "nope"), None);
        let info3 = redis::Value::Map(vec![(bulk("max-deleted-entry-id"), bulk("0-0"))]);
        assert_eq!(
            info_field(&info3, "max-deleted-entry-id").as_deref(),
            Some("0-0")
        );
    }
}
