//! Durable state: registrations and event types, as JSON documents by key.
//!
//! The gateway's event path keeps nothing on disk; only what operators and
//! consumers configure through the API does, so that a restart neither
//! forgets registrations nor restarts their clocks. redb is the default
//! (embedded, crash-safe, one file); [`StoreKind::Memory`] is for tests and
//! throwaway runs. Every write is committed before the API answers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::config::StoreKind;
use crate::sync::lock;

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
        [
            Self::Registrations,
            Self::EventTypes,
            Self::Accounts,
            Self::Meta,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }

    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name())
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
    fn from<E: std::fmt::Display>(e: E) -> Self {
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

/// First wait before reopening a store that failed a write; doubles on
/// each failed reopen, up to [`REOPEN_MAX`], so that writes work again
/// within seconds of space returning.
const REOPEN_FIRST: Duration = Duration::from_millis(500);
const REOPEN_MAX: Duration = Duration::from_secs(5);

/// A store that failed a write, and when to try it again.
#[derive(Debug, Clone)]
struct Fault {
    cause: String,
    next_try: Instant,
    backoff: Duration,
}

/// The store's file name inside `--data-dir`.
pub const FILE_NAME: &str = "ratatoskr.redb";

/// A store file written by an earlier release (redb 2, file format v2,
/// which redb 3 and later cannot open) is converted in place by redb 2.6's
/// own `Database::upgrade()`, once, after a copy of it is kept beside it
/// (`ratatoskr.redb.v2-backup`; delete it once the new release is trusted).
fn upgrade_v2(path: &Path) -> Result<(), StoreError> {
    let backup = path.with_extension("redb.v2-backup");
    let fail = |what: &str, e: String| StoreError::Open(path.to_owned(), format!("{what}: {e}"));
    if !backup.exists() {
        std::fs::copy(path, &backup).map_err(|e| {
            fail(
                &format!("cannot keep a copy at {}", backup.display()),
                e.to_string(),
            )
        })?;
    }
    let mut old = redb2::Database::open(path).map_err(|e| {
        fail(
            "written by an older release, and redb 2 cannot open it either",
            e.to_string(),
        )
    })?;
    let upgraded = old
        .upgrade()
        .map_err(|e| fail("cannot convert it from the redb 2 format", e.to_string()))?;
    drop(old);
    tracing::warn!(path = %path.display(), backup = %backup.display(), upgraded,
        "store file converted from the redb 2 format; the original is kept as the backup");
    Ok(())
}

/// The name of the thread that opens a redb file: a panic in it (redb
/// asserts on some damaged files) is reported as [`StoreError::Damaged`],
/// so a panic hook may leave its message out.
pub const OPEN_THREAD: &str = "ratatoskr-store-open";

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
    let opened = on_open_thread(&path, {
        let path = path.clone();
        move || Database::create(&path)
    })?;
    match opened {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::UpgradeRequired(_)) => {
            upgrade_v2(&path)?;
            let p = path.clone();
            on_open_thread(&path, move || Database::create(&p))?
                .map_err(|e| StoreError::Damaged(path, e.to_string()))
        }
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::InUse(path)),
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
            if e.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Err(StoreError::Open(path, e.to_string()))
        }
        Err(e) => Err(StoreError::Damaged(path, e.to_string())),
    }
}

/// Runs `f` (a first touch of the redb file at `path`) on a thread of its
/// own, named [`OPEN_THREAD`]: redb asserts on some damaged files instead
/// of returning an error, and `join` turns that panic into
/// [`StoreError::Damaged`], said as one line. The process-wide panic hook
/// is never touched here (swapping it would silence every other thread's
/// panics meanwhile); the binary's hook leaves out only this thread's
/// message, which the error repeats.
fn on_open_thread<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    std::thread::Builder::new()
        .name(OPEN_THREAD.into())
        .spawn(f)
        .map_err(|e| StoreError::Open(path.to_owned(), e.to_string()))?
        .join()
        .map_err(|panic| {
            let why = crate::sync::panic_message(&*panic)
                .unwrap_or_else(|| "the file is shorter than its header says".into());
            StoreError::Damaged(path.to_owned(), why)
        })
}

/// Creates the tables so that reads before the first write succeed (on a
/// damaged file, this is where redb may assert: see [`on_open_thread`]).
fn create_tables(db: Database) -> Result<Database, StoreError> {
    let tx = db.begin_write().map_err(StoreError::from)?;
    for c in [
        Collection::Registrations,
        Collection::EventTypes,
        Collection::Accounts,
        Collection::Meta,
    ] {
        tx.open_table(c.table()).map_err(StoreError::from)?;
    }
    tx.commit().map_err(StoreError::from)?;
    Ok(db)
}

/// Key-value documents by collection.
#[derive(Debug)]
pub struct Store {
    backend: Backend,
}

enum Backend {
    Memory(Mutex<BTreeMap<(Collection, String), Vec<u8>>>),
    /// Cluster mode: shared by every node.
    Redis(Box<crate::cluster::documents::RedisDocuments>),
    Redb {
        /// `None` only while being reopened (the old handle must close
        /// first: it holds the file's lock).
        db: RwLock<Option<Database>>,
        /// The file, and its inode when opened: a different inode, or no
        /// file, means it was deleted or replaced under us.
        path: PathBuf,
        inode: u64,
        gone: std::sync::atomic::AtomicBool,
        /// Set by a failed write, cleared by the next one that works.
        fault: Mutex<Option<Fault>>,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Memory(_) => "Memory",
            Self::Redb { .. } => "Redb",
            Self::Redis(_) => "Redis",
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
                let db = on_open_thread(&path, move || create_tables(db))?
                    .map_err(|e| StoreError::Damaged(path.clone(), e.to_string()))?;
                let inode = std::fs::metadata(&path)
                    .map_err(|e| StoreError::Open(path.clone(), e.to_string()))?;
                Backend::Redb {
                    db: RwLock::new(Some(db)),
                    inode: std::os::unix::fs::MetadataExt::ino(&inode),
                    path,
                    gone: Default::default(),
                    fault: Mutex::default(),
                }
            }
        };
        Ok(Self { backend })
    }

    /// Cluster mode: documents in the shared Redis (`--redis-url`).
    pub fn open_redis(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let docs = crate::cluster::documents::RedisDocuments::connect(url, prefix)
            .map_err(StoreError::Io)?;
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

    /// Whether writes can be kept: `Err` once the file was deleted or
    /// replaced under the running gateway (said once in the log), or while
    /// a failed write's reopen is pending. Does no I/O but a `stat`, so
    /// `/ready` can ask it on an async worker.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        let Backend::Redb {
            path,
            inode,
            gone,
            fault,
            ..
        } = &self.backend
        else {
            return Ok(());
        };
        use std::os::unix::fs::MetadataExt;
        let same = std::fs::metadata(path).is_ok_and(|m| m.ino() == *inode && m.nlink() > 0);
        if !same {
            if !gone.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::error!(path = %path.display(), "the store file was deleted or replaced: refusing writes");
            }
            return Err(StoreError::Gone(path.clone()));
        }
        match &*lock(fault) {
            Some(f) => Err(StoreError::Unwritable {
                path: path.clone(),
                cause: f.cause.clone(),
                retry_after: f.next_try.saturating_duration_since(Instant::now()),
            }),
            None => Ok(()),
        }
    }

    /// After a failed write, once its backoff is over: reopens the
    /// database and proves it with a small write. Called by writes and by
    /// the gateway's once-a-second sweeper (on a blocking thread), so the
    /// store recovers, and `/ready` turns 200, with no client write.
    pub fn recover(&self) {
        let Backend::Redb {
            db, path, fault, ..
        } = &self.backend
        else {
            return;
        };
        let due = lock(fault)
            .as_ref()
            .is_some_and(|f| f.next_try <= Instant::now());
        if !due {
            return;
        }
        let reopened = {
            let mut slot = crate::sync::write(db);
            // Close first: the open handle holds the file's lock.
            drop(slot.take());
            match open_redb(path.parent().unwrap_or(Path::new("."))) {
                Ok(new) => {
                    *slot = Some(new);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        };
        let probed = reopened.and_then(|()| {
            self.transact(|tx| {
                tx.open_table(Collection::Meta.table())
                    .map_err(StoreError::from)?
                    .insert("probe", &b"1"[..])
                    .map_err(StoreError::from)?;
                Ok(())
            })
            .map_err(|e| e.to_string())
        });
        let mut f = lock(fault);
        match probed {
            Ok(()) => {
                tracing::warn!(path = %path.display(), "the store writes again");
                *f = None;
            }
            Err(e) => {
                if let Some(f) = f.as_mut() {
                    f.backoff = (f.backoff * 2).min(REOPEN_MAX);
                    f.next_try = Instant::now() + f.backoff;
                    tracing::debug!(error = %e, next = ?f.backoff, "the store still cannot write");
                }
            }
        }
    }

    /// Runs one write transaction on the open database.
    fn transact(
        &self,
        body: impl FnOnce(&redb::WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let Backend::Redb { db, .. } = &self.backend else {
            return Ok(());
        };
        let slot = crate::sync::read(db);
        let db = slot
            .as_ref()
            .ok_or_else(|| StoreError::Io("the store is being reopened".into()))?;
        let tx = db.begin_write().map_err(StoreError::from)?;
        body(&tx)?;
        tx.commit().map_err(StoreError::from)
    }

    /// A write: refused while the store is gone or faulted (reopening it
    /// first if that is due); a failure faults it, so that the next
    /// writes reopen the database instead of hitting redb's sticky
    /// "previous I/O error" until a restart.
    fn write(
        &self,
        body: impl FnOnce(&redb::WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let Backend::Redb { path, fault, .. } = &self.backend else {
            return Ok(());
        };
        self.recover();
        self.check_writable()?;
        match self.transact(body) {
            Ok(()) => Ok(()),
            Err(e) => {
                let cause = e.to_string();
                tracing::error!(path = %path.display(), error = %cause, "a store write failed: refusing writes until the store reopens");
                *lock(fault) = Some(Fault {
                    cause: cause.clone(),
                    next_try: Instant::now() + REOPEN_FIRST,
                    backoff: REOPEN_FIRST,
                });
                Err(StoreError::Unwritable {
                    path: path.clone(),
                    cause,
                    retry_after: REOPEN_FIRST,
                })
            }
        }
    }

    /// Writes `value` under `key`, replacing any previous value.
    pub fn put(&self, c: Collection, key: &str, value: &[u8]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                lock(m).insert((c, key.to_owned()), value.to_vec());
                Ok(())
            }
            Backend::Redis(d) => d
                .put(c.name(), key, value, None, None)
                .map(|_| ())
                .map_err(StoreError::Io),
            Backend::Redb { .. } => self.write(|tx| {
                tx.open_table(c.table())
                    .map_err(StoreError::from)?
                    .insert(key, value)
                    .map_err(StoreError::from)?;
                Ok(())
            }),
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
            Backend::Redis(d) => d
                .delete(c.name(), keys, None)
                .map(|_| ())
                .map_err(StoreError::Io),
            Backend::Redb { .. } => self.write(|tx| {
                let mut table = tx.open_table(c.table()).map_err(StoreError::from)?;
                for k in keys {
                    table.remove(*k).map_err(StoreError::from)?;
                }
                Ok(())
            }),
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
            Backend::Redis(d) => d.load(c.name()).map_err(StoreError::Io),
            Backend::Redb { db, .. } => {
                let slot = crate::sync::read(db);
                let db = slot
                    .as_ref()
                    .ok_or_else(|| StoreError::Io("the store is being reopened".into()))?;
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
