//! The one-time conversion of a store file written by redb 2.

use std::path::Path;

use super::StoreError;

/// A store file written by an earlier release (redb 2, file format v2,
/// which redb 3 and later cannot open) is converted in place by redb 2.6's
/// own `Database::upgrade()`, once, after a copy of it is kept beside it
/// (`ratatoskr.redb.v2-backup`; delete it once the new release is trusted).
pub(super) fn upgrade_v2(path: &Path) -> Result<(), StoreError> {
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
