//! The event id high-water mark, so that ids keep increasing across a
//! restart even when the wall clock went back in between.
//!
//! Ids are wall-clock based (milliseconds and a sequence). The store keeps
//! a mark [`MARGIN`] ahead of the newest id handed out, rewritten when ids
//! come within half of it (so at most one small write every few seconds
//! while events flow, none when idle). A new process starts its ids above
//! the stored mark, and treats ids below it as from before the restart.

use std::sync::Arc;

use crate::event::EventId;
use crate::hub::Hub;
use crate::state::store::{Collection, Store, StoreError};

/// The mark's key in [`Collection::Meta`].
const KEY: &str = "event_id_high_water";
/// How far ahead of the newest id the mark is kept: ten seconds of ids.
pub const MARGIN: u64 = 10_000 << 16;

/// The stored mark and where it lives.
#[derive(Debug)]
pub struct IdMark {
    store: Arc<Store>,
    stored: u64,
}

impl IdMark {
    /// Reads the stored mark, makes `hub` continue above it, and moves the
    /// mark ahead of the clock before the first id goes out.
    pub fn open(store: Arc<Store>, hub: &Hub) -> Result<Self, StoreError> {
        let stored = store
            .load(Collection::Meta)?
            .into_iter()
            .find(|(k, _)| k == KEY)
            .and_then(|(_, v)| std::str::from_utf8(&v).ok()?.parse::<EventId>().ok());
        if let Some(mark) = stored {
            hub.resume_ids_above(mark);
            tracing::debug!(%mark, "event ids continue above the stored mark");
        }
        let mut mark = Self {
            store,
            stored: stored.map_or(0, EventId::as_u64),
        };
        let now = EventId::floor_at(crate::hub::unix_ms());
        mark.keep_ahead(hub.last_id().max(now))?;
        Ok(mark)
    }

    /// Moves the mark ahead of `newest` when ids come near it. Writes the
    /// store: call it off the async workers.
    pub fn keep_ahead(&mut self, newest: EventId) -> Result<(), StoreError> {
        let newest = newest.as_u64();
        if newest.saturating_add(MARGIN / 2) <= self.stored {
            return Ok(());
        }
        let mark = newest.saturating_add(MARGIN);
        let text = EventId::from_u64(mark).to_string();
        self.store.put(Collection::Meta, KEY, text.as_bytes())?;
        self.stored = mark;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::HubConfig;
    use crate::state::store::StoreKind;

    fn hub() -> Arc<Hub> {
        Hub::new(
            HubConfig {
                replay_capacity: 10,
                replay_max_bytes: usize::MAX,
                replay_max_age: std::time::Duration::from_secs(60),
                subscriber_buffer: 10,
                subscriber_buffer_bytes: usize::MAX,
                max_subscribers: 10,
                shards: 2,
            },
            Default::default(),
        )
    }

    #[test]
    fn ids_continue_above_the_mark_after_a_restart() {
        let store = Arc::new(Store::open(StoreKind::Memory, std::path::Path::new("")).unwrap());
        let first = hub();
        let mut mark = IdMark::open(store.clone(), &first).unwrap();
        // Ids far in the future, as if the clock has since gone back.
        let future = EventId::from_u64(EventId::floor_at(u64::from(u32::MAX) * 100).as_u64());
        first.resume_ids_above(future);
        mark.keep_ahead(first.last_id()).unwrap();
        // One write per half margin, not per event.
        let before = store.load(Collection::Meta).unwrap();
        mark.keep_ahead(EventId::from_u64(future.as_u64() + 5))
            .unwrap();
        assert_eq!(store.load(Collection::Meta).unwrap(), before);

        let second = hub();
        IdMark::open(store, &second).unwrap();
        assert!(second.last_id().as_u64() > future.as_u64());
    }
}
