//! The hub: ids, the replay ring, and fan-out to subscribers.
//!
//! Data flows one way: ingest hands an [`EventDraft`] to [`Hub::publish`],
//! which gives it an id, encodes its SSE frame once, keeps it in the
//! [`ReplayRing`] and offers the shared frame to every subscriber whose
//! filter matches. Subscribers are indexed by device, with a separate list
//! for those without a device filter, so one event costs O(matching
//! subscribers), not O(all subscribers).
//!
//! A short *sequencing* lock covers id assignment and the ring. The
//! subscribers are split over shards, each with its own lock and index. A
//! publish takes its id under the sequencing lock, then passes the shards
//! in a fixed order, holding at most two shard locks (it takes shard k+1's
//! before it lets shard k's go). Publishes thus follow each other through
//! the shards like a bucket brigade: several fan out at once on different
//! shards, and each shard, so each subscriber, sees them in id order. A
//! resuming subscriber registers in its shard under that shard's lock and
//! replays the ring only up to the last id the shard has passed: no gap,
//! no duplicate. No lock is held across an `.await`; offering to a
//! subscriber never waits (see [`subscriber`]). Locks are always taken in
//! one order (sequencing, then shards by index), so none can deadlock.

pub mod filter;
pub mod frame;
pub mod replay;
pub mod subscriber;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use indexmap::IndexMap;

pub use filter::EventFilter;
pub use replay::{Replay, ReplayRing};
pub use subscriber::{
    CloseReason, DirectConnection, DirectWrite, Drained, LagPolicy, Lane, LaneWrite, Offer,
    SubscriberQueue,
};

use crate::event::{DeviceId, Event, EventDraft, EventId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// How a subscriber wants each event written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `data:` is the payload (JSON as posted, or the WRP JSON form).
    #[default]
    Data,
    /// `data:` is the full envelope with id, type, device, metadata...
    Envelope,
}

/// An accepted event with its SSE frames, encoded at most once per format
/// and shared by every subscriber.
#[derive(Debug)]
pub struct Published {
    /// The event.
    pub event: Event,
    data_frame: OnceLock<Framed>,
    envelope_frame: OnceLock<Framed>,
    weight: usize,
}

/// One frame in both of its [`frame::Transfer`] forms, sharing one buffer.
#[derive(Debug)]
struct Framed {
    plain: Bytes,
    chunked: Bytes,
}

impl Framed {
    fn new(piece: frame::Piece) -> Self {
        let (chunked, plain) = piece.finish_both();
        Self { plain, chunked }
    }
}

/// Payload, metadata and WRP fields, counted once for the event and once
/// for each frame that may be built from it (data and envelope), plus a
/// fixed allowance for the structs and headers around them.
fn weight(event: &Event) -> usize {
    const OVERHEAD: usize = 512;
    let d = &event.draft;
    let metadata: usize = d.metadata.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    let wrp = d.wrp.as_ref().map_or(0, |m| {
        m.payload.as_ref().map_or(0, Vec::len)
            + m.metadata
                .as_ref()
                .map_or(0, |md| md.iter().map(|(k, v)| k.len() + v.len() + 8).sum())
            + m.source.len()
            + m.dest.len()
            + m.path.len()
    });
    3 * d.data.len() + 2 * metadata + d.source.len() + wrp + OVERHEAD
}

impl Published {
    /// Wraps an event; frames are built on first use.
    pub fn new(event: Event) -> Self {
        Self {
            weight: weight(&event),
            event,
            data_frame: OnceLock::new(),
            envelope_frame: OnceLock::new(),
        }
    }

    /// The most bytes this event can hold once both of its frames are
    /// built: what byte budgets (replay, forwarding buffers) count.
    pub fn weight(&self) -> usize {
        self.weight
    }

    /// The encoded SSE frame for `format`. The id text is made only when
    /// a frame is first built, not on every call (a batch asks once per
    /// event per subscriber).
    pub fn frame(&self, format: Format) -> &Bytes {
        &self.framed(format).plain
    }

    /// The frame for `format` as it travels with `transfer`: on the lean
    /// HTTP/1.1 path, one chunk shared by every subscriber.
    pub fn wire(&self, format: Format, transfer: frame::Transfer) -> &Bytes {
        let framed = self.framed(format);
        match transfer {
            frame::Transfer::Plain => &framed.plain,
            frame::Transfer::Chunked => &framed.chunked,
        }
    }

    fn framed(&self, format: Format) -> &Framed {
        let id = || self.event.id.to_string();
        match format {
            Format::Data => self.data_frame.get_or_init(|| {
                Framed::new(frame::event_piece(
                    Some(&id()),
                    None,
                    &self.event.draft.data,
                ))
            }),
            Format::Envelope => self.envelope_frame.get_or_init(|| {
                Framed::new(frame::event_piece(
                    Some(&id()),
                    None,
                    &self.event.envelope_json(),
                ))
            }),
        }
    }
}

/// Hub limits, from the configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Events kept for resume.
    pub replay_capacity: usize,
    /// Bytes the events kept for resume may hold ([`Published::weight`]).
    pub replay_max_bytes: usize,
    /// Oldest event kept for resume.
    pub replay_max_age: Duration,
    /// Events queued per subscriber before it counts as lagging.
    pub subscriber_buffer: usize,
    /// Bytes queued per subscriber before it counts as lagging.
    pub subscriber_buffer_bytes: usize,
    /// Most concurrent subscribers.
    pub max_subscribers: usize,
    /// Subscriber shards (at least 1): publishes fan out on this many
    /// at once (see the module's documentation).
    pub shards: usize,
}

/// The hub's own series.
#[derive(Debug, Clone)]
pub struct HubMetrics {
    subscribers: Gauge,
    replay_events: Gauge,
    replay_bytes: Gauge,
    deliveries: Counter,
    written: Counter,
    dropped: Counter,
    fanout_seconds: Histogram,
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self {
            subscribers: Gauge::default(),
            replay_events: Gauge::default(),
            replay_bytes: Gauge::default(),
            deliveries: Counter::default(),
            written: Counter::default(),
            dropped: Counter::default(),
            fanout_seconds: Histogram::new(exponential_buckets(0.000_005, 2.0, 20)),
        }
    }
}

impl HubMetrics {
    /// Registers the series into `registry`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        registry.register(
            "subscribers",
            "SSE subscribers connected now",
            m.subscribers.clone(),
        );
        registry.register(
            "replay_events",
            "Events held for Last-Event-ID resume",
            m.replay_events.clone(),
        );
        registry.register(
            "replay_bytes",
            "Bytes held for Last-Event-ID resume (payloads and frames)",
            m.replay_bytes.clone(),
        );
        registry.register(
            "deliveries",
            "Events queued for an SSE subscriber",
            m.deliveries.clone(),
        );
        registry.register(
            "deliveries_written_inline",
            "Of those, events a publish wrote to the subscriber's socket itself (--inline-writes)",
            m.written.clone(),
        );
        registry.register(
            "deliveries_dropped",
            "Events dropped for an SSE subscriber whose buffer was full",
            m.dropped.clone(),
        );
        registry.register(
            "fanout_duration_seconds",
            "Time to offer one event to every matching subscriber",
            m.fanout_seconds.clone(),
        );
        m
    }

    fn fanout(&self, tally: &FanOut, took: Duration) {
        let (queued, written, dropped) = (
            tally.queued as u64,
            tally.written as u64,
            tally.dropped as u64,
        );
        self.deliveries.inc_by(queued);
        if written > 0 {
            self.written.inc_by(written);
        }
        if dropped > 0 {
            self.dropped.inc_by(dropped);
        }
        self.fanout_seconds.observe(took.as_secs_f64());
    }

    /// Events queued for subscribers, and dropped for full queues, so far.
    pub fn delivery_totals(&self) -> (u64, u64) {
        (self.deliveries.get(), self.dropped.get())
    }
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    /// The hub is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The subscriber limit is reached.
    #[error("the gateway has reached its limit of {0} subscribers")]
    Full(usize),
}

/// Something else that sees every published event, in id order: the
/// forwarders. `offer` runs inside the hub's last shard lock, so it must
/// only hand the event over (a `try_send`), never wait or do real work.
pub trait Tap: Send + Sync + std::fmt::Debug {
    /// Takes a reference to a new event.
    fn offer(&self, event: &Arc<Published>);
}

/// Several taps, offered each event in turn (the event log first, then
/// forwarding).
#[derive(Debug)]
pub struct Taps(pub Vec<Arc<dyn Tap>>);

impl Tap for Taps {
    fn offer(&self, event: &Arc<Published>) {
        for t in &self.0 {
            t.offer(event);
        }
    }
}

/// The fan-out point between ingest and subscribers.
#[derive(Debug)]
pub struct Hub {
    sequencer: Mutex<Sequencer>,
    shards: Box<[Mutex<Shard>]>,
    subscribers: AtomicUsize,
    tap: OnceLock<Arc<dyn Tap>>,
    config: HubConfig,
    metrics: HubMetrics,
    next_subscriber: AtomicU64,
    /// When the hub was made: the origin of `fanned_out`.
    epoch: Instant,
    /// When the last fan-out ended, in nanoseconds after `epoch`.
    fanned_out: AtomicU64,
}

/// A publish may write to idle streams' sockets itself (see
/// `subscriber::Lane`) only when the previous fan-out ended at least this
/// long before: sparse events (up to about 100 a second) are written at
/// once, by the publish. A flow of events goes through the streams' tasks
/// instead, which write every event waiting for a stream in one `send`
/// where a publish writes one event per `send`, and on several cores write
/// in parallel. (With 1 ms, a saturated broadcast to 5,000 subscribers on
/// one core fell from 2.8M to 1.4M deliveries/s: the tasks' own writes
/// between two publishes made a gap of more than 1 ms.)
const INLINE_QUIET: Duration = Duration::from_millis(10);

/// What the sequencing lock covers.
#[derive(Debug)]
struct Sequencer {
    ids: crate::event::id::IdGenerator,
    ring: ReplayRing,
}

/// One shard of the subscribers.
#[derive(Debug, Default)]
struct Shard {
    index: Index,
    /// The newest event that has passed this shard: a subscriber that
    /// joins it now gets every later one live.
    passed: EventId,
    /// Set on shutdown: the shard takes no new subscriber.
    closed: bool,
}

type SubscriberId = u64;

#[derive(Debug, Clone)]
struct Entry {
    filter: Arc<EventFilter>,
    queue: Arc<SubscriberQueue>,
}

/// Subscribers by device, plus those that take every device.
#[derive(Debug, Default)]
struct Index {
    any_device: IndexMap<SubscriberId, Entry>,
    by_device: HashMap<DeviceId, IndexMap<SubscriberId, Entry>>,
}

impl Index {
    /// Every subscriber's queue (one taking several devices appears once
    /// per device).
    fn queues(&self) -> Vec<Arc<SubscriberQueue>> {
        self.any_device
            .values()
            .chain(self.by_device.values().flat_map(|m| m.values()))
            .map(|e| e.queue.clone())
            .collect()
    }

    /// Adds a subscriber: under each device it names, or to those that
    /// take every device.
    fn insert(&mut self, id: SubscriberId, entry: Entry) {
        let devices = entry.filter.devices();
        if devices.is_empty() {
            self.any_device.insert(id, entry);
            return;
        }
        for d in devices {
            self.by_device
                .entry(d.clone())
                .or_default()
                .insert(id, entry.clone());
        }
    }

    /// Removes a subscriber added with `filter`; whether it was here.
    fn remove(&mut self, id: SubscriberId, filter: &EventFilter) -> bool {
        if filter.devices().is_empty() {
            return self.any_device.swap_remove(&id).is_some();
        }
        let mut any = false;
        for d in filter.devices() {
            if let Some(m) = self.by_device.get_mut(d) {
                any |= m.swap_remove(&id).is_some();
                if m.is_empty() {
                    self.by_device.remove(d);
                }
            }
        }
        any
    }

    /// Offers `published` to every subscriber here whose filter takes it;
    /// `write`: through their lanes, where armed.
    fn offer(&self, published: &Arc<Published>, tally: &mut FanOut, write: bool) {
        let device_entries = published
            .event
            .draft
            .device
            .as_ref()
            .and_then(|d| self.by_device.get(d));
        for entry in self
            .any_device
            .values()
            .chain(device_entries.into_iter().flat_map(|m| m.values()))
        {
            if !entry.filter.matches_indexed(&published.event) {
                continue;
            }
            let offered = if write {
                entry.queue.offer(published)
            } else {
                entry.queue.offer_to_queue(published)
            };
            match offered {
                Offer::Queued(depth) => {
                    tally.queued += 1;
                    tally.deepest = tally.deepest.max(depth);
                }
                Offer::Written => {
                    tally.queued += 1;
                    tally.written += 1;
                }
                Offer::Dropped => tally.dropped += 1,
            }
        }
    }
}

/// What one publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanOut {
    /// The id given to the event.
    pub id: EventId,
    /// Subscribers it was queued for (or written to).
    pub queued: usize,
    /// Of those, subscribers it was written to at once, through their lane.
    pub written: usize,
    /// Subscribers it was dropped for (their queue was full).
    pub dropped: usize,
    /// The fullest queue it was added to, after adding it: how far the
    /// slowest live reader is behind (a batch publisher paces on it).
    pub deepest: usize,
}

impl Hub {
    /// A hub with an empty ring and no subscribers.
    pub fn new(config: HubConfig, metrics: HubMetrics) -> Arc<Self> {
        let horizon = EventId::from_u64(EventId::floor_at(unix_ms()).as_u64().saturating_sub(1));
        let ring = ReplayRing::new(
            config.replay_capacity,
            config.replay_max_bytes,
            config.replay_max_age,
            horizon,
        );
        let shards = (0..config.shards.max(1))
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        Arc::new(Self {
            sequencer: Mutex::new(Sequencer {
                ids: Default::default(),
                ring,
            }),
            shards,
            subscribers: AtomicUsize::new(0),
            tap: OnceLock::new(),
            config,
            metrics,
            next_subscriber: AtomicU64::new(1),
            epoch: Instant::now(),
            fanned_out: AtomicU64::new(0),
        })
    }

    /// Continues ids above `mark`, the high-water mark a previous process
    /// stored: ids keep increasing across a restart even if the clock went
    /// back, and a client holding one below it resumes with a `gap`.
    pub fn resume_ids_above(&self, mark: EventId) {
        let mut seq = self.sequencer();
        seq.ids.raise_floor(mark);
        seq.ring.raise_horizon(mark);
        // No id up to the mark will be published: as if it had passed.
        self.passed_up_to(mark);
    }

    /// Goes on above `mark` after the cluster's merge started reading more
    /// partitions there: nothing at or below it is published any more, and
    /// the ring, which lacks those partitions' events, vouches for nothing
    /// up to it (a resume from before reads the shared stream).
    pub fn rejoin_above(&self, mark: EventId) {
        let mut seq = self.sequencer();
        seq.ids.raise_floor(mark);
        seq.ring.forget_through(mark);
        self.passed_up_to(mark);
    }

    /// Refills the replay ring with `events` (oldest first, the tail of
    /// the embedded event log) at start, before any subscriber: a client
    /// holding one of their ids resumes across the restart with no `gap`.
    /// Ids go on above the newest.
    pub fn restore(&self, events: Vec<Arc<Published>>) {
        let Some(first) = events.first().map(|p| p.event.id) else {
            return;
        };
        let newest = events.last().map_or(first, |p| p.event.id);
        let mut seq = self.sequencer();
        let now = Instant::now();
        // Before the pushes: one that evicts raises it again.
        seq.ring
            .set_horizon(EventId::from_u64(first.as_u64().saturating_sub(1)));
        for p in events {
            seq.ring.push(now, p);
        }
        seq.ids.raise_floor(newest);
        self.passed_up_to(newest);
    }

    /// Marks every shard as passed by the events up to `id` (ids no
    /// publish will bring). Called with the sequencer held, or before
    /// any publish.
    fn passed_up_to(&self, id: EventId) {
        for k in 0..self.shards.len() {
            let mut shard = self.shard(k);
            shard.passed = shard.passed.max(id);
        }
    }

    /// Runs `f` with the newest id while no event can be published nor be
    /// on its way through the shards: what `f` switches on sees exactly
    /// the events after that id.
    pub fn at_last_id<T>(&self, f: impl FnOnce(EventId) -> T) -> T {
        let seq = self.sequencer();
        // Every shard, in order: a publish still passing them finishes
        // first (it only ever waits for shards after the one it holds).
        let _all: Vec<_> = (0..self.shards.len()).map(|k| self.shard(k)).collect();
        f(seq.ids.last())
    }

    /// The newest id handed out.
    pub fn last_id(&self) -> EventId {
        self.sequencer().ids.last()
    }

    /// Installs the tap (once; later calls are ignored).
    pub fn set_tap(&self, tap: Arc<dyn Tap>) {
        let _ = self.tap.set(tap);
    }

    fn sequencer(&self) -> MutexGuard<'_, Sequencer> {
        crate::sync::lock(&self.sequencer)
    }

    fn shard(&self, k: usize) -> MutexGuard<'_, Shard> {
        crate::sync::lock(&self.shards[k])
    }

    /// Gives the event an id, keeps it for replay and offers it to every
    /// matching subscriber. Never waits on a subscriber.
    ///
    /// The id's time is the draft's `received_at`, which ingest has just
    /// read: not a second read of the clock per event.
    pub fn publish(&self, draft: EventDraft) -> FanOut {
        let received_ms = u64::try_from(draft.received_at.timestamp_millis()).unwrap_or(0);
        self.fan_out(draft, |ids| Some(ids.next(received_ms)))
            .expect("a generated id is always new")
    }

    /// As [`Hub::publish`], for an event whose id was given elsewhere (the
    /// cluster's shared stream, which orders events across nodes). `None`,
    /// and nothing published, unless `id` is above every id seen so far: a
    /// reader that re-reads after reconnecting cannot publish twice.
    pub fn publish_at(&self, id: EventId, draft: EventDraft) -> Option<FanOut> {
        self.fan_out(draft, |ids| {
            (id > ids.last()).then(|| {
                ids.raise_floor(id);
                id
            })
        })
    }

    fn fan_out(
        &self,
        draft: EventDraft,
        assign: impl FnOnce(&mut crate::event::id::IdGenerator) -> Option<EventId>,
    ) -> Option<FanOut> {
        let started = Instant::now();
        let since_epoch = |at: Instant| at.duration_since(self.epoch).as_nanos() as u64;
        let quiet = since_epoch(started).saturating_sub(self.fanned_out.load(Ordering::Relaxed))
            >= INLINE_QUIET.as_nanos() as u64;
        let (published, mut shard) = {
            let mut seq = self.sequencer();
            let id = assign(&mut seq.ids)?;
            let published = Arc::new(Published::new(Event { id, draft }));
            seq.ring.push(started, published.clone());
            // The first shard before the sequencer goes: publishes enter
            // the shards in id order.
            (published, self.shard(0))
        };
        let mut tally = FanOut {
            id: published.event.id,
            queued: 0,
            written: 0,
            dropped: 0,
            deepest: 0,
        };
        let last = self.shards.len() - 1;
        for k in 0..=last {
            shard.index.offer(&published, &mut tally, quiet);
            shard.passed = published.event.id;
            if k == last {
                // Under the last shard's lock: the tap, too, sees events
                // in id order.
                if let Some(tap) = self.tap.get() {
                    tap.offer(&published);
                }
            } else {
                // The next shard before this one goes (the old guard drops
                // on assignment): no later publish can overtake this one.
                shard = self.shard(k + 1);
            }
        }
        drop(shard);
        let took = started.elapsed();
        self.fanned_out
            .store(since_epoch(started + took), Ordering::Relaxed);
        self.metrics.fanout(&tally, took);
        Some(tally)
    }

    /// Registers a subscriber. With `resume`, the events after that id that
    /// match the filter come back as a [`Replay`], with no gap and no
    /// duplicate between them and the live queue.
    pub fn subscribe(
        self: &Arc<Self>,
        filter: EventFilter,
        resume: Option<EventId>,
    ) -> Result<Subscription, SubscribeError> {
        let filter = Arc::new(filter);
        let queue = SubscriberQueue::new(
            self.config.subscriber_buffer,
            self.config.subscriber_buffer_bytes,
        );
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let k = (id % self.shards.len() as u64) as usize;
        let entry = Entry {
            filter: filter.clone(),
            queue: queue.clone(),
        };
        let replay = {
            // A resume needs the ring as it is when the subscriber joins its
            // shard: the sequencer first (the lock order).
            let seq = resume.map(|_| self.sequencer());
            let mut shard = self.shard(k);
            if shard.closed {
                return Err(SubscribeError::ShuttingDown);
            }
            let max = self.config.max_subscribers;
            if self.subscribers.fetch_add(1, Ordering::AcqRel) >= max {
                self.subscribers.fetch_sub(1, Ordering::AcqRel);
                return Err(SubscribeError::Full(max));
            }
            shard.index.insert(id, entry);
            // Ids up to `passed` went by this shard before the subscriber
            // joined it: the replay's. Later ones reach its queue.
            let live_from = shard.passed;
            seq.zip(resume)
                .map(|(mut seq, last)| seq.ring.between(Instant::now(), last, live_from))
        };
        // Filtered outside the lock: publishes do not wait on it.
        let replay = replay.map(|mut r| {
            r.events.retain(|e| filter.matches(&e.event));
            r
        });
        self.metrics.subscribers.inc();
        Ok(Subscription {
            id,
            shard: k,
            hub: self.clone(),
            filter,
            queue,
            replay,
        })
    }

    fn unsubscribe(&self, id: SubscriberId, shard: usize, filter: &EventFilter) {
        if self.shard(shard).index.remove(id, filter) {
            self.subscribers.fetch_sub(1, Ordering::AcqRel);
        }
        self.metrics.subscribers.dec();
    }

    /// Every subscriber's queue, shard by shard (`closing` also makes each
    /// shard refuse new subscribers, under the same lock).
    fn queues(&self, closing: bool) -> Vec<Arc<SubscriberQueue>> {
        (0..self.shards.len())
            .flat_map(|k| {
                let mut shard = self.shard(k);
                shard.closed |= closing;
                shard.index.queues()
            })
            .collect()
    }

    /// Closes every subscription (each stream writes a final notice and
    /// ends) and refuses new ones.
    pub fn close(&self, reason: CloseReason) {
        for q in self.queues(true) {
            q.close(reason);
        }
    }

    /// Tells every live subscriber that events may be missing before the
    /// next ones (a `gap` notice), without ending any stream.
    pub fn history_lost(&self) {
        for q in self.queues(false) {
            q.mark_gap();
        }
    }

    /// Subscribers connected now.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }

    /// The hub's series (for the dashboard's totals).
    pub fn metrics(&self) -> &HubMetrics {
        &self.metrics
    }

    /// Events held for replay now.
    pub fn replay_len(&self) -> usize {
        self.sequencer().ring.len()
    }

    /// Samples the replay gauges (at scrape time, not on every publish).
    pub fn refresh_gauges(&self) {
        let (events, bytes) = {
            let seq = self.sequencer();
            (seq.ring.len(), seq.ring.bytes())
        };
        self.metrics.replay_events.set(events as i64);
        self.metrics.replay_bytes.set(bytes as i64);
    }
}

/// A live subscription; dropping it unregisters the subscriber.
#[derive(Debug)]
pub struct Subscription {
    id: SubscriberId,
    shard: usize,
    hub: Arc<Hub>,
    filter: Arc<EventFilter>,
    /// The subscriber's queue.
    pub queue: Arc<SubscriberQueue>,
    /// Missed events to send first, when resuming.
    pub replay: Option<Replay>,
}

impl Subscription {
    /// The subscriber's filter.
    pub fn filter(&self) -> &EventFilter {
        &self.filter
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id, self.shard, &self.filter);
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_event;
    use std::task::{Context, Waker};

    fn hub(shards: usize) -> Arc<Hub> {
        Hub::new(
            HubConfig {
                replay_capacity: 100_000,
                replay_max_bytes: usize::MAX,
                replay_max_age: Duration::from_secs(600),
                subscriber_buffer: 100_000,
                subscriber_buffer_bytes: usize::MAX,
                max_subscribers: 1_000,
                shards,
            },
            HubMetrics::default(),
        )
    }

    fn everything() -> EventFilter {
        EventFilter::new(Vec::<String>::new(), Vec::<String>::new()).unwrap()
    }

    /// The ids a subscription got: its replay, then its live queue, less
    /// the live ids at or below `after`, as the stream's body drops them.
    /// (`Hub::last_id` can name an event still on its way through the
    /// shards: one that has not reached the subscriber's shard yet comes
    /// live. A client can hold such an id too, from a stream on a shard the
    /// event has passed. The replay never holds one.)
    fn received(sub: &mut Subscription, after: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = sub
            .replay
            .take()
            .map(|r| r.events.iter().map(|e| e.event.id.as_u64()).collect())
            .unwrap_or_default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while sub
            .queue
            .poll_drain(&mut cx, &mut out, usize::MAX, false)
            .is_ready()
        {
            if out.is_empty() {
                break;
            }
            ids.extend(
                out.drain(..)
                    .map(|e| e.event.id.as_u64())
                    .filter(|&id| id > after),
            );
        }
        ids
    }

    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<u64>>);
    impl Tap for Recorder {
        fn offer(&self, event: &Arc<Published>) {
            self.0.lock().unwrap().push(event.event.id.as_u64());
        }
    }

    /// Four publishers at once over four shards, and subscribers joining
    /// (some resuming) while they publish: every subscriber gets every
    /// event after the one it resumed from, once each, in id order, and
    /// so does the tap.
    #[test]
    fn concurrent_publishes_reach_every_shard_in_id_order_and_resumes_join_exactly() {
        let hub = hub(4);
        let tap = Arc::new(Recorder::default());
        hub.set_tap(tap.clone());
        let mut early: Vec<Subscription> = (0..8)
            .map(|_| hub.subscribe(everything(), None).unwrap())
            .collect();
        let published = std::thread::scope(|s| {
            let publishers: Vec<_> = (0..4)
                .map(|p| {
                    let hub = &hub;
                    s.spawn(move || {
                        (0..500)
                            .map(|i| {
                                if (i + p) % 7 == 0 {
                                    std::thread::yield_now();
                                }
                                hub.publish(test_event(0, None, None).draft).id.as_u64()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let joiners = s.spawn(|| {
                let mut joined = Vec::new();
                for _ in 0..12 {
                    let from = hub.last_id();
                    std::thread::yield_now();
                    joined.push((
                        from.as_u64(),
                        hub.subscribe(everything(), Some(from)).unwrap(),
                    ));
                }
                joined
            });
            let mut all: Vec<u64> = publishers
                .into_iter()
                .flat_map(|p| p.join().unwrap())
                .collect();
            all.sort_unstable();
            (all, joiners.join().unwrap())
        });
        let (all, joined) = published;
        assert_eq!(all.len(), 2_000);
        assert_eq!(hub.subscriber_count(), 20);
        for sub in &mut early {
            assert_eq!(
                received(sub, 0),
                all,
                "a subscriber from the start gets every event, in order"
            );
        }
        for (from, mut sub) in joined {
            let want: Vec<u64> = all.iter().copied().filter(|&id| id > from).collect();
            assert_eq!(
                received(&mut sub, from),
                want,
                "resumed after {from}: no gap, no duplicate"
            );
        }
        assert_eq!(
            *tap.0.lock().unwrap(),
            all,
            "the tap sees every event in id order"
        );
        assert_eq!(hub.subscriber_count(), 8);
    }

    #[test]
    fn closing_refuses_new_subscribers_on_every_shard_and_counts_stay_true() {
        let hub = hub(3);
        let subs: Vec<_> = (0..6)
            .map(|_| hub.subscribe(everything(), None).unwrap())
            .collect();
        assert_eq!(hub.subscriber_count(), 6);
        drop(subs);
        assert_eq!(hub.subscriber_count(), 0);
        hub.close(CloseReason::Shutdown);
        for _ in 0..3 {
            assert_eq!(
                hub.subscribe(everything(), None).unwrap_err(),
                SubscribeError::ShuttingDown
            );
        }
        assert_eq!(hub.subscriber_count(), 0);
    }
}
