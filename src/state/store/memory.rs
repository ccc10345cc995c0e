//! The memory backend (`--store memory`): lost on exit, for tests and
//! throwaway runs.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::Collection;
use crate::sync::lock;

/// Documents in process memory, by collection and key.
#[derive(Debug, Default)]
pub struct MemoryStore(Mutex<BTreeMap<(Collection, String), Vec<u8>>>);

impl MemoryStore {
    /// Writes `value` under `key`.
    pub fn put(&self, c: Collection, key: &str, value: &[u8]) {
        lock(&self.0).insert((c, key.to_owned()), value.to_vec());
    }

    /// Deletes `keys`; missing keys are ignored.
    pub fn delete(&self, c: Collection, keys: &[&str]) {
        let mut m = lock(&self.0);
        for k in keys {
            m.remove(&(c, (*k).to_owned()));
        }
    }

    /// Every document of `c`, by key order.
    pub fn load(&self, c: Collection) -> Vec<(String, Vec<u8>)> {
        lock(&self.0)
            .iter()
            .filter(|((col, _), _)| *col == c)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }
}
