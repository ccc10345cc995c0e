//! Durable state: registrations and event types, as JSON documents by key.
//!
//! The gateway's event path keeps nothing on disk; only what operators and
//! consumers configure through the API does, so that a restart neither
//! forgets registrations nor restarts their clocks. redb is the default
//! (embedded, crash-safe, one file); [`StoreKind::Memory`] is for tests and
//! throwaway runs. Every write is committed before the API answers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    /// The gateway's own bookkeeping (the event id high-water mark).
    Meta,
}

impl Collection {
    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Self::Registrations => TableDefinition::new("registrations"),
            Self::EventTypes => TableDefinition::new("event_types"),
            Self::Meta => TableDefinition::new("meta"),
        }
    }
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
            "Stored registrations or event types loaded disabled because they break a limit",
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
    /// A read or write failed on an open store.
    #[error("store: {0}")]
    Io(String),
}

impl StoreError {
    fn from<E: std::fmt::Display>(e: E) -> Self {
        Self::Io(e.to_string())
    }
}

/// The store's file name inside `--data-dir`.
pub const FILE_NAME: &str = "ratatoskr.redb";

/// Opens the redb file at `path`, or says exactly why it cannot.
fn open_redb(dir: &Path) -> Result<Database, StoreError> {
    if dir.exists() && !dir.is_dir() {
        return Err(StoreError::NotADirectory(dir.to_owned()));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::CreateDir(dir.to_owned(), e.to_string()))?;
    let path = dir.join(FILE_NAME);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => {
            return Err(StoreError::Open(path, "it is a directory".into()));
        }
        Ok(m) if m.len() == 0 => return Err(StoreError::Emptied(path)),
        _ => {}
    }
    // redb asserts on some truncated files instead of returning an error.
    // Catch that, and keep the panic message off stderr: the caller says
    // what is wrong in one line. (The hook is process-wide; this runs once,
    // at start.)
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| Database::create(&path));
    std::panic::set_hook(previous);
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(StoreError::InUse(path)),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if e.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Err(StoreError::Open(path, e.to_string()))
        }
        Ok(Err(e)) => Err(StoreError::Damaged(path, e.to_string())),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the file is shorter than its header says".into());
            Err(StoreError::Damaged(path, why))
        }
    }
}

/// Key-value documents by collection.
#[derive(Debug)]
pub struct Store {
    backend: Backend,
}

enum Backend {
    Memory(Mutex<BTreeMap<(Collection, String), Vec<u8>>>),
    Redb {
        db: Database,
        /// The file, and its inode when opened: a different inode, or no
        /// file, means it was deleted or replaced under us.
        path: PathBuf,
        inode: u64,
        gone: std::sync::atomic::AtomicBool,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Memory(_) => "Memory",
            Self::Redb { .. } => "Redb",
        })
    }
}

impl Store {
    /// Opens (or creates) the store.
    pub fn open(kind: StoreKind, dir: &Path) -> Result<Self, StoreError> {
        let backend = match kind {
            StoreKind::Memory => Backend::Memory(Mutex::default()),
            StoreKind::Redb => {
                let path = dir.join(FILE_NAME);
                if dir.is_dir() && !path.exists() {
                    tracing::warn!(path = %path.display(), "no store file in the data directory: creating a new, empty store");
                } else if !dir.exists() {
                    tracing::info!(path = %path.display(), "creating the data directory and a new store");
                }
                let db = open_redb(dir)?;
                // Create the tables so that reads before the first write succeed.
                let tx = db.begin_write().map_err(StoreError::from)?;
                for c in [
                    Collection::Registrations,
                    Collection::EventTypes,
                    Collection::Meta,
                ] {
                    tx.open_table(c.table()).map_err(StoreError::from)?;
                }
                tx.commit().map_err(StoreError::from)?;
                let inode = std::fs::metadata(&path)
                    .map_err(|e| StoreError::Open(path.clone(), e.to_string()))?;
                Backend::Redb {
                    db,
                    inode: std::os::unix::fs::MetadataExt::ino(&inode),
                    path,
                    gone: Default::default(),
                }
            }
        };
        Ok(Self { backend })
    }

    /// Whether writes can be kept: `Err` once the file was deleted or
    /// replaced under the running gateway (said once in the log).
    pub fn check_writable(&self) -> Result<(), StoreError> {
        let Backend::Redb {
            path, inode, gone, ..
        } = &self.backend
        else {
            return Ok(());
        };
        use std::os::unix::fs::MetadataExt;
        let same = std::fs::metadata(path).is_ok_and(|m| m.ino() == *inode && m.nlink() > 0);
        if same {
            return Ok(());
        }
        if !gone.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::error!(path = %path.display(), "the store file was deleted or replaced: refusing writes");
        }
        Err(StoreError::Gone(path.clone()))
    }

    /// Writes `value` under `key`, replacing any previous value.
    pub fn put(&self, c: Collection, key: &str, value: &[u8]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                lock(m).insert((c, key.to_owned()), value.to_vec());
                Ok(())
            }
            Backend::Redb { db, .. } => {
                self.check_writable()?;
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
            Backend::Redb { db, .. } => {
                self.check_writable()?;
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
            Backend::Redb { db, .. } => {
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
