//! Redis's clock, as this node reads it: so that an append can carry a
//! deadline that Redis itself enforces ([`super::append`]'s fence).
//!
//! A write that Redis runs after the node stopped waiting for it (the
//! reply was late: Redis stalled, the network queued it) must not be
//! stored, or the 503 the publisher got would be a lie and its retry a
//! duplicate. Redis cannot know when the node gave up unless the write
//! says so in Redis's own time: the node reads `TIME` (at connect, then
//! every second), keeps the reading against its monotonic clock (a jump
//! of the node's wall clock changes nothing), and stamps each write with
//! "not after server time T", T a margin before the node gives up.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::redis_target::Commands;

use crate::sync::lock;

/// Kept between the deadline Redis enforces and the moment the node gives
/// up, beyond the reading's own uncertainty (half its round trip).
const MARGIN: Duration = Duration::from_millis(100);

/// One reading of Redis's `TIME`.
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// The node's clock halfway through the round trip.
    at: Instant,
    /// Redis's time then, in Unix milliseconds.
    server_ms: u64,
    /// Half the round trip: how far off the reading may be.
    error: Duration,
}

/// Redis's time as estimated from the best recent reading (none before
/// [`ServerClock::read`]).
#[derive(Debug, Default)]
pub struct ServerClock {
    reading: Mutex<Option<Reading>>,
}

impl ServerClock {
    /// Reads Redis's `TIME` once and keeps the reading when it is at least
    /// as sure as the one it replaces once that one has aged a little
    /// (clocks drift, a second at most is kept regardless).
    /// `at` is a key on the primary whose clock counts (in cluster mode:
    /// every key of the gateway is on one slot, so any of them).
    pub async fn read(&self, conn: &mut Commands, at: &str) -> redis::RedisResult<()> {
        let sent = Instant::now();
        let (secs, micros): (u64, u64) = conn.query_at(redis::cmd("TIME"), at).await?;
        let round_trip = sent.elapsed();
        let fresh = Reading {
            at: sent + round_trip / 2,
            server_ms: secs * 1000 + micros / 1000,
            error: round_trip / 2,
        };
        let mut kept = lock(&self.reading);
        let replace = match *kept {
            None => true,
            Some(old) => fresh.error <= old.error || old.at.elapsed() > Duration::from_secs(1),
        };
        if replace {
            *kept = Some(fresh);
        }
        Ok(())
    }

    /// The server time (Unix ms) after which a write whose sender gives up
    /// at `gives_up` must not run: `gives_up` in Redis's time, less the
    /// reading's uncertainty and a margin. `None` before any reading.
    pub fn fence(&self, gives_up: Instant) -> Option<u64> {
        let r = (*lock(&self.reading))?;
        let ahead = gives_up.saturating_duration_since(r.at);
        let behind = r.at.saturating_duration_since(gives_up);
        let at = (r.server_ms + ahead.as_millis() as u64).saturating_sub(behind.as_millis() as u64);
        Some(at.saturating_sub((r.error + MARGIN).as_millis() as u64 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_is_the_give_up_time_in_redis_time_less_the_uncertainty_and_margin() {
        let clock = ServerClock::default();
        let now = Instant::now();
        assert_eq!(clock.fence(now), None, "no reading yet");
        *lock(&clock.reading) = Some(Reading {
            at: now,
            server_ms: 1_000_000,
            error: Duration::from_millis(4),
        });
        let fence = clock.fence(now + Duration::from_millis(1500)).unwrap();
        assert_eq!(fence, 1_000_000 + 1500 - 4 - 100 - 1);
        let earlier = clock.fence(now - Duration::from_millis(50)).unwrap();
        assert_eq!(earlier, 1_000_000 - 50 - 4 - 100 - 1);
    }
}
