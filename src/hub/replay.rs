//! The replay ring: recent events kept for `Last-Event-ID` resume.
//!
//! Bounded by count, by bytes (each event's [`Published::weight`]) and by
//! age: with large events, a count alone would not bound memory. Ids are strictly increasing, so a resume is
//! a binary search. The ring also remembers its *horizon*, the newest id that
//! may have been lost to this process (evicted, or issued before it
//! started), so it can tell a resuming client that events may be missing
//! instead of silently skipping them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Published;
use crate::event::EventId;

/// Recent events, oldest first.
#[derive(Debug)]
pub struct ReplayRing {
    events: VecDeque<(Instant, Arc<Published>)>,
    capacity: usize,
    max_bytes: usize,
    /// Summed weight of the events held.
    bytes: usize,
    max_age: Duration,
    horizon: EventId,
}

/// What a resuming subscriber gets.
#[derive(Debug, Default)]
pub struct Replay {
    /// The missed events that match the filter, oldest first.
    pub events: Vec<Arc<Published>>,
    /// Events after the client's last id may have been dropped from the ring.
    pub truncated: bool,
    /// The oldest id still in the ring, if any.
    pub oldest: Option<EventId>,
    /// The first id in the ring after the client's last one, before
    /// filtering: where the ring's coverage starts.
    pub ring_first: Option<EventId>,
    /// The newest id published when the subscriber joined: every later one
    /// reaches its live queue. (Set by the hub.)
    pub live_from: EventId,
}

impl ReplayRing {
    /// Raises the horizon to `id` (ids up to it were handed out before this
    /// process started, so nothing after them can be vouched for).
    pub fn raise_horizon(&mut self, id: EventId) {
        self.horizon = self.horizon.max(id);
    }

    /// Drops every event up to `id` and raises the horizon to it: the
    /// ring vouches for nothing up to there.
    pub fn forget_through(&mut self, id: EventId) {
        while self.events.front().is_some_and(|(_, e)| e.event.id <= id) {
            self.evict_front();
        }
        self.raise_horizon(id);
    }

    /// Sets the horizon to `id`, lower or higher: a restart that refilled
    /// the ring from the event log vouches for every id after the first
    /// event it refilled.
    pub fn set_horizon(&mut self, id: EventId) {
        self.horizon = id;
    }

    /// An empty ring. `horizon` is the newest id this process cannot vouch
    /// for (ids below the first it will issue).
    pub fn new(capacity: usize, max_bytes: usize, max_age: Duration, horizon: EventId) -> Self {
        Self {
            events: VecDeque::with_capacity(capacity.min(65_536)),
            capacity,
            max_bytes,
            bytes: 0,
            max_age,
            horizon,
        }
    }

    /// Adds the newest event, evicting what no longer fits. An event
    /// heavier than the whole byte budget is not kept (it moves the
    /// horizon, so a resume across it is told of the gap).
    pub fn push(&mut self, now: Instant, event: Arc<Published>) {
        let weight = event.weight();
        if self.capacity == 0 || weight > self.max_bytes {
            self.horizon = self.horizon.max(event.event.id);
            return;
        }
        while self.events.len() >= self.capacity || self.bytes + weight > self.max_bytes {
            self.evict_front();
        }
        self.bytes += weight;
        self.events.push_back((now, event));
        self.expire(now);
    }

    /// Drops events older than the maximum age.
    pub fn expire(&mut self, now: Instant) {
        while self
            .events
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.max_age)
        {
            self.evict_front();
        }
    }

    fn evict_front(&mut self) {
        if let Some((_, e)) = self.events.pop_front() {
            self.bytes -= e.weight();
            self.horizon = self.horizon.max(e.event.id);
        }
    }

    /// Every event after `last` up to `until` (included): the ones a shard
    /// had passed when a subscriber joined it. Unfiltered: only reference
    /// counts are taken, so that a caller holding the hub's locks can
    /// filter after releasing them. The list is bounded by the ring (count
    /// and bytes). `ring_first` is the first of those events.
    pub fn between(&mut self, now: Instant, last: EventId, until: EventId) -> Replay {
        self.expire(now);
        let start = self.events.partition_point(|(_, e)| e.event.id <= last);
        let end = self
            .events
            .partition_point(|(_, e)| e.event.id <= until)
            .max(start);
        Replay {
            events: self
                .events
                .range(start..end)
                .map(|(_, e)| e.clone())
                .collect(),
            truncated: last < self.horizon,
            oldest: self.events.front().map(|(_, e)| e.event.id),
            ring_first: (start < end).then(|| self.events[start].1.event.id),
            live_from: until,
        }
    }

    /// Number of events held.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Summed weight of the events held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the ring is empty.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_event;
    use crate::hub::EventFilter;

    fn published(id: u64, device: &str) -> Arc<Published> {
        Arc::new(Published::new(test_event(id, Some(device), None)))
    }

    /// Everything after `last` that matches `filter`, as a resume with no
    /// publish on its way sees it.
    fn since(ring: &mut ReplayRing, now: Instant, last: EventId, filter: &EventFilter) -> Replay {
        let mut r = ring.between(now, last, EventId::from_u64(u64::MAX));
        r.events.retain(|e| filter.matches(&e.event));
        r
    }

    fn ids(r: &Replay) -> Vec<u64> {
        r.events.iter().map(|e| e.event.id.as_u64()).collect()
    }

    #[test]
    fn resumes_after_the_last_id_with_the_filter() {
        let now = Instant::now();
        let mut ring = ReplayRing::new(
            10,
            usize::MAX,
            Duration::from_secs(60),
            EventId::from_u64(9),
        );
        for id in 10..15 {
            ring.push(now, published(id, if id % 2 == 0 { "a" } else { "b" }));
        }
        let any = EventFilter::default();
        let r = since(&mut ring, now, EventId::from_u64(11), &any);
        assert_eq!(ids(&r), [12, 13, 14]);
        assert!(!r.truncated);
        let only_a = EventFilter::new(["a"], Vec::<String>::new()).unwrap();
        assert_eq!(
            ids(&since(&mut ring, now, EventId::from_u64(9), &only_a)),
            [10, 12, 14]
        );
        assert!(since(&mut ring, now, EventId::from_u64(8), &any).truncated);
        // Up to what a shard had passed: the rest reaches the queue.
        let r = ring.between(now, EventId::from_u64(10), EventId::from_u64(12));
        assert_eq!(ids(&r), [11, 12]);
        assert_eq!(r.ring_first, Some(EventId::from_u64(11)));
        assert_eq!(r.live_from, EventId::from_u64(12));
        let r = ring.between(now, EventId::from_u64(12), EventId::from_u64(11));
        assert!(r.events.is_empty() && r.ring_first.is_none());
    }

    #[test]
    fn count_bound_moves_the_horizon() {
        let now = Instant::now();
        let mut ring =
            ReplayRing::new(3, usize::MAX, Duration::from_secs(60), EventId::from_u64(0));
        for id in 1..=5 {
            ring.push(now, published(id, "a"));
        }
        assert_eq!(ring.len(), 3);
        let r = since(
            &mut ring,
            now,
            EventId::from_u64(1),
            &EventFilter::default(),
        );
        assert_eq!(ids(&r), [3, 4, 5]);
        assert!(r.truncated, "event 2 was evicted");
        assert!(
            !since(
                &mut ring,
                now,
                EventId::from_u64(2),
                &EventFilter::default()
            )
            .truncated
        );
    }

    #[test]
    fn byte_bound_evicts_the_oldest_and_moves_the_horizon() {
        let now = Instant::now();
        let w = published(1, "a").weight();
        let mut ring = ReplayRing::new(100, w * 3, Duration::from_secs(60), EventId::from_u64(0));
        for id in 1..=5 {
            ring.push(now, published(id, "a"));
            assert!(ring.bytes() <= w * 3);
        }
        assert_eq!((ring.len(), ring.bytes()), (3, w * 3));
        let r = since(
            &mut ring,
            now,
            EventId::from_u64(1),
            &EventFilter::default(),
        );
        assert_eq!(ids(&r), [3, 4, 5]);
        assert!(r.truncated);
        let mut small = ReplayRing::new(100, w - 1, Duration::from_secs(60), EventId::from_u64(0));
        small.push(now, published(7, "a"));
        assert_eq!(small.len(), 0, "heavier than the whole budget: not kept");
        assert!(
            since(
                &mut small,
                now,
                EventId::from_u64(6),
                &EventFilter::default()
            )
            .truncated
        );
    }

    #[test]
    fn age_bound_expires_events() {
        let t0 = Instant::now();
        let mut ring =
            ReplayRing::new(10, usize::MAX, Duration::from_secs(5), EventId::from_u64(0));
        ring.push(t0, published(1, "a"));
        ring.push(t0 + Duration::from_secs(4), published(2, "a"));
        let r = since(
            &mut ring,
            t0 + Duration::from_secs(6),
            EventId::from_u64(0),
            &EventFilter::default(),
        );
        assert_eq!(ids(&r), [2]);
        assert!(r.truncated);
    }
}
