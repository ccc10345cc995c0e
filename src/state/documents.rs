//! The one shape of a kept collection (registrations, event types,
//! accounts): its documents in the [`Store`], one lock that serialises its
//! changes, and one way to load them, where a document that does not parse
//! is skipped and one that breaks a limit is loaded disabled, each said in
//! the log (and the second counted), never failing the start.
//!
//! Each repository ([`crate::state::registry`], [`crate::state::catalog`],
//! [`crate::state::accounts`]) holds one [`Documents`] and keeps its own
//! compiled view beside it; `open` and `reload` are that repository's
//! `load` through here, so a stored object is checked the same way at
//! start, on a cluster peer's change, and on this node's lost race.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;

use super::store::{Collection, Store, StoreError, StoredDisabled};
use crate::sync::lock;

/// One stored document: its key, its bytes as kept, and what they parse to.
#[derive(Debug)]
pub struct Stored<T> {
    /// Its key in the collection (an id or a name).
    pub key: String,
    /// The bytes as kept (a repository compares them to skip recompiling
    /// what did not change).
    pub raw: Vec<u8>,
    /// The parsed document.
    pub value: T,
}

/// A collection of JSON documents in the store, and the lock its changes
/// take.
#[derive(Debug)]
pub struct Documents {
    store: Arc<Store>,
    collection: Collection,
    /// Serialises changes: a check-then-write (create-only, If-Match, a
    /// limit over the whole collection) and a reload never interleave.
    writes: Mutex<()>,
    disabled: StoredDisabled,
}

impl Documents {
    /// The documents of `collection` in `store`; `disabled` counts the ones
    /// loaded disabled.
    pub fn new(store: Arc<Store>, collection: Collection, disabled: &StoredDisabled) -> Self {
        Self {
            store,
            collection,
            writes: Mutex::new(()),
            disabled: disabled.clone(),
        }
    }

    /// Holds the collection's write lock until the guard drops.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.writes)
    }

    /// Every stored document, parsed. One that does not parse is skipped
    /// and logged (it stays in the store, for an operator to read).
    pub fn load<T: DeserializeOwned>(&self) -> Result<Vec<Stored<T>>, StoreError> {
        let kind = self.kind();
        let rows = self.store.load(self.collection)?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, raw)| match serde_json::from_slice(&raw) {
                Ok(value) => Some(Stored { key, raw, value }),
                Err(e) => {
                    tracing::error!(key = %key, kind, error = %e, "unreadable stored document skipped");
                    None
                }
            })
            .collect())
    }

    /// Says that the stored document `key` breaks a limit and is loaded
    /// disabled (shown, never used, until replaced or deleted).
    pub fn loaded_disabled(&self, key: &str, reason: &str) {
        let kind = self.kind();
        tracing::error!(key = %key, kind, %reason,
            "stored document breaks a limit: loaded disabled; replace or delete it");
        self.disabled.count(kind);
    }

    /// Writes `doc` under `key`.
    pub fn put(&self, key: &str, doc: &[u8]) -> Result<(), StoreError> {
        self.store.put(self.collection, key, doc)
    }

    /// Writes `doc` under `key` unless the key exists: whether it was
    /// written (the store decides, whichever node asks first).
    pub fn put_new(&self, key: &str, doc: &[u8]) -> Result<bool, StoreError> {
        self.store.put_new(self.collection, key, doc)
    }

    /// Writes `doc` under `key`, only over `expected` where the store is
    /// shared, expiring at `expires_at_ms` where it can (see
    /// [`Store::put_guarded`]); whether it was written.
    pub fn put_guarded(
        &self,
        key: &str,
        doc: &[u8],
        expected: Option<&[u8]>,
        expires_at_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.store
            .put_guarded(self.collection, key, doc, expected, expires_at_ms)
    }

    /// Removes `key`, only if it still holds `expected` where the store is
    /// shared; whether it held.
    pub fn delete_guarded(&self, key: &str, expected: Option<&[u8]>) -> Result<bool, StoreError> {
        self.store.delete_guarded(self.collection, key, expected)
    }

    /// Removes `keys`.
    pub fn delete(&self, keys: &[&str]) -> Result<(), StoreError> {
        self.store.delete(self.collection, keys)
    }

    /// The metrics label and log word for one document of the collection.
    fn kind(&self) -> &'static str {
        match self.collection {
            Collection::Registrations => "registration",
            Collection::EventTypes => "event_type",
            Collection::Accounts => "account",
            Collection::Meta => "meta",
        }
    }
}
