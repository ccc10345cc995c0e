//! An event as the embedded log keeps it: a compact binary record.
//!
//! The log writes every event, on the core ingest runs on, so a record is
//! only copies and lengths: no JSON, no formatting of the time (the
//! stream's text fields, [`crate::event::wire`], cost the writer thread
//! about half its time, measured with `perf record`).
//!
//! Layout, little-endian: the version (`1`); `received_at` as seconds
//! (`i64`) and nanoseconds (`u32`); a flags byte (device, type, WRP
//! present); then each text or byte string as a `u32` length and its
//! bytes: device, type, source, content type, the metadata (a `u32` count
//! of key and value pairs), the payload, and the WRP message as msgpack.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::DateTime;

use crate::event::{wrp, DeviceId, EventDraft};

/// The record layout described above.
const VERSION: u8 = 1;
const HAS_DEVICE: u8 = 1;
const HAS_TYPE: u8 = 2;
const HAS_WRP: u8 = 4;

/// `draft` as a record.
#[cfg(test)]
pub fn encode(draft: &EventDraft) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, draft);
    out
}

/// Appends `draft` as a record to `out`.
fn encode_into(out: &mut Vec<u8>, draft: &EventDraft) {
    let wrp = draft.wrp.as_ref().map(wrp::Message::to_msgpack);
    let device = draft.device.as_ref().map(DeviceId::as_str);
    let texts = device.map_or(0, str::len)
        + draft.event_type.as_ref().map_or(0, String::len)
        + draft.source.len()
        + draft.content_type.len()
        + draft
            .metadata
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
        + draft.data.len()
        + wrp.as_ref().map_or(0, Vec::len);
    out.reserve(texts + 14 + 7 * 4);
    out.push(VERSION);
    out.extend_from_slice(&draft.received_at.timestamp().to_le_bytes());
    out.extend_from_slice(&draft.received_at.timestamp_subsec_nanos().to_le_bytes());
    let flag = |on: bool, bit: u8| if on { bit } else { 0 };
    out.push(
        flag(device.is_some(), HAS_DEVICE)
            | flag(draft.event_type.is_some(), HAS_TYPE)
            | flag(wrp.is_some(), HAS_WRP),
    );
    if let Some(d) = device {
        put(out, d.as_bytes());
    }
    if let Some(t) = &draft.event_type {
        put(out, t.as_bytes());
    }
    put(out, draft.source.as_bytes());
    put(out, draft.content_type.as_bytes());
    out.extend_from_slice(&(draft.metadata.len() as u32).to_le_bytes());
    for (k, v) in &draft.metadata {
        put(out, k.as_bytes());
        put(out, v.as_bytes());
    }
    put(out, &draft.data);
    if let Some(w) = &wrp {
        put(out, w);
    }
}

/// The first byte of a block: what the log stores under one key, the
/// records of consecutive events (one key per event made the memtable's
/// skiplist the writer's largest cost, measured with callgrind).
const BLOCK: u8 = 0xb1;

/// A block being filled: its records, each after its event id (`u64`)
/// and length (`u32`).
#[derive(Debug)]
pub struct Block {
    bytes: Vec<u8>,
    last: u64,
}

impl Block {
    /// An empty block with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut bytes = Vec::with_capacity(capacity);
        bytes.push(BLOCK);
        Self { bytes, last: 0 }
    }

    /// Appends the event `id`'s record.
    pub fn push(&mut self, id: u64, draft: &EventDraft) {
        self.bytes.extend_from_slice(&id.to_le_bytes());
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        encode_into(&mut self.bytes, draft);
        let len = (self.bytes.len() - at - 4) as u32;
        self.bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.last = id;
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.bytes.len() <= 1
    }

    /// The id of its last event (its key in the log), and its bytes.
    pub fn finish(self) -> (u64, Vec<u8>) {
        (self.last, self.bytes)
    }
}

/// The events of a stored block, in id order: each id and its record.
/// A block cut short ends early, said in the log.
pub fn entries(raw: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut r = Reader(raw);
    let mut ok = r.take(1) == Some(&[BLOCK][..]);
    if !ok {
        tracing::warn!("an event log block of another format was skipped");
    }
    std::iter::from_fn(move || {
        if !ok || r.0.is_empty() {
            return None;
        }
        let entry = r
            .take(8)
            .and_then(|id| id.try_into().ok())
            .map(u64::from_le_bytes)
            .zip(r.bytes());
        if entry.is_none() {
            ok = false;
            tracing::warn!("an event log block was cut short: the rest of it was skipped");
        }
        entry
    })
}

/// Appends `bytes` with its length.
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The draft in `raw`; `None` for a record this build cannot read (cut
/// short, another version, bad UTF-8, a device id that no longer parses).
pub fn decode(raw: &[u8]) -> Option<EventDraft> {
    let mut r = Reader(raw);
    if r.take(1)? != [VERSION] {
        return None;
    }
    let secs = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let nanos = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
    let received_at = DateTime::from_timestamp(secs, nanos)?;
    let flags = r.take(1)?[0];
    let device = match flags & HAS_DEVICE {
        0 => None,
        _ => Some(DeviceId::parse(r.text()?).ok()?),
    };
    let event_type = match flags & HAS_TYPE {
        0 => None,
        _ => Some(r.text()?.to_owned()),
    };
    let source = r.text()?.to_owned();
    let content_type = r.text()?.to_owned();
    let pairs = r.count()?;
    let mut metadata = BTreeMap::new();
    for _ in 0..pairs {
        let k = r.text()?.to_owned();
        metadata.insert(k, r.text()?.to_owned());
    }
    let data = Bytes::copy_from_slice(r.bytes()?);
    let wrp = match flags & HAS_WRP {
        0 => None,
        _ => Some(wrp::Message::from_msgpack(r.bytes()?).ok()?),
    };
    Some(EventDraft {
        received_at,
        device,
        event_type,
        source,
        content_type,
        metadata,
        data,
        wrp,
    })
}

/// Reads a record front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn count(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.count()?;
        self.take(n)
    }

    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_event;

    #[test]
    fn a_record_reads_back_as_the_draft_it_was() {
        let mut plain = test_event(1, None, None).draft;
        plain.data = Bytes::from_static(br#"{"a":1}"#);
        let mut full = test_event(2, Some("mac:112233445566"), Some("t/x")).draft;
        full.metadata
            .insert("/boot-time".into(), "1700000000".into());
        full.metadata.insert("k".into(), String::new());
        full.wrp = Some(wrp::Message {
            msg_type: 4,
            source: "mac:112233445566/svc".into(),
            dest: "event:t/x".into(),
            payload: Some(vec![0, 159, 255]),
            ..Default::default()
        });
        for draft in [plain, full] {
            let back = decode(&encode(&draft)).expect("reads back");
            assert_eq!(back.received_at, draft.received_at);
            assert_eq!(back.device, draft.device);
            assert_eq!(back.event_type, draft.event_type);
            assert_eq!(back.source, draft.source);
            assert_eq!(back.content_type, draft.content_type);
            assert_eq!(back.metadata, draft.metadata);
            assert_eq!(back.data, draft.data);
            assert_eq!(back.wrp, draft.wrp);
        }
    }

    #[test]
    fn a_block_gives_back_its_events_in_order_and_stops_where_it_is_cut() {
        let mut block = Block::with_capacity(0);
        assert!(block.is_empty());
        let drafts: Vec<EventDraft> = (0..3)
            .map(|i| test_event(i, Some("mac:112233445566"), Some("t")).draft)
            .collect();
        for (i, d) in drafts.iter().enumerate() {
            block.push(10 + i as u64, d);
        }
        let (last, raw) = block.finish();
        assert_eq!(last, 12);
        let back: Vec<(u64, EventDraft)> = entries(&raw)
            .map(|(id, rec)| (id, decode(rec).expect("a record")))
            .collect();
        assert_eq!(
            back.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [10, 11, 12]
        );
        assert_eq!(back[2].1.received_at, drafts[2].received_at);
        let cut = &raw[..raw.len() - 3];
        assert_eq!(entries(cut).count(), 2, "a cut last record is skipped");
        assert_eq!(entries(&raw[1..]).count(), 0, "not a block");
    }

    #[test]
    fn a_cut_or_foreign_record_is_none_never_a_panic() {
        let mut draft = test_event(3, Some("mac:112233445566"), Some("t")).draft;
        draft.metadata.insert("k".into(), "v".into());
        let raw = encode(&draft);
        for cut in 0..raw.len() {
            assert!(decode(&raw[..cut]).is_none(), "cut at {cut}");
        }
        let mut other = raw.clone();
        other[0] = b'm';
        assert!(decode(&other).is_none());
        let mut huge = raw;
        let at = 1 + 8 + 4 + 1;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_none());
    }
}
