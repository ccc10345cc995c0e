//! A destination's recent delivery attempts, for
//! `GET /api/registrations/{id}/deliveries`.
//!
//! A ring per destination, bounded in entries ([`KEPT`]) and, since an
//! error's text is cut at [`ERROR_MAX`] bytes, in bytes: a destination
//! that fails a million times keeps the same few hundred KiB. Each entry
//! has a sequence number, so a client pages back through them with a
//! cursor while new ones arrive at the front.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::event::EventId;
use crate::sync::lock;

/// Attempts kept per destination.
pub const KEPT: usize = 256;
/// Most bytes of an error's text kept.
pub const ERROR_MAX: usize = 256;
/// Most attempts one page returns.
pub const PAGE_MAX: usize = KEPT;

/// What became of one attempt, or of an event that got none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The destination took it.
    Delivered,
    /// This attempt failed; another follows after a backoff.
    Retrying,
    /// Given up on: a final refusal (a 4xx other than 408 and 429), or the
    /// retries a `--delivery-retries` allows ran out.
    Failed,
    /// Dropped from the backlog, which was over its budget (no attempt).
    Dropped,
    /// Given up on because its registrations ended (expired, deleted,
    /// disabled).
    Expired,
}

/// One entry of the log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    /// Its place in the log: a page's `next_cursor` is the last one shown.
    #[serde(skip)]
    pub seq: u64,
    /// The event's id.
    #[schema(value_type = String)]
    #[serde(serialize_with = "as_text")]
    pub event_id: EventId,
    /// 1 for the first attempt; 0 for an event that had none (dropped,
    /// expired while waiting).
    pub attempt: u32,
    /// What became of it.
    pub outcome: Outcome,
    /// The HTTP status the destination answered, if it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed, if it did (cut at 256 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the attempt took, in milliseconds.
    pub duration_ms: u64,
    /// When it ended.
    pub at: DateTime<Utc>,
    /// Whether it was a replay (`POST .../replay`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
}

/// What an attempt was about, before its outcome is known.
#[derive(Debug, Clone, Copy)]
pub struct Try {
    /// The event.
    pub event_id: EventId,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Whether it is a replay.
    pub replay: bool,
}

/// The ring.
#[derive(Debug, Default)]
pub struct AttemptLog {
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<Attempt>,
    next_seq: u64,
}

/// One page, newest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page {
    /// The attempts, newest first.
    pub deliveries: Vec<Attempt>,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl AttemptLog {
    /// Records what became of `what`.
    pub fn record(
        &self,
        what: Try,
        outcome: Outcome,
        status: Option<u16>,
        error: Option<&str>,
        duration: Duration,
    ) {
        let error = error.map(|e| cut(e, ERROR_MAX).to_owned());
        let mut ring = lock(&self.inner);
        let seq = ring.next_seq;
        ring.next_seq += 1;
        if ring.entries.len() == KEPT {
            ring.entries.pop_front();
        }
        ring.entries.push_back(Attempt {
            seq,
            event_id: what.event_id,
            attempt: what.attempt,
            outcome,
            status,
            error,
            duration_ms: duration.as_millis().min(u128::from(u64::MAX)) as u64,
            at: Utc::now(),
            replay: what.replay,
        });
    }

    /// Up to `limit` attempts older than `cursor` (from a previous page),
    /// newest first.
    pub fn page(&self, limit: usize, cursor: Option<u64>) -> Page {
        let limit = limit.clamp(1, PAGE_MAX);
        let ring = lock(&self.inner);
        let deliveries: Vec<Attempt> = ring
            .entries
            .iter()
            .rev()
            .filter(|a| cursor.is_none_or(|c| a.seq < c))
            .take(limit + 1)
            .cloned()
            .collect();
        let more = deliveries.len() > limit;
        let mut deliveries = deliveries;
        deliveries.truncate(limit);
        let next_cursor = more
            .then(|| deliveries.last().map(|a| a.seq.to_string()))
            .flatten();
        Page {
            deliveries,
            next_cursor,
        }
    }
}

fn as_text<S: serde::Serializer>(id: &EventId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_(id: u64) -> Try {
        Try {
            event_id: EventId::from_u64(id),
            attempt: 1,
            replay: false,
        }
    }

    #[test]
    fn pages_go_back_from_the_newest_and_the_ring_keeps_its_bound() {
        let log = AttemptLog::default();
        for id in 1..=(KEPT as u64 + 10) {
            log.record(
                try_(id),
                Outcome::Delivered,
                Some(204),
                None,
                Duration::ZERO,
            );
        }
        let first = log.page(100, None);
        assert_eq!(first.deliveries.len(), 100);
        assert_eq!(first.deliveries[0].event_id.as_u64(), KEPT as u64 + 10);
        let mut seen = first.deliveries.len();
        let mut cursor = first.next_cursor;
        while let Some(c) = cursor {
            let p = log.page(100, Some(c.parse().unwrap()));
            seen += p.deliveries.len();
            cursor = p.next_cursor;
        }
        assert_eq!(seen, KEPT, "the oldest fell off the ring");
    }

    #[test]
    fn errors_are_cut_on_a_character_boundary() {
        let log = AttemptLog::default();
        let long = "é".repeat(ERROR_MAX);
        log.record(
            try_(1),
            Outcome::Retrying,
            None,
            Some(&long),
            Duration::ZERO,
        );
        let e = log.page(1, None).deliveries[0].error.clone().unwrap();
        assert!(e.len() <= ERROR_MAX && e.chars().all(|c| c == 'é'));
    }
}
