//! One destination's bounded backlog, its delivery log, and its notice
//! clock.
//!
//! The router pushes without ever waiting: a full backlog drops its
//! oldest waiting events for this destination only, so one slow or dead
//! destination costs the others (and the SSE subscribers) nothing. The
//! destination's worker takes events out one batch at a time, in id order.
//!
//! The backlog is bounded twice: by events (`--destination-buffer`) and by
//! bytes (`--destination-buffer-bytes`, counted with
//! [`Published::weight`]), so that a burst of large events cannot pin
//! memory a count alone would allow. An event is always taken into an
//! empty backlog, whatever its size: otherwise one event larger than the
//! budget could never be delivered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::attempts::{AttemptLog, Outcome, Try};
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
    /// Sent again on request (`POST /api/registrations/{id}/replay`).
    pub replay: bool,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Not taken: the destination is gone (its last registration went).
    Closed,
    /// Queued, after dropping the oldest waiting events to make room (the
    /// backlog was full). `notice_due` when the destination should be
    /// told now (at most once per notice interval).
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
    /// Recent attempts.
    pub attempts: AttemptLog,
    /// Wakes a worker waiting out a backoff when the outbox closes.
    closing: Notify,
    /// Events taken by the worker and not yet delivered or given up on.
    in_flight: AtomicUsize,
    /// Replayed events queued or in flight (a replay runs until none are).
    replays_pending: AtomicUsize,
    /// Progress, for the cluster's checkpoints.
    progress: Mutex<Progress>,
    /// While set, nothing is taken: a takeover's older events are still
    /// being read back, and the live ones queued meanwhile must not go
    /// before them (see [`Outbox::hold`]).
    held: AtomicBool,
}

/// Which events this destination is finished with: every id up to the
/// checkpoint was delivered, refused for good, or dropped (and the
/// destination told). An event being retried is not finished: a
/// checkpoint never passes it.
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
            attempts: AttemptLog::default(),
            closing: Notify::new(),
            in_flight: AtomicUsize::new(0),
            replays_pending: AtomicUsize::new(0),
            progress: Mutex::default(),
            held: AtomicBool::new(false),
        }
    }

    /// Holds deliveries back (what is in flight finishes): events are
    /// queued but not taken until [`Outbox::release_in_order`]. A cluster
    /// node holds a destination it takes over while it reads back, from the
    /// stream, the events older than the ones it routes live from then on.
    pub fn hold(&self) {
        self.held.store(true, Ordering::Release);
    }

    /// Ends a [`Outbox::hold`]: the queue is put in id order (the events
    /// read back go before the live ones queued meanwhile; ids are the
    /// stream's order), then taken again.
    pub fn release_in_order(&self) {
        {
            let mut q = lock(&self.queue);
            q.events.make_contiguous().sort_by_key(|e| e.event.event.id);
            self.held.store(false, Ordering::Release);
        }
        self.wake.notify_one();
    }

    /// `n` taken events are being delivered.
    pub fn begin(&self, n: usize) {
        self.in_flight.fetch_add(n, Ordering::AcqRel);
    }

    /// These events are delivered or given up on.
    pub fn end(&self, batch: &[Queued]) {
        self.in_flight.fetch_sub(batch.len(), Ordering::AcqRel);
        self.replays_done(batch);
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

    /// Queues an event, dropping the oldest waiting ones first while the
    /// backlog is full (in events or in bytes). Never waits. A closed
    /// outbox takes nothing and counts nothing: its destination is gone.
    pub fn push(&self, event: Arc<Published>) -> Pushed {
        self.push_as(event, false)
    }

    /// As [`Outbox::push`], for an event sent again on request.
    pub fn push_replay(&self, event: Arc<Published>) -> Pushed {
        self.push_as(event, true)
    }

    fn push_as(&self, event: Arc<Published>, replay: bool) -> Pushed {
        if self.is_closed() {
            return Pushed::Closed;
        }
        if replay {
            self.replays_pending.fetch_add(1, Ordering::AcqRel);
        }
        let id = event.event.id.as_u64();
        let weight = event.weight();
        let mut dropped = Vec::new();
        {
            let mut q = lock(&self.queue);
            while !q.events.is_empty()
                && (q.events.len() >= self.limits.events
                    || q.bytes.saturating_add(weight) > self.limits.bytes)
            {
                let Some(old) = q.events.pop_front() else {
                    break;
                };
                q.bytes -= old.event.weight();
                dropped.push(old);
            }
            let mut p = lock(&self.progress);
            p.offered = p.offered.max(id);
            // Before it can be taken: its end must find it.
            p.unfinished.insert(id);
            for old in &dropped {
                p.unfinished.remove(&old.event.event.id.as_u64());
            }
            drop(p);
            q.events.push_back(Queued {
                at: Instant::now(),
                event,
                replay,
            });
            q.bytes += weight;
            self.set_gauges(&q);
        }
        self.wake.notify_one();
        if dropped.is_empty() {
            return Pushed::Queued;
        }
        self.replays_done(&dropped);
        let n = dropped.len() as u64;
        self.metrics.dropped.inc_by(n);
        self.dropped_since_notice.fetch_add(n, Ordering::Relaxed);
        for old in &dropped {
            self.attempts.record(
                Try {
                    event_id: old.event.event.id,
                    attempt: 0,
                    replay: old.replay,
                },
                Outcome::Dropped,
                None,
                Some("the backlog was over budget"),
                Duration::ZERO,
            );
        }
        Pushed::Dropped {
            notice_due: self.notice_due(),
        }
    }

    /// Replayed events of `batch` are finished.
    fn replays_done(&self, batch: &[Queued]) {
        let n = batch.iter().filter(|q| q.replay).count();
        if n > 0 {
            self.replays_pending.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Replayed events still queued or in flight.
    pub fn replays_pending(&self) -> usize {
        self.replays_pending.load(Ordering::Acquire)
    }

    /// Whether the backlog is under half its budget (a replay waits for
    /// room instead of pushing the oldest out).
    pub fn has_room(&self) -> bool {
        let q = lock(&self.queue);
        q.events.len() < self.limits.events.div_ceil(2) && q.bytes < self.limits.bytes / 2
    }

    /// Whether a notice may go now (at most one per notice interval); if
    /// so, the interval starts again.
    pub fn notice_due(&self) -> bool {
        let now = Instant::now();
        let mut last = lock(&self.last_notice);
        let due = last.is_none_or(|t| now.duration_since(t) >= self.notice_interval);
        if due {
            *last = Some(now);
        }
        due
    }

    /// Records one outcome for every event of `batch`.
    pub fn record_all(
        &self,
        batch: &[Queued],
        attempt: u32,
        outcome: Outcome,
        status: Option<u16>,
        error: Option<&str>,
        took: Duration,
    ) {
        for q in batch {
            let what = Try {
                event_id: q.event.event.id,
                attempt,
                replay: q.replay,
            };
            self.attempts.record(what, outcome, status, error, took);
        }
    }

    /// Waits `wait`, or less if the outbox closes meanwhile.
    pub async fn closed_or_after(&self, wait: Duration) {
        let closing = self.closing.notified();
        if self.is_closed() {
            return;
        }
        let _ = tokio::time::timeout(wait, closing).await;
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
                if !q.events.is_empty() && !self.held.load(Ordering::Acquire) {
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

    /// Stops the worker and gives up on what is queued (every
    /// registration naming the destination ended): counted and logged as
    /// expired.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let left = std::mem::take(&mut *lock(&self.queue));
        lock(&self.progress).unfinished.clear();
        self.wake.notify_one();
        self.closing.notify_waiters();
        let n = left.events.len() as u64;
        self.replays_pending.store(0, Ordering::Release);
        if n > 0 {
            self.metrics.expired.inc_by(n);
            let batch: Vec<Queued> = left.events.into();
            self.record_all(&batch, 0, Outcome::Expired, None, None, Duration::ZERO);
            tracing::info!(destination = %self.label, events = n, "registrations ended: events still waiting for this destination given up");
        }
    }

    /// Whether the outbox was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
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
            previous_secret_ttl: None,
            previous_secret: None,
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
    async fn a_full_backlog_drops_its_oldest_and_asks_for_one_notice_per_interval() {
        let o = outbox(2);
        assert_eq!(o.push(ev(1)), Pushed::Queued);
        assert_eq!(o.push(ev(2)), Pushed::Queued);
        assert_eq!(o.push(ev(3)), Pushed::Dropped { notice_due: true });
        assert_eq!(o.push(ev(4)), Pushed::Dropped { notice_due: false });
        assert_eq!(o.metrics.dropped.get(), 2);
        assert_eq!(o.take_dropped_since_notice(), 2);
        let batch = o.take(10).await.unwrap();
        let ids: Vec<u64> = batch.iter().map(|q| q.event.event.id.as_u64()).collect();
        assert_eq!(ids, [3, 4], "the newest are kept");
        let logged: Vec<(u64, Outcome)> = o
            .attempts
            .page(10, None)
            .deliveries
            .iter()
            .map(|a| (a.event_id.as_u64(), a.outcome))
            .collect();
        assert_eq!(logged, [(2, Outcome::Dropped), (1, Outcome::Dropped)]);
        o.close();
        assert!(o.take(10).await.is_none());
    }

    #[tokio::test]
    async fn byte_budget_drops_the_oldest_but_an_empty_backlog_takes_any_event() {
        let weight = ev(1).weight();
        let o = outbox_within(100, weight * 2);
        assert_eq!(o.push(ev(1)), Pushed::Queued);
        assert_eq!(o.push(ev(2)), Pushed::Queued);
        assert_eq!(o.bytes(), weight * 2);
        assert_eq!(o.push(ev(3)), Pushed::Dropped { notice_due: true });
        assert_eq!(o.bytes(), weight * 2);
        let first = o.take(1).await.unwrap();
        assert_eq!(first[0].event.event.id.as_u64(), 2);
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
        assert_eq!(tiny.depth(), 1);
    }

    #[tokio::test]
    async fn a_closed_outbox_takes_and_counts_nothing_and_what_waited_expires() {
        let o = outbox(4);
        o.push(ev(1));
        o.push(ev(2));
        o.close();
        assert_eq!(o.metrics.expired.get(), 2);
        assert_eq!(o.push(ev(3)), Pushed::Closed);
        assert_eq!(o.push(ev(4)), Pushed::Closed);
        assert_eq!((o.depth(), o.metrics.dropped.get()), (0, 0));
        let page = o.attempts.page(10, None);
        assert!(page
            .deliveries
            .iter()
            .all(|a| a.outcome == Outcome::Expired));
    }

    #[tokio::test]
    async fn a_backoff_ends_when_the_outbox_closes() {
        let o = Arc::new(outbox(1));
        let waiting = {
            let o = o.clone();
            tokio::spawn(async move { o.closed_or_after(Duration::from_secs(3600)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        o.close();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the close")
            .unwrap();
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
        let first = o.take(1).await.unwrap();
        o.push(ev(2));
        o.push(ev(3));
        assert!(matches!(o.push(ev(4)), Pushed::Dropped { .. }), "2 goes");
        assert_eq!(at(&o, 4), None, "1 is in flight");
        o.end(&first);
        assert_eq!(at(&o, 4), Some(2), "dropped counts as finished; 3 waits");
        let rest = o.take(10).await.unwrap();
        o.end(&rest);
        assert_eq!(at(&o, 4), Some(4));
        assert_eq!(at(&o, 9), Some(9), "events routed elsewhere since then");
    }

    #[tokio::test]
    async fn a_held_outbox_gives_nothing_then_everything_in_id_order() {
        let o = Arc::new(outbox(8));
        o.hold();
        o.push(ev(5));
        o.push(ev(6));
        let taking = {
            let o = o.clone();
            tokio::spawn(async move { o.take(10).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!taking.is_finished(), "nothing is taken while held");
        o.push_replay(ev(3));
        o.push_replay(ev(4));
        o.release_in_order();
        let batch = tokio::time::timeout(Duration::from_secs(5), taking)
            .await
            .expect("taken once released")
            .unwrap()
            .unwrap();
        let ids: Vec<u64> = batch.iter().map(|q| q.event.event.id.as_u64()).collect();
        assert_eq!(ids, [3, 4, 5, 6]);
    }
}
