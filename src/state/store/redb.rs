//! The redb backend (the default): one crash-safe file in `--data-dir`.
//!
//! A failed write (disk full, I/O error) faults the store: writes are
//! refused until a reopen, tried with backoff by writes and by the
//! sweeper, proves itself with a small write. A file deleted or replaced
//! under the running gateway is noticed by its inode, and writes refused.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Collection, StoreError};
use crate::sync::lock;

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

fn table(c: Collection) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(c.name())
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
            super::upgrade::upgrade_v2(&path)?;
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
    for c in Collection::ALL {
        tx.open_table(table(c)).map_err(StoreError::from)?;
    }
    tx.commit().map_err(StoreError::from)?;
    Ok(db)
}

/// A redb file, reopened after a failed write.
#[derive(Debug)]
pub struct RedbStore {
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
}

impl RedbStore {
    /// Opens (or creates) the file in `dir`, or says exactly why it cannot.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        if dir.is_dir() && !path.exists() {
            tracing::warn!(path = %path.display(), "no store file in the data directory: creating a new, empty store");
        } else if !dir.exists() {
            tracing::info!(path = %path.display(), "creating the data directory and a new store");
        }
        let db = open_redb(dir)?;
        let db = on_open_thread(&path, move || create_tables(db))?
            .map_err(|e| StoreError::Damaged(path.clone(), e.to_string()))?;
        let inode =
            std::fs::metadata(&path).map_err(|e| StoreError::Open(path.clone(), e.to_string()))?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            inode: std::os::unix::fs::MetadataExt::ino(&inode),
            path,
            gone: Default::default(),
            fault: Mutex::default(),
        })
    }

    /// Whether writes can be kept: `Err` once the file was deleted or
    /// replaced under the running gateway (said once in the log), or while
    /// a failed write's reopen is pending. Does no I/O but a `stat`, so
    /// `/ready` can ask it on an async worker.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt;
        let same =
            std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode && m.nlink() > 0);
        if !same {
            if !self.gone.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::error!(path = %self.path.display(), "the store file was deleted or replaced: refusing writes");
            }
            return Err(StoreError::Gone(self.path.clone()));
        }
        match &*lock(&self.fault) {
            Some(f) => Err(StoreError::Unwritable {
                path: self.path.clone(),
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
        let due = lock(&self.fault)
            .as_ref()
            .is_some_and(|f| f.next_try <= Instant::now());
        if !due {
            return;
        }
        let reopened = {
            let mut slot = crate::sync::write(&self.db);
            // Close first: the open handle holds the file's lock.
            drop(slot.take());
            match open_redb(self.path.parent().unwrap_or(Path::new("."))) {
                Ok(new) => {
                    *slot = Some(new);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        };
        let probed = reopened.and_then(|()| {
            self.transact(|tx| {
                tx.open_table(table(Collection::Meta))
                    .map_err(StoreError::from)?
                    .insert("probe", &b"1"[..])
                    .map_err(StoreError::from)?;
                Ok(())
            })
            .map_err(|e| e.to_string())
        });
        let mut f = lock(&self.fault);
        match probed {
            Ok(()) => {
                tracing::warn!(path = %self.path.display(), "the store writes again");
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
        let slot = crate::sync::read(&self.db);
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
        self.recover();
        self.check_writable()?;
        match self.transact(body) {
            Ok(()) => Ok(()),
            Err(e) => {
                let cause = e.to_string();
                tracing::error!(path = %self.path.display(), error = %cause, "a store write failed: refusing writes until the store reopens");
                *lock(&self.fault) = Some(Fault {
                    cause: cause.clone(),
                    next_try: Instant::now() + REOPEN_FIRST,
                    backoff: REOPEN_FIRST,
                });
                Err(StoreError::Unwritable {
                    path: self.path.clone(),
                    cause,
                    retry_after: REOPEN_FIRST,
                })
            }
        }
    }

    /// Writes `value` under `key`.
    pub fn put(&self, c: Collection, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(table(c))
                .map_err(StoreError::from)?
                .insert(key, value)
                .map_err(StoreError::from)?;
            Ok(())
        })
    }

    /// Deletes `keys`, in one transaction.
    pub fn delete(&self, c: Collection, keys: &[&str]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(table(c)).map_err(StoreError::from)?;
            for k in keys {
                t.remove(*k).map_err(StoreError::from)?;
            }
            Ok(())
        })
    }

    /// Every document of `c`, by key order.
    pub fn load(&self, c: Collection) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let slot = crate::sync::read(&self.db);
        let db = slot
            .as_ref()
            .ok_or_else(|| StoreError::Io("the store is being reopened".into()))?;
        let tx = db.begin_read().map_err(StoreError::from)?;
        let t = tx.open_table(table(c)).map_err(StoreError::from)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(StoreError::from)? {
            let (k, v) = row.map_err(StoreError::from)?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }
}
