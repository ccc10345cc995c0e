//! One destination's bounded buffer, its circuit, and its notice clock.
//!
//! The router pushes without ever waiting: a full buffer drops the event
//! for this destination only, so one slow or dead destination costs the
//! others (and the SSE subscribers) nothing. The destination's worker takes
//! events out in batches.
//!
//! The buffer is bounded twice: by events (`--destination-buffer`) and by
//! bytes (`--destination-buffer-bytes`, counted with
//! [`Published::weight`]), so that a burst of large events cannot pin
//! memory a count alone would allow. An event is always taken into an
//! empty buffer, whatever its size: otherwise one event larger than the
//! budget could never be delivered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::destination::Destination;
use super::metrics::DestinationMetrics;
use crate::hub::Published;
use crate::sync::lock;

/// An event waiting for a destination.
#[derive(Debug, Clone)]
pub struct Queued {
    /// When it was queued.
    pub at: Instant,
    /// The event.
    pub event: Arc<Published>,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Not taken: the destination is gone (its last registration went).
    Closed,
    /// Dropped: the buffer was full. `notice_due` when the destination
    /// should be told now (at most once per notice interval).
    Dropped {
        /// Whether a notice should go out.
        notice_due: bool,
    },
}

/// How much a buffer may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    /// Events.
    pub events: usize,
    /// Bytes ([`Published::weight`]).
    pub bytes: usize,
}

/// The waiting events and their summed weight.
#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Queued>,
    bytes: usize,
}

/// A destination's buffer and delivery state.
#[derive(Debug)]
pub struct Outbox {
    /// Where the events go.
    pub destination: Arc<Destination>,
    /// The destination's safe label (metrics, logs).
    pub label: String,
    limits: BufferLimits,
    queue: Mutex<Queue>,
    wake: Notify,
    closed: AtomicBool,
    /// The destination's series.
    pub metrics: DestinationMetrics,
    notice_interval: Duration,
    last_notice: Mutex<Option<Instant>>,
    dropped_since_notice: AtomicU64,
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
    /// Events taken by the worker and not yet delivered or given up on.
    in_flight: AtomicUsize,
    /// Progress, for the cluster's checkpoints.
    progress: Mutex<Progress>,
}

/// Which events this destination is finished with: every id up to the
/// checkpoint was delivered, given up on, or dropped.
#[derive(Debug, Default)]
struct Progress {
    /// Queued or in flight.
    unfinished: std::collections::BTreeSet<u64>,
    /// The newest id ever offered.
    offered: u64,
}

impl Outbox {
    /// An empty outbox.
    pub fn new(
        destination: Arc<Destination>,
        limits: BufferLimits,
        notice_interval: Duration,
        metrics: DestinationMetrics,
    ) -> Self {
        Self {
            label: destination.label(),
            destination,
            limits,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            metrics,
            notice_interval,
            last_notice: Mutex::new(None),
            dropped_since_notice: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            open_until: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            progress: Mutex::default(),
        }
    }

    /// `n` taken events are being delivered.
    pub fn begin(&self, n: usize) {
        self.in_flight.fetch_add(n, Ordering::AcqRel);
    }

    /// These events are delivered or given up on.
    pub fn end(&self, batch: &[Queued]) {
        self.in_flight.fetch_sub(batch.len(), Ordering::AcqRel);
        let mut p = lock(&self.progress);
        for q in batch {
            p.unfinished.remove(&q.event.event.id.as_u64());
        }
    }

    /// The newest id such that this destination is finished with every
    /// event up to it (delivered, given up on, or dropped), given that the
    /// router has routed every event up to `routed` (what did not reach
    /// this outbox was not for it); `None` before the first event. What the
    /// cluster checkpoints.
    pub fn checkpoint(&self, routed: crate::event::EventId) -> Option<crate::event::EventId> {
        let p = lock(&self.progress);
        let done = match p.unfinished.first() {
            Some(&oldest) => oldest - 1,
            None => p.offered.max(routed.as_u64()),
        };
        let behind_ms = routed
            .unix_ms()
            .saturating_sub(crate::event::EventId::from_u64(done).unix_ms());
        self.metrics.checkpoint_lag.set(behind_ms as f64 / 1000.0);
        (done > 0).then(|| crate::event::EventId::from_u64(done))
    }

    /// Events waiting or being delivered: what a stop now would abandon.
    pub fn unfinished(&self) -> (usize, usize) {
        (self.depth(), self.in_flight.load(Ordering::Acquire))
    }

    /// Queues an event, or drops it if the buffer is full (in events or
    /// in bytes). Never waits. A closed outbox takes nothing and counts
    /// nothing: its destination is gone.
    pub fn push(&self, event: Arc<Published>) -> Pushed {
        if self.is_closed() {
            return Pushed::Closed;
        }
        let id = event.event.id.as_u64();
        {
            let mut p = lock(&self.progress);
            p.offered = p.offered.max(id);
        }
        {
            let mut q = lock(&self.queue);
            let weight = event.weight();
            let fits = q.events.is_empty()
                || (q.events.len() < self.limits.events
                    && q.bytes.saturating_add(weight) <= self.limits.bytes);
            if fits {
                // Before it can be taken: its end must find it.
                lock(&self.progress).unfinished.insert(id);
                q.events.push_back(Queued {
                    at: Instant::now(),
                    event,
                });
                q.bytes += weight;
                self.set_gauges(&q);
                drop(q);
                self.wake.notify_one();
                return Pushed::Queued;
            }
        }
        self.metrics.dropped.inc();
        self.dropped_since_notice.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut last = lock(&self.last_notice);
        let due = last.is_none_or(|t| now.duration_since(t) >= self.notice_interval);
        if due {
            *last = Some(now);
        }
        Pushed::Dropped { notice_due: due }
    }

    /// Drops counted since the last notice, resetting the count.
    pub fn take_dropped_since_notice(&self) -> u64 {
        self.dropped_since_notice.swap(0, Ordering::Relaxed)
    }

    /// Waits for events and takes up to `max` of them; `None` once closed.
    pub async fn take(&self, max: usize) -> Option<Vec<Queued>> {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            {
                let mut q = lock(&self.queue);
                if !q.events.is_empty() {
                    let n = q.events.len().min(max.max(1));
                    let batch: Vec<Queued> = q.events.drain(..n).collect();
                    q.bytes -= batch.iter().map(|b| b.event.weight()).sum::<usize>();
                    self.set_gauges(&q);
                    return Some(batch);
                }
            }
            self.wake.notified().await;
        }
    }

    fn set_gauges(&self, q: &Queue) {
        self.metrics.queue_depth.set(q.events.len() as i64);
        self.metrics.queue_bytes.set(q.bytes as i64);
    }

    /// Events waiting now.
    pub fn depth(&self) -> usize {
        lock(&self.queue).events.len()
    }

    /// Bytes of the events waiting now.
    pub fn bytes(&self) -> usize {
        lock(&self.queue).bytes
    }

    /// Refreshes the depth and oldest-age gauges.
    pub fn refresh_gauges(&self) {
        let q = lock(&self.queue);
        self.set_gauges(&q);
        let age = q
            .events
            .front()
            .map_or(0.0, |f| f.at.elapsed().as_secs_f64());
        self.metrics.oldest_age.set(age);
    }

    /// Stops the worker and discards what is queued.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        *lock(&self.queue) = Queue::default();
        lock(&self.progress).unfinished.clear();
        self.wake.notify_one();
    }

    /// Whether the outbox was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// A delivery succeeded: the circuit closes.
    pub fn record_success(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// A delivery failed; after `threshold` in a row the circuit opens for
    /// `pause`. Returns whether it opened now.
    pub fn record_failure(&self, threshold: u32, pause: Duration) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold {
            self.failures.store(0, Ordering::Relaxed);
            *lock(&self.open_until) = Some(Instant::now() + pause);
            return true;
        }
        false
    }

    /// How long the circuit stays open, if it is.
    pub fn paused_for(&self) -> Option<Duration> {
        let mut open = lock(&self.open_until);
        match *open {
            Some(until) if until > Instant::now() => Some(until - Instant::now()),
            Some(_) => {
                *open = None;
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::destination::{BodyFormat, HttpDestination};
    use crate::forward::metrics::ForwardMetrics;
    use crate::hub::Published;

    fn outbox(capacity: usize) -> Outbox {
        outbox_within(capacity, usize::MAX)
    }

    fn outbox_within(events: usize, bytes: usize) -> Outbox {
        let d = Destination::Http(HttpDestination {
            url: "http://x.example/".into(),
            secret: None,
            headers: Default::default(),
            content_type: BodyFormat::Json,
            failure_url: None,
        });
        let metrics = ForwardMetrics::register(&mut Default::default());
        Outbox::new(
            Arc::new(d),
            BufferLimits { events, bytes },
            Duration::from_secs(60),
            metrics.destination("x"),
        )
    }

    fn ev(id: u64) -> Arc<Published> {
        Arc::new(Published::new(crate::event::test_event(id, None, None)))
    }

    #[tokio::test]
    async fn full_buffer_drops_and_asks_for_one_notice_per_interval() {
        let o = outbox(2);
        assert_eq!(o.push(ev(1)), Pushed::Queued);
        assert_eq!(o.push(ev(2)), Pushed::Queued);
        assert_eq!(o.push(ev(3)), Pushed::Dropped { notice_due: true });
        assert_eq!(o.push(ev(4)), Pushed::Dropped { notice_due: false });
        assert_eq!(o.metrics.dropped.get(), 2);
        assert_eq!(o.take_dropped_since_notice(), 2);
        let batch = o.take(10).await.unwrap();
        let ids: Vec<u64> = batch.iter().map(|q| q.event.event.id.as_u64()).collect();
        assert_eq!(ids, [1, 2]);
        o.close();
        assert!(o.take(10).await.is_none());
    }

    #[tokio::test]
    async fn byte_budget_drops_but_an_empty_buffer_takes_any_event() {
        let weight = ev(1).weight();
        let o = outbox_within(100, weight * 2);
        assert_eq!(o.push(ev(1)), Pushed::Queued);
        assert_eq!(o.push(ev(2)), Pushed::Queued);
        assert_eq!(o.bytes(), weight * 2);
        assert_eq!(o.push(ev(3)), Pushed::Dropped { notice_due: true });
        assert_eq!(o.take(1).await.unwrap().len(), 1);
        assert_eq!(o.bytes(), weight);
        assert_eq!(o.push(ev(4)), Pushed::Queued);
        assert_eq!(o.take(10).await.unwrap().len(), 2);
        assert_eq!(o.bytes(), 0);
        let tiny = outbox_within(100, 1);
        assert_eq!(
            tiny.push(ev(5)),
            Pushed::Queued,
            "larger than the budget, but alone"
        );
        assert!(matches!(tiny.push(ev(6)), Pushed::Dropped { .. }));
    }

    #[tokio::test]
    async fn a_closed_outbox_takes_and_counts_nothing() {
        let o = outbox(1);
        o.close();
        assert_eq!(o.push(ev(1)), Pushed::Closed);
        assert_eq!(o.push(ev(2)), Pushed::Closed);
        assert_eq!((o.depth(), o.metrics.dropped.get()), (0, 0));
    }

    #[tokio::test]
    async fn the_checkpoint_waits_for_the_oldest_unfinished_event() {
        let o = outbox(2);
        let at = |o: &Outbox, r: u64| {
            o.checkpoint(crate::event::EventId::from_u64(r))
                .map(|i| i.as_u64())
        };
        assert_eq!(at(&o, 0), None);
        o.push(ev(1));
        o.push(ev(2));
        assert!(matches!(o.push(ev(3)), Pushed::Dropped { .. }));
        assert_eq!(at(&o, 3), None, "1 and 2 are queued");
        let first = o.take(1).await.unwrap();
        let second = o.take(1).await.unwrap();
        o.end(&second);
        assert_eq!(at(&o, 3), None, "event 1 is still in flight");
        o.end(&first);
        assert_eq!(at(&o, 3), Some(3), "dropped counts as finished");
        assert_eq!(at(&o, 9), Some(9), "events routed elsewhere since then");
    }

    #[test]
    fn circuit_opens_after_consecutive_failures_only() {
        let o = outbox(1);
        let pause = Duration::from_secs(30);
        assert!(!o.record_failure(3, pause));
        assert!(!o.record_failure(3, pause));
        o.record_success();
        assert!(!o.record_failure(3, pause));
        assert!(!o.record_failure(3, pause));
        assert!(o.paused_for().is_none());
        assert!(o.record_failure(3, pause));
        assert!(o.paused_for().is_some());
    }
}
