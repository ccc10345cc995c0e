//! The embedded node's event log: every published event, on disk under
//! `--data-dir`, for forwarding across restarts, replays and resumes.
//!
//! The same model as the cluster's Redis stream: an append-only log in id
//! order, bounded in bytes and age, and per-destination checkpoints.
//!
//! - **Kept with fjall** (an LSM store with a write-ahead journal). Measured
//!   against redb tables on this machine (2 cores): a group commit flushed
//!   to the OS (`PersistMode::Buffer`) ran at 150k–340k events/s, and what
//!   it acknowledged survived `kill -9` every time. redb survives a
//!   process crash only through an fsynced commit (about 450 commits/s
//!   here); its non-durable commits roll back when killed mid-write.
//! - **Blocks.** A group's events are stored as blocks of up to
//!   [`BLOCK_BYTES`] of compact records ([`record`]), each block under the
//!   id of its last event, so the LSM sees one key per block, not per event.
//!   Segments build no bloom filter and are never compacted (FIFO without a
//!   limit): they are read by range and dropped whole.
//! - **Group commit.** The hub's tap hands each event (in id order) to one
//!   writer thread, which writes everything waiting in one batch and flushes
//!   it to the OS; ingest answers 202 only once its event is written
//!   ([`EventLog::written`]). The fsync runs every `--event-log-sync`
//!   (100 ms) on the same thread, never per event: a power loss (not a
//!   process crash) can cost the events of the last interval.
//! - **Bounded.** The log is a series of segments (one fjall keyspace
//!   each, about [`SEGMENT_BYTES`]); the oldest is dropped whole once the
//!   log holds more than `--event-log-max-bytes` or its newest event is
//!   older than `--event-log-max-age`. The ids the log no longer holds are
//!   remembered (its horizon), so a replay from before them is refused.

mod record;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use crate::event::{EventDraft, EventId};
use crate::hub::{Published, Tap};
use crate::sync::lock;

/// Longest a POST waits for its event to be written before it is
/// answered anyway (a stalled disk; see [`EventLog::written`]).
pub const WRITE_WAIT: Duration = Duration::from_millis(500);

/// How long the writer lets a group gather when no POST waits for it.
const LINGER: Duration = Duration::from_millis(2);

/// Most bytes of records one stored block gathers (one record more than
/// this is a block of its own).
const BLOCK_BYTES: usize = 64 << 10;

/// Bytes a segment grows to before the next one starts.
pub const SEGMENT_BYTES: usize = 16 << 20;
/// A segment's memtable: what the log holds in memory beside the
/// segments on disk (with one more while it is flushed).
const MEMTABLE_BYTES: u64 = 4 << 20;
/// Most events and bytes one group commit takes (an event past the bytes
/// is a group of its own): what the writer holds at once, and the batch
/// it copies them into.
const GROUP_MAX: (usize, usize) = (8_192, 1 << 20);
/// The keyspace of checkpoints and the log's own marks.
const MARKS: &str = "marks";
/// The marks key of the horizon.
const HORIZON: &str = "_horizon";
/// Segments' keyspace names: this prefix and the first id, in hex.
const SEGMENT_PREFIX: &str = "seg_";

/// Why the log could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// fjall failed.
    #[error("event log under {path}: {source}")]
    Store {
        /// The log's directory.
        path: PathBuf,
        /// What fjall said.
        #[source]
        source: fjall::Error,
    },
}

/// How the log is bounded and synced.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Its directory.
    pub dir: PathBuf,
    /// Most bytes of events kept.
    pub max_bytes: usize,
    /// Oldest event kept.
    pub max_age: Duration,
    /// Time between two fsyncs.
    pub sync_every: Duration,
}

/// One segment: a keyspace of events by id.
struct Segment {
    keyspace: Keyspace,
    first: u64,
    last: u64,
    bytes: usize,
}

/// The log.
pub struct EventLog {
    db: Database,
    config: LogConfig,
    segments: Mutex<VecDeque<Segment>>,
    marks: Keyspace,
    /// The newest id the log no longer holds (or never held).
    horizon: AtomicU64,
    /// The newest id written (flushed to the OS).
    written: tokio::sync::watch::Sender<u64>,
    /// POSTs waiting for `written` now (the writer commits at once then).
    waiters: std::sync::atomic::AtomicUsize,
    inbox: Mutex<Option<mpsc::Sender<Arc<Published>>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Writes that failed (logged; their events are not durable).
    pub write_errors: prometheus_client::metrics::counter::Counter,
    /// Events answered before the log had them (a stalled disk).
    pub unconfirmed: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("dir", &self.config.dir)
            .field("horizon", &self.horizon)
            .finish_non_exhaustive()
    }
}

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn id_of(k: &[u8]) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&k[..8.min(k.len())]);
    u64::from_be_bytes(b)
}

impl EventLog {
    /// Opens (or creates) the log under `config.dir`. `floor`: the newest
    /// id handed out before this log existed, if it is new (events up to
    /// it are not in it).
    pub fn open(config: LogConfig, floor: EventId) -> Result<Arc<Self>, LogError> {
        let dir = config.dir.clone();
        let failed = |source| LogError::Store {
            path: dir.clone(),
            source,
        };
        let db = Database::builder(&config.dir)
            .cache_size(8 << 20)
            .max_journaling_size(64 << 20)
            .worker_threads(1)
            .open()
            .map_err(failed)?;
        let marks = db
            .keyspace(MARKS, KeyspaceCreateOptions::default)
            .map_err(failed)?;
        let mut segments: Vec<Segment> = Vec::new();
        for name in db.list_keyspace_names() {
            let Some(hex) = name.strip_prefix(SEGMENT_PREFIX) else {
                continue;
            };
            let Ok(first) = u64::from_str_radix(hex, 16) else {
                continue;
            };
            let keyspace = db.keyspace(&name, options).map_err(failed)?;
            let last = keyspace
                .last_key_value()
                .and_then(|g| g.key().ok())
                .map_or(first, |k| id_of(&k));
            let bytes = keyspace.disk_space() as usize;
            segments.push(Segment {
                keyspace,
                first,
                last,
                bytes,
            });
        }
        segments.sort_by_key(|s| s.first);
        let stored_horizon = marks.get(HORIZON).map_err(failed)?.map(|v| id_of(&v));
        let horizon = match (stored_horizon, segments.first()) {
            (Some(h), _) => h,
            (None, Some(s)) => s.first.saturating_sub(1),
            (None, None) => floor.as_u64(),
        };
        marks.insert(HORIZON, key(horizon)).map_err(failed)?;
        let newest = segments.last().map_or(0, |s| s.last);
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Self {
            db,
            config,
            segments: Mutex::new(segments.into()),
            marks,
            horizon: AtomicU64::new(horizon),
            written: tokio::sync::watch::Sender::new(newest),
            waiters: Default::default(),
            inbox: Mutex::new(Some(tx)),
            writer: Mutex::new(None),
            write_errors: Default::default(),
            unconfirmed: Default::default(),
        });
        let me = log.clone();
        let writer = std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || me.write_loop(rx))
            .map_err(|e| failed(fjall::Error::Io(e)))?;
        *lock(&log.writer) = Some(writer);
        Ok(log)
    }

    /// Registers the log's series.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "event_log_write_errors",
            "Event log writes that failed (their events will not survive a restart)",
            self.write_errors.clone(),
        );
        registry.register(
            "event_log_unconfirmed",
            "Events answered before the event log had written them, because the disk stalled past 500 ms",
            self.unconfirmed.clone(),
        );
    }

    /// The newest id the log holds, if any.
    pub fn newest(&self) -> Option<EventId> {
        lock(&self.segments)
            .back()
            .map(|s| EventId::from_u64(s.last))
    }

    /// Resolves once the event `id` (and every one before it) is written
    /// (flushed to the OS: it survives the process being killed), or after
    /// [`WRITE_WAIT`] if the disk stalls: then counted in `unconfirmed`
    /// and `false`. A frozen disk must not stop ingest and live streams;
    /// the event is written once the disk thaws.
    pub async fn written(&self, id: EventId) -> bool {
        let mut rx = self.written.subscribe();
        if *rx.borrow() >= id.as_u64() {
            return true;
        }
        // Counted while waiting, and uncounted even if the POST is dropped.
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.waiters.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiters);
        let done = tokio::time::timeout(WRITE_WAIT, rx.wait_for(|w| *w >= id.as_u64()))
            .await
            .is_ok();
        if !done {
            self.unconfirmed.inc();
        }
        done
    }

    /// Whether the log holds every event after `after` (none was trimmed
    /// or came before the log).
    pub fn holds_after(&self, after: EventId) -> bool {
        after.as_u64() >= self.horizon.load(Ordering::Acquire)
    }

    /// Up to `max_bytes` of events after `after` and up to `until`, in id
    /// order (at least one if there is one), and whether more remain.
    pub fn range(
        &self,
        after: EventId,
        until: EventId,
        max_bytes: usize,
    ) -> (Vec<(EventId, EventDraft)>, bool) {
        let keyspaces: Vec<Keyspace> = lock(&self.segments)
            .iter()
            .filter(|s| s.last > after.as_u64() && s.first <= until.as_u64())
            .map(|s| s.keyspace.clone())
            .collect();
        let (mut out, mut bytes) = (Vec::new(), 0);
        // A block's key is its last id: the first block at or past
        // `after + 1` holds the first event wanted.
        let from = key(after.as_u64().saturating_add(1));
        for ks in keyspaces {
            for item in ks.range(from..) {
                let Ok((_, block)) = item.into_inner() else {
                    continue;
                };
                for (id, rec) in record::entries(&block) {
                    if id <= after.as_u64() {
                        continue;
                    }
                    if id > until.as_u64() {
                        return (out, false);
                    }
                    if !out.is_empty() && bytes + rec.len() > max_bytes {
                        return (out, true);
                    }
                    bytes += rec.len();
                    match record::decode(rec) {
                        Some(d) => out.push((EventId::from_u64(id), d)),
                        None => tracing::warn!(id, "an unreadable event in the log was skipped"),
                    }
                }
            }
        }
        (out, false)
    }

    /// The newest events, at most `count` and `max_bytes`, oldest first
    /// (what the replay ring is refilled with at start).
    pub fn tail(&self, count: usize, max_bytes: usize) -> Vec<(EventId, EventDraft)> {
        let keyspaces: Vec<Keyspace> = lock(&self.segments)
            .iter()
            .rev()
            .map(|s| s.keyspace.clone())
            .collect();
        let (mut out, mut bytes) = (Vec::new(), 0);
        'all: for ks in keyspaces {
            for item in ks.iter().rev() {
                let Ok((_, block)) = item.into_inner() else {
                    continue;
                };
                let events: Vec<(u64, &[u8])> = record::entries(&block).collect();
                for (id, rec) in events.into_iter().rev() {
                    if out.len() >= count || bytes + rec.len() > max_bytes {
                        break 'all;
                    }
                    bytes += rec.len();
                    if let Some(d) = record::decode(rec) {
                        out.push((EventId::from_u64(id), d));
                    }
                }
            }
        }
        out.reverse();
        out
    }

    /// A destination's stored checkpoint.
    pub fn checkpoint(&self, field: &str) -> Option<EventId> {
        let v = self.marks.get(format!("cp:{field}")).ok()??;
        Some(EventId::from_u64(id_of(&v)))
    }

    /// Stores checkpoints (flushed to the OS with the next fsync, as
    /// events are).
    pub fn save_checkpoints(&self, checkpoints: &[(String, EventId)]) {
        if checkpoints.is_empty() {
            return;
        }
        let mut batch = self.db.batch();
        for (field, id) in checkpoints {
            batch.insert(
                &self.marks,
                format!("cp:{field}"),
                key(id.as_u64()).to_vec(),
            );
        }
        if let Err(e) = batch.commit() {
            tracing::warn!(error = %e, "checkpoints not written");
        }
    }

    /// Forgets a destination's checkpoint (no registration names it now).
    pub fn forget_checkpoint(&self, field: &str) {
        let _ = self.marks.remove(format!("cp:{field}"));
    }

    /// Every stored checkpoint's field.
    pub fn checkpoint_fields(&self) -> Vec<String> {
        self.marks
            .prefix("cp:")
            .filter_map(|g| g.key().ok())
            .filter_map(|k| std::str::from_utf8(&k[3..]).ok().map(str::to_owned))
            .collect()
    }

    /// Stops taking events, writes what is waiting, syncs, and ends the
    /// writer.
    pub fn close(&self) {
        lock(&self.inbox).take();
        if let Some(w) = lock(&self.writer).take() {
            let _ = w.join();
        }
        if let Err(e) = self.db.persist(fjall::PersistMode::SyncAll) {
            tracing::warn!(error = %e, "event log not synced at close");
        }
    }

    fn write_loop(&self, rx: mpsc::Receiver<Arc<Published>>) {
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        loop {
            let first = match rx.recv_timeout(self.config.sync_every) {
                Ok(p) => Some(p),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            if let Some(first) = first {
                // With nobody waiting, let a group gather first: one commit
                // (one write to the OS) per LINGER, not per event.
                if self.waiters.load(Ordering::Acquire) == 0 {
                    std::thread::sleep(LINGER);
                }
                let mut group = vec![first];
                let mut bytes = group[0].weight();
                while group.len() < GROUP_MAX.0 && bytes < GROUP_MAX.1 {
                    match rx.try_recv() {
                        Ok(p) => {
                            bytes += p.weight();
                            group.push(p);
                        }
                        Err(_) => break,
                    }
                }
                self.write_group(&group);
                unsynced = true;
            }
            if unsynced && last_sync.elapsed() >= self.config.sync_every {
                if let Err(e) = self.db.persist(fjall::PersistMode::SyncData) {
                    tracing::warn!(error = %e, "event log fsync failed");
                }
                last_sync = Instant::now();
                unsynced = false;
                self.trim();
            }
        }
    }

    fn write_group(&self, group: &[Arc<Published>]) {
        let newest = group.last().map_or(0, |p| p.event.id.as_u64());
        let mut batch = self.db.batch();
        let mut added = 0;
        let keyspace = match self.current_segment(group[0].event.id.as_u64()) {
            Ok(k) => k,
            Err(e) => {
                self.failed_write(&e);
                self.written.send_replace(newest);
                return;
            }
        };
        let mut block = record::Block::with_capacity(BLOCK_BYTES + 1024);
        for p in group {
            block.push(p.event.id.as_u64(), &p.event.draft);
            if block.len() >= BLOCK_BYTES {
                let full =
                    std::mem::replace(&mut block, record::Block::with_capacity(BLOCK_BYTES + 1024));
                let (last, bytes) = full.finish();
                added += bytes.len() + 8;
                batch.insert(&keyspace, key(last), bytes);
            }
        }
        if !block.is_empty() {
            let (last, bytes) = block.finish();
            added += bytes.len() + 8;
            batch.insert(&keyspace, key(last), bytes);
        }
        match batch.commit() {
            Ok(()) => {
                let mut segments = lock(&self.segments);
                if let Some(s) = segments.back_mut() {
                    s.last = s.last.max(newest);
                    s.bytes += added;
                }
            }
            Err(e) => self.failed_write(&e),
        }
        self.written.send_replace(newest);
    }

    fn failed_write(&self, e: &fjall::Error) {
        self.write_errors.inc();
        tracing::error!(error = %e, "event log write failed: these events will not survive a restart");
    }

    /// The segment new events go to, starting one at `first` when the
    /// last is full.
    fn current_segment(&self, first: u64) -> Result<Keyspace, fjall::Error> {
        let mut segments = lock(&self.segments);
        if let Some(s) = segments.back() {
            if s.bytes < SEGMENT_BYTES {
                return Ok(s.keyspace.clone());
            }
        }
        let name = format!("{SEGMENT_PREFIX}{first:016x}");
        let keyspace = self.db.keyspace(&name, options)?;
        segments.push_back(Segment {
            keyspace: keyspace.clone(),
            first,
            last: first,
            bytes: 0,
        });
        Ok(keyspace)
    }

    /// Drops the oldest segments while the log is over its byte budget or
    /// their newest event is past the age limit; never the one written to.
    fn trim(&self) {
        let now_ms = crate::hub::unix_ms();
        let max_age_ms = self.config.max_age.as_millis() as u64;
        loop {
            let gone = {
                let mut segments = lock(&self.segments);
                let total: usize = segments.iter().map(|s| s.bytes).sum();
                let too_old = segments.front().is_some_and(|s| {
                    now_ms.saturating_sub(EventId::from_u64(s.last).unix_ms()) > max_age_ms
                });
                if segments.len() < 2 || (total <= self.config.max_bytes && !too_old) {
                    return;
                }
                segments.pop_front()
            };
            let Some(gone) = gone else { return };
            self.horizon.fetch_max(gone.last, Ordering::AcqRel);
            let _ = self
                .marks
                .insert(HORIZON, key(self.horizon.load(Ordering::Acquire)));
            if let Err(e) = self.db.delete_keyspace(gone.keyspace) {
                tracing::warn!(error = %e, "an old event log segment was not deleted");
            }
        }
    }
}

/// A segment's options. Its keys (event ids) only ever grow and it is
/// read by range, never by key, and dropped whole: so no bloom filters,
/// and no compaction (FIFO without a limit keeps every table as flushed;
/// the segments are bounded by [`EventLog::trim`]). Each saves the
/// writer's core work that ingest shares it with.
fn options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .max_memtable_size(MEMTABLE_BYTES)
        .filter_policy(fjall::config::FilterPolicy::disabled())
        .compaction_strategy(Arc::new(fjall::compaction::Fifo::new(u64::MAX, None)))
}

impl Tap for EventLog {
    fn offer(&self, event: &Arc<Published>) {
        if let Some(tx) = lock(&self.inbox).as_ref() {
            let _ = tx.send(event.clone());
        }
    }
}

/// The log's directory under the data directory.
pub fn dir_under(data_dir: &Path) -> PathBuf {
    data_dir.join("events")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A fresh directory under the system's temporary one.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let p = std::env::temp_dir().join(format!("ratatoskr-log-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Waits until `id` is written, however long a loaded machine takes
    /// (each `written` gives up after 500 ms), at most 30 s.
    async fn written(log: &EventLog, id: u64) {
        for _ in 0..120 {
            if log.written(EventId::from_u64(id)).await {
                return;
            }
        }
        panic!("{id} never written");
    }

    fn config(dir: &Path, max_bytes: usize) -> LogConfig {
        LogConfig {
            dir: dir.to_owned(),
            max_bytes,
            max_age: Duration::from_secs(3600),
            sync_every: Duration::from_millis(10),
        }
    }

    fn published(id: u64, payload: &str) -> Arc<Published> {
        let mut e = crate::event::test_event(id, Some("mac:112233445566"), Some("t"));
        e.draft.data = Bytes::from(payload.to_owned());
        Arc::new(Published::new(e))
    }

    #[tokio::test]
    async fn events_written_are_read_back_in_order_after_a_reopen() {
        let dir = TempDir::new();
        let base = EventId::floor_at(crate::hub::unix_ms()).as_u64();
        {
            let log = EventLog::open(config(dir.path(), 1 << 30), EventId::from_u64(base)).unwrap();
            for i in 1..=100 {
                log.offer(&published(base + i, &format!("{{\"n\":{i}}}")));
            }
            written(&log, base + 100).await;
            log.save_checkpoints(&[("d".into(), EventId::from_u64(base + 40))]);
            log.close();
        }
        let log = EventLog::open(config(dir.path(), 1 << 30), EventId::from_u64(0)).unwrap();
        assert_eq!(log.newest(), Some(EventId::from_u64(base + 100)));
        assert_eq!(log.checkpoint("d"), Some(EventId::from_u64(base + 40)));
        assert!(log.holds_after(EventId::from_u64(base)));
        let (page, more) = log.range(
            EventId::from_u64(base + 40),
            EventId::from_u64(base + 1000),
            usize::MAX,
        );
        assert!(!more);
        let ids: Vec<u64> = page.iter().map(|(id, _)| id.as_u64() - base).collect();
        assert_eq!(ids, (41..=100).collect::<Vec<_>>());
        assert_eq!(&page[0].1.data[..], b"{\"n\":41}");
        assert_eq!(
            page[0].1.device.as_ref().unwrap().as_str(),
            "mac:112233445566"
        );
        let (middle, more) = log.range(
            EventId::from_u64(base + 40),
            EventId::from_u64(base + 60),
            usize::MAX,
        );
        let ids: Vec<u64> = middle.iter().map(|(id, _)| id.as_u64() - base).collect();
        assert_eq!(
            (ids, more),
            ((41..=60).collect::<Vec<_>>(), false),
            "until, inside a block"
        );
        let tail = log.tail(5, usize::MAX);
        let ids: Vec<u64> = tail.iter().map(|(id, _)| id.as_u64() - base).collect();
        assert_eq!(ids, [96, 97, 98, 99, 100]);
        let (small, more) = log.range(EventId::from_u64(base), EventId::from_u64(base + 100), 1);
        assert_eq!((small.len(), more), (1, true), "a page is bounded in bytes");
        log.close();
    }

    #[tokio::test]
    async fn the_oldest_segments_go_past_the_byte_budget_and_the_horizon_says_so() {
        let dir = TempDir::new();
        let base = EventId::floor_at(crate::hub::unix_ms()).as_u64();
        let log =
            EventLog::open(config(dir.path(), SEGMENT_BYTES), EventId::from_u64(base)).unwrap();
        let payload = "x".repeat(64 * 1024);
        let n = (3 * SEGMENT_BYTES / payload.len()) as u64 + 10;
        for i in 1..=n {
            log.offer(&published(base + i, &payload));
        }
        written(&log, base + n).await;
        log.offer(&published(base + n + 1, "1"));
        written(&log, base + n + 1).await;
        // Trimmed at the next sync after a write: poll for it (bounded).
        for _ in 0..200 {
            if !log.holds_after(EventId::from_u64(base)) {
                break;
            }
            log.offer(&published(base + n + 2, "2"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let held: usize = lock(&log.segments).iter().map(|s| s.bytes).sum();
        assert!(held <= 2 * SEGMENT_BYTES + payload.len() * 2, "{held}");
        assert!(!log.holds_after(EventId::from_u64(base)), "the oldest went");
        let (page, _) = log.range(
            EventId::from_u64(base),
            EventId::from_u64(base + n + 1),
            usize::MAX,
        );
        assert_eq!(page.last().unwrap().0.as_u64() - base, n + 1);
        assert!(page[0].0.as_u64() > base + 1);
        log.close();
    }
}
