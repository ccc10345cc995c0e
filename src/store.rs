//! Durable state: registrations and event types, as JSON documents by key.
//!
//! The gateway's event path keeps nothing on disk; only what operators and
//! consumers configure through the API does, so that a restart neither
//! forgets registrations nor restarts their clocks. redb is the default
//! (embedded, crash-safe, one file); [`StoreKind::Memory`] is for tests and
//! throwaway runs. Every write is committed before the API answers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableTable, TableDefinition};

use crate::config::StoreKind;
use crate::sync::lock;

/// The collections the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Collection {
    /// Forwarding registrations, by id.
    Registrations,
    /// Event type definitions, by name.
    EventTypes,
}

impl Collection {
    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Self::Registrations => TableDefinition::new("registrations"),
            Self::EventTypes => TableDefinition::new("event_types"),
        }
    }
}

/// A store failure. The API answers 503 and logs the cause.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(String);

impl StoreError {
    fn from<E: std::fmt::Display>(e: E) -> Self {
        Self(e.to_string())
    }
}

/// Key-value documents by collection.
#[derive(Debug)]
pub struct Store {
    backend: Backend,
}

enum Backend {
    Memory(Mutex<BTreeMap<(Collection, String), Vec<u8>>>),
    Redb(Database),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Memory(_) => "Memory",
            Self::Redb(_) => "Redb",
        })
    }
}

impl Store {
    /// Opens (or creates) the store.
    pub fn open(kind: StoreKind, dir: &Path) -> Result<Self, StoreError> {
        let backend = match kind {
            StoreKind::Memory => Backend::Memory(Mutex::default()),
            StoreKind::Redb => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
                let db = Database::create(dir.join("ratatoskr.redb")).map_err(StoreError::from)?;
                // Create the tables so that reads before the first write succeed.
                let tx = db.begin_write().map_err(StoreError::from)?;
                for c in [Collection::Registrations, Collection::EventTypes] {
                    tx.open_table(c.table()).map_err(StoreError::from)?;
                }
                tx.commit().map_err(StoreError::from)?;
                Backend::Redb(db)
            }
        };
        Ok(Self { backend })
    }

    /// Writes `value` under `key`, replacing any previous value.
    pub fn put(&self, c: Collection, key: &str, value: &[u8]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                lock(m).insert((c, key.to_owned()), value.to_vec());
                Ok(())
            }
            Backend::Redb(db) => {
                let tx = db.begin_write().map_err(StoreError::from)?;
                tx.open_table(c.table())
                    .map_err(StoreError::from)?
                    .insert(key, value)
                    .map_err(StoreError::from)?;
                tx.commit().map_err(StoreError::from)
            }
        }
    }

    /// Deletes `keys`, in one transaction. Missing keys are ignored.
    pub fn delete(&self, c: Collection, keys: &[&str]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = lock(m);
                for k in keys {
                    m.remove(&(c, (*k).to_owned()));
                }
                Ok(())
            }
            Backend::Redb(db) => {
                let tx = db.begin_write().map_err(StoreError::from)?;
                {
                    let mut table = tx.open_table(c.table()).map_err(StoreError::from)?;
                    for k in keys {
                        table.remove(*k).map_err(StoreError::from)?;
                    }
                }
                tx.commit().map_err(StoreError::from)
            }
        }
    }

    /// Every document in a collection, by key order.
    pub fn load(&self, c: Collection) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match &self.backend {
            Backend::Memory(m) => Ok(lock(m)
                .iter()
                .filter(|((col, _), _)| *col == c)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect()),
            Backend::Redb(db) => {
                let tx = db.begin_read().map_err(StoreError::from)?;
                let table = tx.open_table(c.table()).map_err(StoreError::from)?;
                let mut out = Vec::new();
                for row in table.iter().map_err(StoreError::from)? {
                    let (k, v) = row.map_err(StoreError::from)?;
                    out.push((k.value().to_owned(), v.value().to_vec()));
                }
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(store: &Store) {
        store.put(Collection::Registrations, "b", b"2").unwrap();
        store.put(Collection::Registrations, "a", b"1").unwrap();
        store.put(Collection::EventTypes, "a", b"x").unwrap();
        store.put(Collection::Registrations, "a", b"3").unwrap();
        let rows = store.load(Collection::Registrations).unwrap();
        assert_eq!(
            rows,
            vec![("a".into(), b"3".to_vec()), ("b".into(), b"2".to_vec())]
        );
        store
            .delete(Collection::Registrations, &["a", "zz"])
            .unwrap();
        assert_eq!(store.load(Collection::Registrations).unwrap().len(), 1);
        assert_eq!(store.load(Collection::EventTypes).unwrap().len(), 1);
    }

    #[test]
    fn memory_store_keeps_collections_apart() {
        round_trip(&Store::open(StoreKind::Memory, Path::new("")).unwrap());
    }

    #[test]
    fn redb_store_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("ratatoskr-store-{}", uuid::Uuid::new_v4()));
        {
            let store = Store::open(StoreKind::Redb, &dir).unwrap();
            round_trip(&store);
        }
        let store = Store::open(StoreKind::Redb, &dir).unwrap();
        assert_eq!(store.load(Collection::Registrations).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
