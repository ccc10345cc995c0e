//! The hub: ids, the replay ring, and fan-out to subscribers.
//!
//! Data flows one way: ingest hands an [`EventDraft`] to [`Hub::publish`],
//! which gives it an id, encodes its SSE frame once, keeps it in the
//! [`ReplayRing`] and offers the shared frame to every subscriber whose
//! filter matches. Subscribers are indexed by device, with a separate list
//! for those without a device filter, so one event costs O(matching
//! subscribers), not O(all subscribers).
//!
//! One short mutex covers id assignment, the ring and the index, and is
//! never held across an `.await`; offering to a subscriber never waits (see
//! [`subscriber`]). Holding it through the fan-out is what makes delivery
//! order equal id order, and what lets a resuming subscriber join with no
//! gap and no duplicate between its replay and its live events.

pub mod filter;
pub mod frame;
pub mod replay;
pub mod subscriber;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use indexmap::IndexMap;

pub use filter::EventFilter;
pub use replay::{Replay, ReplayRing};
pub use subscriber::{CloseReason, Drained, LagPolicy, Offer, SubscriberQueue};

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
    data_frame: OnceLock<Bytes>,
    envelope_frame: OnceLock<Bytes>,
    weight: usize,
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
        let id = || self.event.id.to_string();
        match format {
            Format::Data => self
                .data_frame
                .get_or_init(|| frame::event(Some(&id()), None, &self.event.draft.data)),
            Format::Envelope => self
                .envelope_frame
                .get_or_init(|| frame::event(Some(&id()), None, &self.event.envelope_json())),
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
}

/// The hub's own series.
#[derive(Debug, Clone)]
pub struct HubMetrics {
    subscribers: Gauge,
    replay_events: Gauge,
    replay_bytes: Gauge,
    deliveries: Counter,
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

    fn fanout(&self, queued: u64, dropped: u64, took: Duration) {
        self.deliveries.inc_by(queued);
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
/// forwarders. `offer` runs inside the hub's publish lock, so it must only
/// hand the event over (a `try_send`), never wait or do real work.
pub trait Tap: Send + Sync + std::fmt::Debug {
    /// Takes a reference to a new event.
    fn offer(&self, event: &Arc<Published>);
}

/// The fan-out point between ingest and subscribers.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    tap: OnceLock<Arc<dyn Tap>>,
    config: HubConfig,
    metrics: HubMetrics,
    next_subscriber: AtomicU64,
}

#[derive(Debug)]
struct State {
    ids: crate::event::id::IdGenerator,
    ring: ReplayRing,
    index: Index,
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
    count: usize,
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
}

/// What one publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanOut {
    /// The id given to the event.
    pub id: EventId,
    /// Subscribers it was queued for.
    pub queued: usize,
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
        Arc::new(Self {
            state: Mutex::new(State {
                ids: Default::default(),
                ring,
                index: Index::default(),
                closed: false,
            }),
            tap: OnceLock::new(),
            config,
            metrics,
            next_subscriber: AtomicU64::new(1),
        })
    }

    /// Continues ids above `mark`, the high-water mark a previous process
    /// stored: ids keep increasing across a restart even if the clock went
    /// back, and a client holding one below it resumes with a `gap`.
    pub fn resume_ids_above(&self, mark: EventId) {
        let mut state = self.lock();
        state.ids.raise_floor(mark);
        state.ring.raise_horizon(mark);
    }

    /// Runs `f` with the newest id while no event can be published: what
    /// `f` switches on sees exactly the events after that id.
    pub fn at_last_id<T>(&self, f: impl FnOnce(EventId) -> T) -> T {
        let state = self.lock();
        f(state.ids.last())
    }

    /// The newest id handed out.
    pub fn last_id(&self) -> EventId {
        self.lock().ids.last()
    }

    /// Installs the tap (once; later calls are ignored).
    pub fn set_tap(&self, tap: Arc<dyn Tap>) {
        let _ = self.tap.set(tap);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Gives the event an id, keeps it for replay and offers it to every
    /// matching subscriber. Never waits on a subscriber.
    pub fn publish(&self, draft: EventDraft) -> FanOut {
        self.fan_out(draft, |ids| Some(ids.next(unix_ms())))
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
        let device = draft.device.clone();
        let (mut queued, mut dropped, mut deepest) = (0, 0, 0);
        let id;
        {
            let mut state = self.lock();
            id = assign(&mut state.ids)?;
            let published = Arc::new(Published::new(Event { id, draft }));
            state.ring.push(started, published.clone());
            let index = &state.index;
            let device_entries = device.as_ref().and_then(|d| index.by_device.get(d));
            for entry in index
                .any_device
                .values()
                .chain(device_entries.into_iter().flat_map(|m| m.values()))
            {
                if !entry.filter.matches_indexed(&published.event) {
                    continue;
                }
                match entry.queue.offer(&published) {
                    Offer::Queued(depth) => {
                        queued += 1;
                        deepest = deepest.max(depth);
                    }
                    Offer::Dropped => dropped += 1,
                }
            }
            if let Some(tap) = self.tap.get() {
                tap.offer(&published);
            }
        }
        self.metrics
            .fanout(queued as u64, dropped as u64, started.elapsed());
        Some(FanOut {
            id,
            queued,
            dropped,
            deepest,
        })
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
        let replay = {
            let mut state = self.lock();
            if state.closed {
                return Err(SubscribeError::ShuttingDown);
            }
            if state.index.count >= self.config.max_subscribers {
                return Err(SubscribeError::Full(self.config.max_subscribers));
            }
            let entry = Entry {
                filter: filter.clone(),
                queue: queue.clone(),
            };
            if filter.devices().is_empty() {
                state.index.any_device.insert(id, entry);
            } else {
                for d in filter.devices() {
                    state
                        .index
                        .by_device
                        .entry(d.clone())
                        .or_default()
                        .insert(id, entry.clone());
                }
            }
            state.index.count += 1;
            let live_from = state.ids.last();
            resume.map(|last| Replay {
                live_from,
                ..state.ring.after(Instant::now(), last)
            })
        };
        // Filtered outside the lock: publishes do not wait on it.
        let replay = replay.map(|mut r| {
            r.events.retain(|e| filter.matches(&e.event));
            r
        });
        self.metrics.subscribers.inc();
        Ok(Subscription {
            id,
            hub: self.clone(),
            filter,
            queue,
            replay,
        })
    }

    fn unsubscribe(&self, id: SubscriberId, filter: &EventFilter) {
        {
            let mut state = self.lock();
            let index = &mut state.index;
            let removed = if filter.devices().is_empty() {
                index.any_device.swap_remove(&id).is_some()
            } else {
                let mut any = false;
                for d in filter.devices() {
                    if let Some(m) = index.by_device.get_mut(d) {
                        any |= m.swap_remove(&id).is_some();
                        if m.is_empty() {
                            index.by_device.remove(d);
                        }
                    }
                }
                any
            };
            if removed {
                index.count -= 1;
            }
        }
        self.metrics.subscribers.dec();
    }

    /// Closes every subscription (each stream writes a final notice and
    /// ends) and refuses new ones.
    pub fn close(&self, reason: CloseReason) {
        let queues = {
            let mut state = self.lock();
            state.closed = true;
            state.index.queues()
        };
        for q in queues {
            q.close(reason);
        }
    }

    /// Tells every live subscriber that events may be missing before the
    /// next ones (a `gap` notice), without ending any stream.
    pub fn history_lost(&self) {
        let queues = self.lock().index.queues();
        for q in queues {
            q.mark_gap();
        }
    }

    /// Subscribers connected now.
    pub fn subscriber_count(&self) -> usize {
        self.lock().index.count
    }

    /// The hub's series (for the dashboard's totals).
    pub fn metrics(&self) -> &HubMetrics {
        &self.metrics
    }

    /// Events held for replay now.
    pub fn replay_len(&self) -> usize {
        self.lock().ring.len()
    }

    /// Samples the replay gauges (at scrape time, not on every publish).
    pub fn refresh_gauges(&self) {
        let (events, bytes) = {
            let state = self.lock();
            (state.ring.len(), state.ring.bytes())
        };
        self.metrics.replay_events.set(events as i64);
        self.metrics.replay_bytes.set(bytes as i64);
    }
}

/// A live subscription; dropping it unregisters the subscriber.
#[derive(Debug)]
pub struct Subscription {
    id: SubscriberId,
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
        self.hub.unsubscribe(self.id, &self.filter);
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
