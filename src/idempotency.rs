//! `Idempotency-Key` memory: a repeated key within the window returns the
//! first event's id and is not published again.
//!
//! A key is claimed *before* its event is published, so two concurrent
//! requests with one key cannot both publish; the second sees the claim in
//! progress and gets a 409. Memory is bounded: past the key limit the
//! oldest keys are forgotten first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::event::EventId;

/// Longest accepted key, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// What the cache says about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First time in the window: publish, then call [`IdempotencyCache::complete`].
    New,
    /// Seen before: this was the id.
    Seen(EventId),
    /// Seen before, and that request has not finished yet.
    InProgress,
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<String, (Instant, Option<EventId>)>,
    order: VecDeque<(Instant, String)>,
}

/// Keys seen within the window.
#[derive(Debug)]
pub struct IdempotencyCache {
    state: Mutex<State>,
    window: Duration,
    max_keys: usize,
}

impl IdempotencyCache {
    /// An empty cache.
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            window,
            max_keys: max_keys.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Claims `key` at `now`.
    pub fn claim(&self, key: &str, now: Instant) -> Claim {
        let mut s = self.lock();
        self.expire(&mut s, now);
        if let Some((_, id)) = s.keys.get(key) {
            return id.map_or(Claim::InProgress, Claim::Seen);
        }
        while s.keys.len() >= self.max_keys {
            let Some((at, oldest)) = s.order.pop_front() else {
                break;
            };
            forget(&mut s, at, &oldest);
        }
        s.keys.insert(key.to_owned(), (now, None));
        s.order.push_back((now, key.to_owned()));
        Claim::New
    }

    /// Records the id published for a claimed key.
    pub fn complete(&self, key: &str, id: EventId) {
        if let Some(entry) = self.lock().keys.get_mut(key) {
            entry.1 = Some(id);
        }
    }

    fn expire(&self, s: &mut State, now: Instant) {
        while let Some((at, _)) = s.order.front() {
            if now.duration_since(*at) <= self.window {
                break;
            }
            if let Some((at, key)) = s.order.pop_front() {
                forget(s, at, &key);
            }
        }
    }
}

/// Removes `key` if the entry is the one claimed at `at` (a key forgotten
/// and claimed again has a newer entry that must stay).
fn forget(s: &mut State, at: Instant, key: &str) {
    if s.keys.get(key).is_some_and(|(claimed, _)| *claimed == at) {
        s.keys.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_key_returns_first_id_within_window() {
        let c = IdempotencyCache::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert_eq!(c.claim("k", t0), Claim::New);
        assert_eq!(c.claim("k", t0), Claim::InProgress);
        c.complete("k", EventId::from_u64(7));
        assert_eq!(
            c.claim("k", t0 + Duration::from_secs(5)),
            Claim::Seen(EventId::from_u64(7))
        );
        assert_eq!(c.claim("k", t0 + Duration::from_secs(11)), Claim::New);
        c.complete("k", EventId::from_u64(8));
        // The stale first entry expiring must not forget the new claim.
        assert_eq!(
            c.claim("k", t0 + Duration::from_secs(12)),
            Claim::Seen(EventId::from_u64(8))
        );
    }

    #[test]
    fn oldest_keys_are_forgotten_past_the_limit() {
        let c = IdempotencyCache::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        for k in ["a", "b", "c"] {
            assert_eq!(c.claim(k, t0), Claim::New);
            c.complete(k, EventId::from_u64(1));
        }
        assert_eq!(c.claim("a", t0), Claim::New);
        assert_eq!(c.claim("c", t0), Claim::Seen(EventId::from_u64(1)));
    }
}
