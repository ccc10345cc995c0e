//! Lock helpers shared by every module that keeps state behind a std lock.
//!
//! Every critical section in the gateway leaves its data consistent before
//! anything in it can panic, so a poisoned lock is safe to keep using:
//! these helpers take the guard either way instead of spreading the same
//! `unwrap_or_else(PoisonError::into_inner)` over the code. A panic that
//! is caught (a task's, a thread's) is read by [`panic_message`].

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, poisoned or not.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `l`, poisoned or not.
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `l`, poisoned or not.
pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// The message of a caught panic (`panic!` with a literal or a formatted
/// text); `None` for any other payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}
