//! One destination's bounded buffer, its circuit, and its notice clock.
//!
//! The router pushes without ever waiting: a full buffer drops the event
//! for this destination only, so one slow or dead destination costs the
//! others (and the SSE subscribers) nothing. The destination's worker takes
//! events out in batches.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::hub::Published;
use crate::registry::spec::Destination;
use crate::sync::lock;
use crate::telemetry::DestinationMetrics;

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
    /// Dropped: the buffer was full. `notice_due` when the destination
    /// should be told now (at most once per notice interval).
    Dropped {
        /// Whether a notice should go out.
        notice_due: bool,
    },
}

/// A destination's buffer and delivery state.
#[derive(Debug)]
pub struct Outbox {
    /// Where the events go.
    pub destination: Destination,
    /// The destination's safe label (metrics, logs).
    pub label: String,
    capacity: usize,
    queue: Mutex<VecDeque<Queued>>,
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
}

impl Outbox {
    /// An empty outbox.
    pub fn new(
        destination: Destination,
        capacity: usize,
        notice_interval: Duration,
        metrics: DestinationMetrics,
    ) -> Self {
        Self {
            label: destination.label(),
            destination,
            capacity,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            metrics,
            notice_interval,
            last_notice: Mutex::new(None),
            dropped_since_notice: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            open_until: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// `n` taken events are being delivered.
    pub fn begin(&self, n: usize) {
        self.in_flight.fetch_add(n, Ordering::AcqRel);
    }

    /// `n` events are delivered or given up on.
    pub fn end(&self, n: usize) {
        self.in_flight.fetch_sub(n, Ordering::AcqRel);
    }

    /// Events waiting or being delivered: what a stop now would abandon.
    pub fn unfinished(&self) -> (usize, usize) {
        (self.depth(), self.in_flight.load(Ordering::Acquire))
    }

    /// Queues an event, or drops it if the buffer is full. Never waits.
    pub fn push(&self, event: Arc<Published>) -> Pushed {
        {
            let mut q = lock(&self.queue);
            if q.len() < self.capacity {
                q.push_back(Queued {
                    at: Instant::now(),
                    event,
                });
                self.metrics.queue_depth.set(q.len() as i64);
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
                if !q.is_empty() {
                    let n = q.len().min(max.max(1));
                    let batch: Vec<Queued> = q.drain(..n).collect();
                    self.metrics.queue_depth.set(q.len() as i64);
                    return Some(batch);
                }
            }
            self.wake.notified().await;
        }
    }

    /// Events waiting now.
    pub fn depth(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Refreshes the depth and oldest-age gauges.
    pub fn refresh_gauges(&self) {
        let q = lock(&self.queue);
        self.metrics.queue_depth.set(q.len() as i64);
        let age = q.front().map_or(0.0, |f| f.at.elapsed().as_secs_f64());
        self.metrics.oldest_age.set(age);
    }

    /// Stops the worker and discards what is queued.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        lock(&self.queue).clear();
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
    use crate::hub::Published;
    use crate::registry::spec::{BodyFormat, HttpDestination};
    use crate::telemetry::Metrics;

    fn outbox(capacity: usize) -> Outbox {
        let d = Destination::Http(HttpDestination {
            url: "http://x.example/".into(),
            secret: None,
            headers: Default::default(),
            content_type: BodyFormat::Json,
            failure_url: None,
        });
        Outbox::new(
            d,
            capacity,
            Duration::from_secs(60),
            Metrics::new().destination("x"),
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
