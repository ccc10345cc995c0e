//! Embedded mode: forwarding that survives a restart, through the event
//! log ([`crate::eventlog`]), as the cluster's does through the Redis
//! stream.
//!
//! - Every [`CHECKPOINT_EVERY`], each destination's checkpoint (the newest
//!   id up to which it is finished: delivered, refused for good, dropped
//!   and told, or expired) is stored in the log; once more at shutdown,
//!   after the drain.
//! - At start, before the listener serves, each live destination is
//!   replayed the log's events after its checkpoint (or, with none, since
//!   its registrations last changed) that its registrations match: what
//!   was queued, in flight or being retried when the process stopped
//!   (SIGTERM or kill -9) is delivered again, in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Forwarding;
use crate::event::{Event, EventId};
use crate::eventlog::EventLog;
use crate::hub::Published;

/// How often checkpoints are stored.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// Bytes of the log one replay page holds in memory.
const PAGE_BYTES: usize = 16 << 20;

/// Replays, to every live destination, the log's events after its
/// checkpoint and up to `until` (the newest id before this start).
/// Returns how many events were queued again.
pub async fn catch_up(log: &Arc<EventLog>, forwarding: &Forwarding, until: EventId) -> usize {
    let mut total = 0;
    for d in forwarding.destinations().live() {
        let since = log.checkpoint(&d.digest()).or_else(|| {
            let at = forwarding.wanted_since(&d)?;
            let ms = u64::try_from(at.timestamp_millis()).ok()?;
            Some(EventId::from_u64(
                EventId::floor_at(ms).as_u64().saturating_sub(1),
            ))
        });
        let Some(mut after) = since else { continue };
        if after >= until {
            continue;
        }
        if !log.holds_after(after) {
            tracing::warn!(destination = %d.label(), "restart: the event log no longer holds every event after this destination's checkpoint; the oldest were not forwarded");
        }
        let mut sent = 0;
        loop {
            let (l, a) = (log.clone(), after);
            let Ok((page, more)) =
                tokio::task::spawn_blocking(move || l.range(a, until, PAGE_BYTES)).await
            else {
                break;
            };
            let Some(last) = page.last().map(|(id, _)| *id) else {
                break;
            };
            let events: Vec<Arc<Published>> = page
                .into_iter()
                .map(|(id, draft)| Arc::new(Published::new(Event { id, draft })))
                .collect();
            sent += forwarding.replay_to(d.clone(), events).await;
            after = last;
            if !more {
                break;
            }
        }
        if sent > 0 {
            tracing::info!(destination = %d.label(), events = sent, "restart: events after the checkpoint queued again");
        }
        total += sent;
    }
    total
}

/// Stores the checkpoints that moved, and forgets those of destinations
/// no longer live. `written`: what was stored last, by field.
pub fn save(log: &EventLog, forwarding: &Forwarding, written: &mut HashMap<String, EventId>) {
    let mut changed = Vec::new();
    let mut live = std::collections::HashSet::new();
    for d in forwarding.destinations().live() {
        let field = d.digest();
        live.insert(field.clone());
        let Some(id) = forwarding.checkpoint(&d) else {
            continue;
        };
        if written.get(&field).is_some_and(|w| *w >= id) {
            continue;
        }
        written.insert(field.clone(), id);
        changed.push((field, id));
    }
    log.save_checkpoints(&changed);
    written.retain(|f, _| {
        let keep = live.contains(f);
        if !keep {
            log.forget_checkpoint(f);
        }
        keep
    });
}

/// Stores checkpoints every [`CHECKPOINT_EVERY`] until `stop`.
pub async fn keep_checkpoints(
    log: Arc<EventLog>,
    forwarding: Arc<Forwarding>,
    stop: CancellationToken,
) {
    let mut written: HashMap<String, EventId> = log
        .checkpoint_fields()
        .into_iter()
        .filter_map(|f| log.checkpoint(&f).map(|id| (f, id)))
        .collect();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CHECKPOINT_EVERY) => {}
        }
        let (l, f) = (log.clone(), forwarding.clone());
        let w = std::mem::take(&mut written);
        written = tokio::task::spawn_blocking(move || {
            let mut w = w;
            save(&l, &f, &mut w);
            w
        })
        .await
        .unwrap_or_default();
    }
}
