//! Durable state: registrations, event types and accounts, as JSON
//! documents by key, behind one [`Store`] whatever keeps them.
//!
//! What operators and consumers configure through the API is kept here,
//! with the gateway's own bookkeeping (the id mark, in [`Collection::Meta`]),
//! so that a restart neither forgets registrations nor restarts their
//! clocks (events are kept apart, in [`crate::eventlog`]). Three
//! backends, one file each: [`redb`] (the default: embedded, crash-safe,
//! one file), [`memory`] (tests and throwaway runs) and [`redis`] (cluster
//! mode: shared by every node). Every write is committed before the API
//! answers.

pub mod memory;
pub mod redb;
pub mod redis;
mod upgrade;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::redb::{FILE_NAME, OPEN_THREAD};

/// Which store keeps registrations and event types (`--store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// redb, in `--data-dir`: survives restarts.
    Redb,
    /// Process memory: lost on exit (tests, throwaway runs).
    Memory,
}

/// The collections the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Collection {
    /// Forwarding registrations, by id.
    Registrations,
    /// Event type definitions, by name.
    EventTypes,
    /// Accounts and their devices, by account id.
    Accounts,
    /// The gateway's own bookkeeping (the event id high-water mark).
    Meta,
}

impl Collection {
    /// Its name (redb table, Redis key part, change announcements).
    pub fn name(self) -> &'static str {
        match self {
            Self::Registrations => "registrations",
            Self::EventTypes => "event_types",
            Self::Accounts => "accounts",
            Self::Meta => "meta",
        }
    }

    /// The collection named `name`.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Every collection.
    pub const ALL: [Self; 4] = [
        Self::Registrations,
        Self::EventTypes,
        Self::Accounts,
        Self::Meta,
    ];
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct StoredKindLabels {
    kind: &'static str,
}

/// `stored_disabled{kind}`: stored objects loaded disabled because they
/// break a limit. Shared by every collection's loader.
#[derive(Debug, Clone, Default)]
pub struct StoredDisabled(
    prometheus_client::metrics::family::Family<
        StoredKindLabels,
        prometheus_client::metrics::counter::Counter,
    >,
);

impl StoredDisabled {
    /// Registers the series.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let s = Self::default();
        registry.register(
            "stored_disabled",
            "Stored registrations, event types or accounts loaded disabled because they break a limit",
            s.0.clone(),
        );
        s
    }

    /// One stored object of `kind` (`registration`, `event_type`) was
    /// loaded disabled.
    pub fn count(&self, kind: &'static str) {
        self.0.get_or_create(&StoredKindLabels { kind }).inc();
    }
}

/// A store failure. At start it is fatal and said in one line (the file,
/// what is wrong, what to do); later the API answers 503 and logs it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `--data-dir` is not a directory.
    #[error("--data-dir {0} is a file, not a directory: point --data-dir at a directory (it is created if missing)")]
    NotADirectory(PathBuf),
    /// The directory cannot be created.
    #[error("cannot create the data directory {0}: {1}")]
    CreateDir(PathBuf, String),
    /// The store file is there but holds nothing.
    #[error("store file {0} is empty (0 bytes): it was emptied or truncated, and every registration and event type in it is gone; restore it from a backup, or delete it to start with an empty store")]
    Emptied(PathBuf),
    /// The store file cannot be read as a store.
    #[error("store file {0} is damaged or is not a Ratatoskr store ({1}): restore it from a backup, or move it aside to start with an empty store")]
    Damaged(PathBuf, String),
    /// Another process has the store open.
    #[error(
        "store file {0} is in use by another process: stop it, or give this one another --data-dir"
    )]
    InUse(PathBuf),
    /// The file cannot be opened (permissions, I/O).
    #[error("cannot open store file {0}: {1}")]
    Open(PathBuf, String),
    /// The file was deleted or replaced under the running gateway: writes
    /// would go to an unlinked file and be lost at the next start.
    #[error("store file {0} was deleted or replaced while the gateway runs: writes are refused so that none is silently lost; put the file back, or restart to start an empty store")]
    Gone(PathBuf),
    /// A write failed (disk full, I/O error): the store is reopened with
    /// backoff, and writes are refused until that works.
    #[error("store file {path} cannot be written ({cause}); the gateway retries on its own, next in {}s", retry_after.as_secs().max(1))]
    Unwritable {
        /// The file.
        path: PathBuf,
        /// The first error.
        cause: String,
        /// When the next attempt is due.
        retry_after: std::time::Duration,
    },
    /// A read or write failed on an open store.
    #[error("store: {0}")]
    Io(String),
}

impl StoreError {
    pub(crate) fn from<E: std::fmt::Display>(e: E) -> Self {
        Self::Io(e.to_string())
    }

    /// How long a client should wait before trying again.
    pub fn retry_after(&self) -> std::time::Duration {
        match self {
            Self::Unwritable { retry_after, .. } => (*retry_after).max(Duration::from_secs(1)),
            _ => Duration::from_secs(1),
        }
    }
}

/// Key-value documents by collection.
#[derive(Debug)]
pub struct Store {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Memory(memory::MemoryStore),
    /// Cluster mode: shared by every node.
    Redis(Box<redis::RedisDocuments>),
    Redb(redb::RedbStore),
}

impl Store {
    /// Opens (or creates) the store.
    pub fn open(kind: StoreKind, dir: &Path) -> Result<Self, StoreError> {
        let backend = match kind {
            StoreKind::Memory => Backend::Memory(memory::MemoryStore::default()),
            StoreKind::Redb => Backend::Redb(redb::RedbStore::open(dir)?),
        };
        Ok(Self { backend })
    }

    /// Cluster mode: documents in the shared Redis (`--redis-url`).
    pub fn open_redis(target: crate::redis_target::RedisTarget) -> Result<Self, StoreError> {
        let docs = redis::RedisDocuments::connect(target).map_err(StoreError::Io)?;
        Ok(Self {
            backend: Backend::Redis(Box::new(docs)),
        })
    }

    /// Whether the documents are shared with other nodes (cluster mode):
    /// then another node may change them, and a conditional write is
    /// checked by the store itself.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// As [`Store::put`], but only if `key` holds nothing yet. Returns
    /// whether it was written. Only a shared store checks: one node
    /// serialises its own writes, and its caller checked already.
    pub fn put_new(&self, c: Collection, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Redis(d) => d.put_new(c.name(), key, value).map_err(StoreError::Io),
            _ => self.put(c, key, value).map(|()| true),
        }
    }

    /// As [`Store::put`], but only if the stored value is still `expected`
    /// (when given), and expiring at `expires_at_ms` (Unix ms) where the
    /// backend can (Redis). Returns whether it was written. Only a shared
    /// store checks `expected`: one node serialises its own writes.
    pub fn put_guarded(
        &self,
        c: Collection,
        key: &str,
        value: &[u8],
        expected: Option<&[u8]>,
        expires_at_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Redis(d) => d
                .put(c.name(), key, value, expected, expires_at_ms)
                .map_err(StoreError::Io),
            _ => self.put(c, key, value).map(|()| true),
        }
    }

    /// As [`Store::delete`] of one key, only if it still holds `expected`
    /// (checked by a shared store only). Returns whether it held.
    pub fn delete_guarded(
        &self,
        c: Collection,
        key: &str,
        expected: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Redis(d) => d.delete(c.name(), &[key], expected).map_err(StoreError::Io),
            _ => self.delete(c, &[key]).map(|()| true),
        }
    }

    /// Whether writes can be kept (see [`redb::RedbStore::check_writable`];
    /// the other backends always can, as far as the gateway knows).
    pub fn check_writable(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(r) => r.check_writable(),
            _ => Ok(()),
        }
    }

    /// After a failed write, once its backoff is over: reopens the file
    /// (see [`redb::RedbStore::recover`]). Nothing to do for the others.
    pub fn recover(&self) {
        if let Backend::Redb(r) = &self.backend {
            r.recover();
        }
    }

    /// Writes `value` under `key`, replacing any previous value.
    pub fn put(&self, c: Collection, key: &str, value: &[u8]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                m.put(c, key, value);
                Ok(())
            }
            Backend::Redis(d) => d
                .put(c.name(), key, value, None, None)
                .map(|_| ())
                .map_err(StoreError::Io),
            Backend::Redb(r) => r.put(c, key, value),
        }
    }

    /// Deletes `keys`, in one transaction. Missing keys are ignored.
    pub fn delete(&self, c: Collection, keys: &[&str]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                m.delete(c, keys);
                Ok(())
            }
            Backend::Redis(d) => d
                .delete(c.name(), keys, None)
                .map(|_| ())
                .map_err(StoreError::Io),
            Backend::Redb(r) => r.delete(c, keys),
        }
    }

    /// Every document in a collection, by key order.
    pub fn load(&self, c: Collection) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.load(c)),
            Backend::Redis(d) => d.load(c.name()).map_err(StoreError::Io),
            Backend::Redb(r) => r.load(c),
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
    fn damaged_stores_are_named_and_explained() {
        let dir = std::env::temp_dir().join(format!("ratatoskr-store-{}", uuid::Uuid::new_v4()));
        {
            let store = Store::open(StoreKind::Redb, &dir).unwrap();
            round_trip(&store);
        }
        let file = dir.join(FILE_NAME);
        let full = std::fs::read(&file).unwrap();
        for keep in [10, 4096, full.len() / 2] {
            std::fs::write(&file, &full[..keep]).unwrap();
            let e = Store::open(StoreKind::Redb, &dir).unwrap_err();
            assert!(matches!(e, StoreError::Damaged(..)), "{keep}: {e}");
            assert!(e.to_string().contains(&*file.to_string_lossy()), "{e}");
        }
        std::fs::write(&file, b"").unwrap();
        let e = Store::open(StoreKind::Redb, &dir).unwrap_err();
        assert!(matches!(e, StoreError::Emptied(_)), "{e}");
        let e = Store::open(StoreKind::Redb, &file).unwrap_err();
        assert!(matches!(e, StoreError::NotADirectory(_)), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn opening_a_damaged_store_leaves_the_panic_hook_alone() {
        // The process's own hook must see redb's assertion on a damaged
        // file (it used to be swapped for a silent one during the open,
        // hiding every other thread's panics meanwhile), and it must still
        // be installed afterwards.
        static SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {
            SEEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        let dir = std::env::temp_dir().join(format!("ratatoskr-store-{}", uuid::Uuid::new_v4()));
        {
            let store = Store::open(StoreKind::Redb, &dir).unwrap();
            round_trip(&store);
        }
        let file = dir.join(FILE_NAME);
        let full = std::fs::read(&file).unwrap();
        let mut odd = Vec::new();
        // Some flipped bytes make redb assert rather than return an error:
        // flip every 64th byte in turn (where depends on the file's layout).
        for at in (0..full.len()).step_by(64) {
            let mut bad = full.clone();
            bad[at] ^= 0xff;
            std::fs::write(&file, &bad).unwrap();
            match Store::open(StoreKind::Redb, &dir) {
                Err(StoreError::Damaged(..)) => {}
                // A file that opens may still make redb assert when it is
                // closed (its final commit): drop it where that is caught.
                Ok(store) => {
                    let _ = std::thread::spawn(move || drop(store)).join();
                }
                Err(e) => odd.push(format!("{at}: {e}")),
            }
        }
        let during = SEEN.load(std::sync::atomic::Ordering::SeqCst);
        let after = std::thread::spawn(|| panic!("another thread's panic")).join();
        let total = SEEN.load(std::sync::atomic::Ordering::SeqCst);
        std::panic::set_hook(previous);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(after.is_err());
        assert!(odd.is_empty(), "not said as damaged: {odd:?}");
        assert!(
            during >= 1,
            "redb's panics on the damaged files reached the process's hook {during} times"
        );
        assert_eq!(
            total,
            during + 1,
            "the hook is still installed after the open"
        );
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
