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
//!
//! A queue may also hold a [`Lane`]: a way to write an event's bytes to the
//! subscriber's socket at once, from the publisher, while the queue is empty
//! and the consumer has written everything it took ("armed"). On a
//! one-worker runtime this saves the wake-up and poll of the stream's task
//! per delivery, which is most of what a delivery costs above the `send`
//! itself. Anything the lane cannot write whole (a full send buffer, an
//! error) disarms it and goes through the queue as usual, with the number
//! of bytes already written, so the consumer writes only the rest. The lane
//! writes only while nothing is queued or to report (drops, a gap, the
//! close) and the consumer holds nothing it has not written, so bytes never
//! go out of order.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::frame::Transfer;
use super::{Format, Published};
use crate::event::EventId;

/// What a slow subscriber's stream does once it has lost events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LagPolicy {
    /// Send a `lagged` notice and end the stream; the client reconnects with
    /// `Last-Event-ID` and gets what it missed from the replay ring.
    Disconnect,
    /// Send a `lagged` notice and carry on with newer events.
    Resume,
}

/// Why the hub (or the stream itself) ended a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The gateway is shutting down.
    Shutdown,
    /// The stream's credential no longer holds; the notice says why (the
    /// reason the lease gave).
    Revoked(&'static str),
}

/// Result of offering an event to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for delivery; the queue now holds this many events.
    Queued(usize),
    /// Written whole to the subscriber's socket through its [`Lane`].
    Written,
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
    /// Bytes of the first drained event's frame the lane already wrote:
    /// the consumer writes only the rest of that frame.
    pub partial: usize,
    /// What the lane wrote since the consumer last asked.
    pub lane: Option<LaneWrite>,
}

/// Writes bytes to a subscriber's connection now, without waiting.
pub trait DirectWrite: Send + Sync + std::fmt::Debug {
    /// Writes what it can of `bytes` at once: how many it took (0 when the
    /// connection has no room), or the connection's error.
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize>;
}

/// A subscriber's connection, as its queue may write to it directly (see
/// the module's documentation), with the frame form its stream writes.
#[derive(Debug, Clone)]
pub struct Lane {
    /// The connection.
    pub writer: std::sync::Arc<dyn DirectWrite>,
    /// The stream's `format`.
    pub format: Format,
    /// How the stream's bytes travel.
    pub transfer: Transfer,
}

/// The request extension with which a connection that writes a stream's
/// bytes as they are (the lean HTTP/1.x path) offers itself as a [`Lane`].
#[derive(Debug, Clone)]
pub struct DirectConnection(pub std::sync::Arc<dyn DirectWrite>);

/// The last event a lane wrote, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneWrite {
    /// Its id.
    pub id: EventId,
    /// When its last byte went out.
    pub at: tokio::time::Instant,
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
    lane: Option<Lane>,
    /// Bytes of the first queued event the lane already wrote.
    partial: usize,
    /// The lane's last write, not yet seen by the consumer.
    wrote: Option<LaneWrite>,
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
    /// The lane may write: the consumer has written all it took. Set by the
    /// consumer without the lock (at the poll after its write), cleared
    /// under the lock by its drain; a publish writes through the lane only
    /// when, besides, nothing is queued or to report.
    armed: AtomicBool,
    capacity: usize,
    max_bytes: usize,
}

impl SubscriberQueue {
    /// A queue holding at most `capacity` events and `max_bytes` bytes.
    pub fn new(capacity: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            news: AtomicBool::new(true),
            armed: AtomicBool::new(false),
            capacity: capacity.max(1),
            max_bytes,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single push/pop: a poisoned lock is usable.
        crate::sync::lock(&self.state)
    }

    /// Writes an event through the armed lane, or else queues it without
    /// waiting; drops it if the queue is full.
    pub fn offer(&self, event: &Arc<Published>) -> Offer {
        self.offer_with(event, true)
    }

    /// Queues an event without waiting, never through the lane; drops it
    /// if the queue is full.
    pub fn offer_to_queue(&self, event: &Arc<Published>) -> Offer {
        self.offer_with(event, false)
    }

    fn offer_with(&self, event: &Arc<Published>, write: bool) -> Offer {
        let waker = {
            let mut s = self.lock();
            if s.closed.is_some() {
                return Offer::Dropped;
            }
            let mut partial = 0;
            if write
                && self.armed.load(Ordering::Acquire)
                && s.items.is_empty()
                && s.dropped == 0
                && !s.gap
            {
                match self.write_through(&mut s, event) {
                    Ok(()) => return Offer::Written,
                    Err(written) => partial = written,
                }
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
            if s.items.len() == 1 {
                s.partial = partial;
            }
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

    /// Writes `event` through the armed lane. When it does not all go out,
    /// disarms the lane and says how many bytes did (the event is then
    /// queued, and the consumer writes the rest).
    fn write_through(&self, s: &mut State, event: &Published) -> Result<(), usize> {
        let Some(lane) = &s.lane else {
            return Err(0);
        };
        let bytes = event.wire(lane.format, lane.transfer);
        // On an error, the consumer's own write meets it and ends the stream.
        let written = lane.writer.try_write(bytes).unwrap_or(0);
        if written > 0 {
            s.wrote = Some(LaneWrite {
                id: event.event.id,
                at: tokio::time::Instant::now(),
            });
        }
        if written == bytes.len() {
            return Ok(());
        }
        self.armed.store(false, Ordering::Release);
        Err(written)
    }

    /// Gives this queue a lane to its subscriber's connection. It is armed
    /// by the consumer's next [`Self::poll_drain`] that finds nothing.
    pub fn attach_lane(&self, lane: Lane) {
        self.lock().lane = Some(lane);
    }

    /// Drops the lane (the stream is ending: its connection must close
    /// when the consumer lets it go, whatever still holds the queue).
    pub fn detach_lane(&self) {
        let mut s = self.lock();
        s.lane = None;
        self.armed.store(false, Ordering::Release);
    }

    /// Stops the lane until the consumer's next [`Self::poll_drain`], so
    /// that the consumer can write bytes of its own (a heartbeat); says
    /// what the lane wrote since the consumer last asked.
    ///
    /// `Err` when events came in since the consumer's last poll (on another
    /// thread): the first may be half written, so nothing else may go out
    /// before the next drain.
    pub fn disarm(&self) -> Result<Option<LaneWrite>, Option<LaneWrite>> {
        let mut s = self.lock();
        // Under the lock: no write through the lane is under way, and none
        // starts after this. The consumer's next poll arms it again.
        self.armed.store(false, Ordering::Release);
        let wrote = s.wrote.take();
        if s.items.is_empty() {
            Ok(wrote)
        } else {
            Err(wrote)
        }
    }

    /// What the lane wrote since the consumer last asked, leaving it armed.
    pub fn lane_writes(&self) -> Option<LaneWrite> {
        self.lock().wrote.take()
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
    ///
    /// `arm`: the consumer has written everything it took, so when nothing
    /// is pending the lane (if any) may write the next events itself.
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<Arc<Published>>,
        max: usize,
        arm: bool,
    ) -> Poll<Drained> {
        if !self.news.load(Ordering::Acquire) {
            if arm && !self.armed.load(Ordering::Relaxed) {
                self.armed.store(true, Ordering::Release);
            }
            return Poll::Pending;
        }
        let mut s = self.lock();
        if s.items.is_empty() && s.dropped == 0 && s.closed.is_none() && !s.gap {
            Self::register(&mut s, cx);
            self.armed.store(arm && s.lane.is_some(), Ordering::Release);
            self.news.store(false, Ordering::Relaxed);
            return Poll::Pending;
        }
        // What is drained now is not written yet.
        self.armed.store(false, Ordering::Release);
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
            partial: std::mem::take(&mut s.partial),
            lane: s.wrote.take(),
        };
        if s.items.is_empty() && s.closed.is_none() {
            // All reported: the poll that follows this delivery finds
            // nothing, and need not take the lock to find it (nor to arm
            // the lane).
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
    use bytes::Bytes;
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
        let Poll::Ready(d) = q.poll_drain(&mut cx, &mut out, 100, false) else {
            panic!("expected ready")
        };
        assert_eq!(d.dropped, 2);
        assert_eq!(
            out.iter().map(|e| e.event.id.as_u64()).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(q.poll_drain(&mut cx, &mut out, 100, false).is_pending());
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
        assert!(q.poll_drain(&mut cx, &mut out, 8, false).is_ready());
        // No poll in between: the drain registered the waker.
        assert!(q.poll_drain(&mut cx, &mut out, 8, false).is_pending());
        q.offer(&published(2));
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(q.poll_drain(&mut cx, &mut out, 8, false).is_ready());
        assert_eq!(
            out.iter().map(|e| e.event.id.as_u64()).collect::<Vec<_>>(),
            [1, 2]
        );
        // A close after the lock-free answer wakes and is reported.
        assert!(q.poll_drain(&mut cx, &mut out, 8, false).is_pending());
        q.close(CloseReason::Shutdown);
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        let Poll::Ready(d) = q.poll_drain(&mut cx, &mut out, 8, false) else {
            panic!("the close is news")
        };
        assert_eq!(d.closed, Some(CloseReason::Shutdown));
        // A drain that leaves events behind keeps answering from the queue.
        let q = SubscriberQueue::new(8, usize::MAX);
        for id in 1..=3 {
            q.offer(&published(id));
        }
        out.clear();
        assert!(q.poll_drain(&mut cx, &mut out, 2, false).is_ready());
        assert!(q.poll_drain(&mut cx, &mut out, 2, false).is_ready());
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn a_gap_wakes_the_consumer_once_and_is_reported_once() {
        let q = SubscriberQueue::new(8, usize::MAX);
        let counter = Arc::new(CountingWaker(Default::default()));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        assert!(q.poll_drain(&mut cx, &mut out, 8, false).is_pending());
        q.mark_gap();
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        let Poll::Ready(d) = q.poll_drain(&mut cx, &mut out, 8, false) else {
            panic!("a gap alone is something to report")
        };
        assert!(d.gap && out.is_empty() && d.closed.is_none());
        assert!(
            q.poll_drain(&mut cx, &mut out, 8, false).is_pending(),
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
        assert!(q.poll_drain(&mut cx, &mut out, 1, false).is_ready());
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
        let Poll::Ready(d) = q.poll_drain(&mut cx, &mut out, 100, false) else {
            panic!("expected ready")
        };
        assert_eq!(out.len(), 1);
        assert_eq!(d.closed, Some(CloseReason::Shutdown));
    }

    /// A connection with room for `room` more bytes, keeping what it took.
    #[derive(Debug, Default)]
    struct Wire {
        taken: Mutex<Vec<u8>>,
        room: Mutex<usize>,
    }
    impl DirectWrite for Wire {
        fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            let n = bytes.len().min(*room);
            *room -= n;
            self.taken.lock().unwrap().extend_from_slice(&bytes[..n]);
            Ok(n)
        }
    }

    fn laned(room: usize) -> (Arc<SubscriberQueue>, Arc<Wire>) {
        let q = SubscriberQueue::new(8, usize::MAX);
        let wire = Arc::new(Wire {
            room: Mutex::new(room),
            ..Default::default()
        });
        q.attach_lane(Lane {
            writer: wire.clone(),
            format: Format::Data,
            transfer: Transfer::Chunked,
        });
        (q, wire)
    }

    fn wire_of(id: u64) -> Bytes {
        published(id).wire(Format::Data, Transfer::Chunked).clone()
    }

    #[test]
    fn an_armed_lane_writes_whole_events_without_waking_the_consumer() {
        let (q, wire) = laned(usize::MAX);
        let counter = Arc::new(CountingWaker(Default::default()));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        // Not armed until the consumer says it has written everything.
        assert!(q.poll_drain(&mut cx, &mut out, 8, false).is_pending());
        assert_eq!(q.offer(&published(1)), Offer::Queued(1));
        assert!(q.poll_drain(&mut cx, &mut out, 8, true).is_ready());
        assert!(q.poll_drain(&mut cx, &mut out, 8, true).is_pending());
        assert_eq!(q.offer(&published(2)), Offer::Written);
        assert_eq!(q.offer(&published(3)), Offer::Written);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "the first offer only");
        let mut expected = wire_of(2).to_vec();
        expected.extend_from_slice(&wire_of(3));
        assert_eq!(*wire.taken.lock().unwrap(), expected);
        let wrote = q.lane_writes().expect("the lane wrote");
        assert_eq!(wrote.id, EventId::from_u64(3));
        assert_eq!(q.lane_writes(), None, "reported once");
        // A consumer that does not arm it keeps the lane off.
        let (q, wire) = laned(usize::MAX);
        assert!(q.poll_drain(&mut cx, &mut out, 8, false).is_pending());
        assert_eq!(q.offer(&published(4)), Offer::Queued(1));
        assert!(wire.taken.lock().unwrap().is_empty());
    }

    #[test]
    fn a_partial_write_queues_the_rest_and_later_events_behind_it() {
        let (q, wire) = laned(5);
        let counter = Arc::new(CountingWaker(Default::default()));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        assert!(q.poll_drain(&mut cx, &mut out, 8, true).is_pending());
        assert_eq!(q.offer(&published(1)), Offer::Queued(1));
        *wire.room.lock().unwrap() = usize::MAX;
        // Disarmed: the next event waits behind the first, room or not.
        assert_eq!(q.offer(&published(2)), Offer::Queued(2));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(*wire.taken.lock().unwrap(), wire_of(1)[..5].to_vec());
        let Poll::Ready(d) = q.poll_drain(&mut cx, &mut out, 8, true) else {
            panic!("the rest is the consumer's")
        };
        assert_eq!(d.partial, 5);
        assert_eq!(d.lane.map(|w| w.id), Some(EventId::from_u64(1)));
        assert_eq!(
            out.iter().map(|e| e.event.id.as_u64()).collect::<Vec<_>>(),
            [1, 2]
        );
        // Written (by the consumer): the next poll finds nothing and arms.
        assert!(q.poll_drain(&mut cx, &mut out, 8, true).is_pending());
        assert_eq!(q.offer(&published(3)), Offer::Written);
        // A full connection takes nothing: the event is queued whole.
        *wire.room.lock().unwrap() = 0;
        assert_eq!(q.offer(&published(4)), Offer::Queued(1));
        out.clear();
        let Poll::Ready(d) = q.poll_drain(&mut cx, &mut out, 8, true) else {
            panic!("queued")
        };
        assert_eq!((d.partial, out.len()), (0, 1));
    }

    #[test]
    fn notices_and_the_consumers_own_writes_disarm_the_lane() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        let (q, wire) = laned(usize::MAX);
        assert!(q.poll_drain(&mut cx, &mut out, 8, true).is_pending());
        q.mark_gap();
        assert_eq!(q.offer(&published(1)), Offer::Queued(1), "behind the gap");
        let Poll::Ready(d) = q.poll_drain(&mut cx, &mut out, 8, true) else {
            panic!("the gap and the event")
        };
        assert!(d.gap);
        assert!(wire.taken.lock().unwrap().is_empty());
        // The consumer takes the lane back to write a heartbeat; its next
        // poll (news, so under the lock) arms it again.
        assert!(q.poll_drain(&mut cx, &mut out, 8, true).is_pending());
        assert_eq!(q.offer(&published(2)), Offer::Written);
        assert_eq!(
            q.disarm().map(|w| w.map(|w| w.id)),
            Ok(Some(EventId::from_u64(2)))
        );
        assert_eq!(q.offer(&published(3)), Offer::Queued(1));
        assert!(q.disarm().is_err(), "an event waits: it goes first");
        out.clear();
        assert!(q.poll_drain(&mut cx, &mut out, 8, true).is_ready());
        assert!(q.poll_drain(&mut cx, &mut out, 8, true).is_pending());
        assert_eq!(q.offer(&published(4)), Offer::Written);
        // A publish in a busy flow queues, and what comes after waits
        // behind it until the consumer has written it.
        assert!(q.poll_drain(&mut cx, &mut out, 8, true).is_pending());
        assert_eq!(q.offer_to_queue(&published(40)), Offer::Queued(1));
        assert_eq!(q.offer(&published(41)), Offer::Queued(2));
        out.clear();
        assert!(q.poll_drain(&mut cx, &mut out, 8, true).is_ready());
        assert_eq!(out.len(), 2);
        assert!(q.poll_drain(&mut cx, &mut out, 8, true).is_pending());
        // Detached (the stream ends): nothing more goes to the connection.
        q.detach_lane();
        assert_eq!(q.offer(&published(5)), Offer::Queued(1));
        q.close(CloseReason::Shutdown);
        assert_eq!(q.offer(&published(6)), Offer::Dropped);
        let mut expected = wire_of(2).to_vec();
        expected.extend_from_slice(&wire_of(4));
        assert_eq!(*wire.taken.lock().unwrap(), expected);
    }
}
