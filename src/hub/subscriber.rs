//! One subscriber's bounded queue between the hub and its connection.
//!
//! The publisher only ever calls [`SubscriberQueue::offer`], which never
//! waits: when the queue is full the event is dropped *for this subscriber
//! only* and counted, so one slow client cannot slow the publisher or the
//! others. The connection side drains everything pending in one go, which
//! is what lets a busy subscriber get many events in one socket write.
//!
//! The queue holds `Arc`s of shared, already-encoded events: nothing is
//! serialised per subscriber. It is bounded by events and by bytes (the
//! events' [`Published::weight`]): a slow reader of large events pins no
//! more than `--subscriber-buffer-bytes`. One event is always taken into
//! an empty queue, whatever its size.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::Published;

/// What a slow subscriber's stream does once it has lost events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LagPolicy {
    /// Send a `lagged` notice and end the stream; the client reconnects with
    /// `Last-Event-ID` and gets what it missed from the replay ring.
    Disconnect,
    /// Send a `lagged` notice and carry on with newer events.
    Resume,
}

/// Why the hub ended a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The gateway is shutting down.
    Shutdown,
}

/// Result of offering an event to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for delivery; the queue now holds this many events.
    Queued(usize),
    /// The queue was full: dropped for this subscriber.
    Dropped,
}

/// What one drain of the queue found.
#[derive(Debug, Default)]
pub struct Drained {
    /// Events dropped since the previous drain.
    pub dropped: u64,
    /// Set once the hub has closed the queue.
    pub closed: Option<CloseReason>,
    /// Events before the ones drained may never have reached this node
    /// (see [`SubscriberQueue::mark_gap`]).
    pub gap: bool,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Arc<Published>>,
    /// Summed weight of `items`.
    bytes: usize,
    waker: Option<Waker>,
    dropped: u64,
    closed: Option<CloseReason>,
    gap: bool,
}

/// A bounded, single-consumer queue of events for one subscriber.
#[derive(Debug)]
pub struct SubscriberQueue {
    state: Mutex<State>,
    /// Something happened that the consumer has not seen (an event, a drop,
    /// the close, a gap). Cleared, under the lock, only when the consumer's
    /// waker is registered with nothing left to report: while it is clear,
    /// the next change wakes that waker, so [`Self::poll_drain`] can answer
    /// `Pending` without the lock. Each delivery ends with such a poll.
    news: AtomicBool,
    capacity: usize,
    max_bytes: usize,
}

impl SubscriberQueue {
    /// A queue holding at most `capacity` events and `max_bytes` bytes.
    pub fn new(capacity: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            news: AtomicBool::new(true),
            capacity: capacity.max(1),
            max_bytes,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single push/pop: a poisoned lock is usable.
        crate::sync::lock(&self.state)
    }

    /// Queues an event without waiting; drops it if the queue is full.
    pub fn offer(&self, event: &Arc<Published>) -> Offer {
        let waker = {
            let mut s = self.lock();
            if s.closed.is_some() {
                return Offer::Dropped;
            }
            let weight = event.weight();
            let full = s.items.len() >= self.capacity
                || (!s.items.is_empty() && s.bytes + weight > self.max_bytes);
            if full {
                s.dropped += 1;
                self.news.store(true, Ordering::Release);
                return Offer::Dropped;
            }
            s.bytes += weight;
            s.items.push_back(event.clone());
            self.news.store(true, Ordering::Release);
            // Only the first event after a drain needs a wake-up; later ones
            // are picked up by the same poll.
            let depth = s.items.len();
            (depth, if depth == 1 { s.waker.take() } else { None })
        };
        let (depth, waker) = waker;
        if let Some(w) = waker {
            w.wake();
        }
        Offer::Queued(depth)
    }

    /// Ends the subscription; the consumer sees `reason` after what is queued.
    pub fn close(&self, reason: CloseReason) {
        self.tell(|s| s.closed = Some(reason));
    }

    /// Tells the consumer, before the next events, that events it should
    /// have had may be missing: in a cluster, the shared stream lost
    /// history this node had not read yet.
    pub fn mark_gap(&self) {
        self.tell(|s| s.gap = true);
    }

    /// Records something the consumer must report, and wakes it (outside
    /// the lock).
    fn tell(&self, change: impl FnOnce(&mut State)) {
        let waker = {
            let mut s = self.lock();
            change(&mut s);
            self.news.store(true, Ordering::Release);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Moves up to `max` queued events into `out`. Pending (with the waker
    /// registered) when there is nothing to report.
    ///
    /// One task polls a queue for its whole life (the stream's): the waker
    /// registered by an earlier poll is that task's, and while nothing new
    /// has come it is still there, so this answers `Pending` without the lock.
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<Arc<Published>>,
        max: usize,
    ) -> Poll<Drained> {
        if !self.news.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        let mut s = self.lock();
        if s.items.is_empty() && s.dropped == 0 && s.closed.is_none() && !s.gap {
            Self::register(&mut s, cx);
            self.news.store(false, Ordering::Relaxed);
            return Poll::Pending;
        }
        let n = s.items.len().min(max);
        if n == 1 {
            // The common case at a steady rate, without a drain's machinery.
            if let Some(e) = s.items.pop_front() {
                s.bytes -= e.weight();
                out.push(e);
            }
        } else {
            let start = out.len();
            out.extend(s.items.drain(..n));
            s.bytes -= out[start..].iter().map(|e| e.weight()).sum::<usize>();
        }
        let closed = if s.items.is_empty() { s.closed } else { None };
        let drained = Drained {
            dropped: std::mem::take(&mut s.dropped),
            closed,
            gap: std::mem::take(&mut s.gap),
        };
        if s.items.is_empty() && s.closed.is_none() {
            // All reported: the poll that follows this delivery finds
            // nothing, and need not take the lock to find it.
            Self::register(&mut s, cx);
            self.news.store(false, Ordering::Relaxed);
        }
        Poll::Ready(drained)
    }

    fn register(s: &mut State, cx: &Context<'_>) {
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
    }

    /// Events waiting to be written.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_event;
    use std::task::Wake;

    fn published(id: u64) -> Arc<Published> {
        Arc::new(Published::new(test_event(id, None, None)))
    }

    struct CountingWaker(std::sync::atomic::AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let q = SubscriberQueue::new(2, usize::MAX);
        assert_eq!(q.offer(&published(1)), Offer::Queued(1));
        assert_eq!(q.offer(&published(2)), Offer::Queued(2));
        assert_eq!(q.offer(&published(3)), Offer::Dropped);
        assert_eq!(q.offer(&published(4)), Offer::Dropped);
        let counter = Arc::new(CountingWaker(Default::default()));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        let Poll::Ready(d) = q.poll_drain(&mut cx, &mut out, 100) else {
            panic!("expected ready")
        };
        assert_eq!(d.dropped, 2);
        assert_eq!(
            out.iter().map(|e| e.event.id.as_u64()).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(q.poll_drain(&mut cx, &mut out, 100).is_pending());
        q.offer(&published(5));
        q.offer(&published(6));
        assert_eq!(
            counter.0.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one wake per batch"
        );
    }

    #[test]
    fn a_drain_that_empties_the_queue_leaves_the_waker_for_what_comes_next() {
        let q = SubscriberQueue::new(8, usize::MAX);
        let counter = Arc::new(CountingWaker(Default::default()));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        q.offer(&published(1));
        assert!(q.poll_drain(&mut cx, &mut out, 8).is_ready());
        // No poll in between: the drain registered the waker.
        assert!(q.poll_drain(&mut cx, &mut out, 8).is_pending());
        q.offer(&published(2));
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(q.poll_drain(&mut cx, &mut out, 8).is_ready());
        assert_eq!(
            out.iter().map(|e| e.event.id.as_u64()).collect::<Vec<_>>(),
            [1, 2]
        );
        // A close after the lock-free answer wakes and is reported.
        assert!(q.poll_drain(&mut cx, &mut out, 8).is_pending());
        q.close(CloseReason::Shutdown);
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        let Poll::Ready(d) = q.poll_drain(&mut cx, &mut out, 8) else {
            panic!("the close is news")
        };
        assert_eq!(d.closed, Some(CloseReason::Shutdown));
        // A drain that leaves events behind keeps answering from the queue.
        let q = SubscriberQueue::new(8, usize::MAX);
        for id in 1..=3 {
            q.offer(&published(id));
        }
        out.clear();
        assert!(q.poll_drain(&mut cx, &mut out, 2).is_ready());
        assert!(q.poll_drain(&mut cx, &mut out, 2).is_ready());
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn a_gap_wakes_the_consumer_once_and_is_reported_once() {
        let q = SubscriberQueue::new(8, usize::MAX);
        let counter = Arc::new(CountingWaker(Default::default()));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        assert!(q.poll_drain(&mut cx, &mut out, 8).is_pending());
        q.mark_gap();
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        let Poll::Ready(d) = q.poll_drain(&mut cx, &mut out, 8) else {
            panic!("a gap alone is something to report")
        };
        assert!(d.gap && out.is_empty() && d.closed.is_none());
        assert!(
            q.poll_drain(&mut cx, &mut out, 8).is_pending(),
            "reported once"
        );
    }

    #[test]
    fn byte_budget_drops_but_an_empty_queue_takes_any_event() {
        let w = published(1).weight();
        let q = SubscriberQueue::new(100, 2 * w);
        assert_eq!(q.offer(&published(1)), Offer::Queued(1));
        assert_eq!(q.offer(&published(2)), Offer::Queued(2));
        assert_eq!(q.offer(&published(3)), Offer::Dropped);
        let mut out = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(q.poll_drain(&mut cx, &mut out, 1).is_ready());
        assert_eq!(q.offer(&published(4)), Offer::Queued(2), "room again");
        let tiny = SubscriberQueue::new(100, 1);
        assert_eq!(tiny.offer(&published(5)), Offer::Queued(1));
        assert_eq!(tiny.offer(&published(6)), Offer::Dropped);
    }

    #[test]
    fn close_is_seen_after_queued_events() {
        let q = SubscriberQueue::new(8, usize::MAX);
        q.offer(&published(1));
        q.close(CloseReason::Shutdown);
        assert_eq!(q.offer(&published(2)), Offer::Dropped);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        let Poll::Ready(d) = q.poll_drain(&mut cx, &mut out, 100) else {
            panic!("expected ready")
        };
        assert_eq!(out.len(), 1);
        assert_eq!(d.closed, Some(CloseReason::Shutdown));
    }
}
