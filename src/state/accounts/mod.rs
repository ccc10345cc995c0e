//! Accounts and the devices they own (the IoT seed's model: a device
//! belongs to an account). A token's `accounts` claim lets it subscribe to
//! those accounts' devices, as they are at each event: a device added to
//! an account reaches streams already open, and one removed stops at once.
//!
//! Kept in the store like registrations (`accounts` collection, one JSON
//! document per account), changed by admins through
//! `/api/accounts/{id}/devices`. Each account's devices are one
//! [`SharedDevices`]: a set swapped whole on change, that open streams
//! hold and read without a lock.
//!
//! Bounded: [`MAX_DEVICES_PER_ACCOUNT`] devices per account, [`MAX_ACCOUNTS`]
//! accounts, and [`MAX_TOTAL_BYTES`] for every device id held in all (a
//! count alone is not a bound: ids are up to 256 bytes). A stored account
//! that breaks a limit is loaded disabled (it grants nothing) and reported.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::DeviceId;
use crate::hub::filter::SharedDevices;
use crate::state::documents::Documents;
use crate::state::store::{Collection, Store, StoreError, StoredDisabled};
use crate::sync::{read, write};
use crate::validation::FieldError;

/// Most devices in one account.
pub const MAX_DEVICES_PER_ACCOUNT: usize = 10_000;
/// Most accounts.
pub const MAX_ACCOUNTS: usize = 10_000;
/// Most bytes of device ids held in all accounts (each id counts its
/// length plus [`ENTRY_OVERHEAD`]).
pub const MAX_TOTAL_BYTES: usize = 64 * 1024 * 1024;
/// What one device entry costs besides its id's bytes (the `String`, the
/// set's slot), for [`MAX_TOTAL_BYTES`].
pub const ENTRY_OVERHEAD: usize = 48;

/// An account, as stored and shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    /// Its id.
    pub id: String,
    /// Its devices, canonical and sorted.
    pub devices: Vec<String>,
    /// First created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Bumped on every change.
    pub version: u64,
    /// Why it was loaded disabled (it then grants nothing). Never stored.
    #[serde(skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub disabled: Option<String>,
}

/// The body of `PUT /api/accounts/{id}/devices`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicesRequest {
    /// Every device of the account (replaces what it had).
    pub devices: Vec<String>,
}

/// Why an account change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Bad id or devices.
    #[error("invalid account")]
    Invalid(Vec<FieldError>),
    /// No such account, or no such device in it.
    #[error("{0}")]
    NotFound(String),
    /// A limit on the number or size of accounts.
    #[error("{0}")]
    Full(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Entry {
    account: Account,
    devices: SharedDevices,
    bytes: usize,
}

/// Every account, by id.
pub struct Accounts {
    docs: Documents,
    entries: RwLock<HashMap<String, Entry>>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("count", &read(&self.entries).len())
            .finish_non_exhaustive()
    }
}

impl Accounts {
    /// Loads the stored accounts.
    pub fn open(store: Arc<Store>, disabled: &StoredDisabled) -> Result<Self, StoreError> {
        let me = Self {
            docs: Documents::new(store, Collection::Accounts, disabled),
            entries: RwLock::new(HashMap::new()),
        };
        me.reload()?;
        Ok(me)
    }

    /// Re-reads every account (cluster mode: another node changed one).
    /// Streams keep their handles: an account's set is swapped in place.
    pub fn reload(&self) -> Result<(), StoreError> {
        let _w = self.docs.lock();
        let rows = self.docs.load::<Account>()?;
        let mut entries = write(&self.entries);
        let mut seen = HashSet::new();
        let mut total = 0usize;
        for stored in rows {
            let (id, mut account) = (stored.key, stored.value);
            let checked = if seen.len() >= MAX_ACCOUNTS {
                Err(format!("more than {MAX_ACCOUNTS} accounts"))
            } else {
                canonical(&account.devices)
                    .map_err(|e| crate::validation::describe(&e))
                    .and_then(|set| {
                        let bytes = bytes_of(&set);
                        if total + bytes > MAX_TOTAL_BYTES {
                            Err(format!(
                                "past {MAX_TOTAL_BYTES} bytes of device ids in all accounts"
                            ))
                        } else {
                            Ok((set, bytes))
                        }
                    })
            };
            let (set, bytes) = match checked {
                Ok(ok) => ok,
                Err(reason) => {
                    self.docs.loaded_disabled(&id, &reason);
                    account.disabled = Some(reason);
                    (HashSet::new(), 0)
                }
            };
            total += bytes;
            seen.insert(id.clone());
            install(&mut entries, &id, account, set, bytes);
        }
        entries.retain(|id, e| {
            let keep = seen.contains(id);
            if !keep {
                e.devices.store(Arc::new(HashSet::new()));
            }
            keep
        });
        Ok(())
    }

    /// The device sets of the accounts named (unknown ones grant nothing).
    pub fn sets(&self, ids: &[String]) -> Vec<SharedDevices> {
        let entries = read(&self.entries);
        ids.iter()
            .filter_map(|id| entries.get(id).map(|e| e.devices.clone()))
            .collect()
    }

    /// One account.
    pub fn get(&self, id: &str) -> Option<Account> {
        read(&self.entries).get(id).map(|e| e.account.clone())
    }

    /// Every account's id and device count, by id.
    pub fn list(&self) -> Vec<(String, usize, Option<String>)> {
        let mut all: Vec<_> = read(&self.entries)
            .iter()
            .map(|(id, e)| {
                (
                    id.clone(),
                    e.account.devices.len(),
                    e.account.disabled.clone(),
                )
            })
            .collect();
        all.sort();
        all
    }

    /// Replaces an account's devices (creates it). Returns it and whether
    /// it is new.
    pub fn put(&self, id: &str, devices: &[String]) -> Result<(Account, bool), AccountError> {
        check_id(id)?;
        let set = canonical(devices).map_err(AccountError::Invalid)?;
        self.change(id, |_| Ok(set))
    }

    /// Adds one device (creates the account). Returns the account and
    /// whether the device is new in it.
    pub fn add(&self, id: &str, device: &str) -> Result<(Account, bool), AccountError> {
        check_id(id)?;
        let device = parse_device("device", device).map_err(|e| AccountError::Invalid(vec![e]))?;
        let mut added = false;
        let (account, _) = self.change(id, |old| {
            let mut set = old.cloned().unwrap_or_default();
            added = set.insert(device);
            Ok(set)
        })?;
        Ok((account, added))
    }

    /// Removes one device.
    pub fn remove(&self, id: &str, device: &str) -> Result<Account, AccountError> {
        let device = DeviceId::parse(device).map_err(|_| {
            AccountError::NotFound(format!("no device {device:?} in account {id:?}"))
        })?;
        let (account, _) = self.change(id, |old| {
            let mut set = old
                .cloned()
                .ok_or_else(|| AccountError::NotFound(format!("no account {id:?}")))?;
            if !set.remove(&device) {
                return Err(AccountError::NotFound(format!(
                    "no device {device} in account {id:?}"
                )));
            }
            Ok(set)
        })?;
        Ok(account)
    }

    /// Deletes an account: its devices stop reaching every stream that
    /// named it.
    pub fn delete(&self, id: &str) -> Result<(), AccountError> {
        let _w = self.docs.lock();
        if !read(&self.entries).contains_key(id) {
            return Err(AccountError::NotFound(format!("no account {id:?}")));
        }
        self.docs.delete(&[id])?;
        if let Some(e) = write(&self.entries).remove(id) {
            e.devices.store(Arc::new(HashSet::new()));
        }
        Ok(())
    }

    /// One change under the write lock: `next` makes the new set from the
    /// old one; the limits are checked, the store written, the set swapped.
    fn change(
        &self,
        id: &str,
        next: impl FnOnce(Option<&HashSet<DeviceId>>) -> Result<HashSet<DeviceId>, AccountError>,
    ) -> Result<(Account, bool), AccountError> {
        let _w = self.docs.lock();
        let (old_set, old_account, others_bytes, count) = {
            let entries = read(&self.entries);
            let old = entries.get(id);
            let total: usize = entries.values().map(|e| e.bytes).sum();
            (
                old.map(|e| e.devices.load_full()),
                old.map(|e| e.account.clone()),
                total - old.map_or(0, |e| e.bytes),
                entries.len(),
            )
        };
        if old_account.is_none() && count >= MAX_ACCOUNTS {
            return Err(AccountError::Full(format!(
                "at most {MAX_ACCOUNTS} accounts"
            )));
        }
        let set = next(old_set.as_deref())?;
        if set.len() > MAX_DEVICES_PER_ACCOUNT {
            return Err(AccountError::Invalid(vec![FieldError::new(
                "devices",
                format!("at most {MAX_DEVICES_PER_ACCOUNT} devices per account"),
            )]));
        }
        let bytes = bytes_of(&set);
        if others_bytes + bytes > MAX_TOTAL_BYTES {
            return Err(AccountError::Full(format!(
                "the accounts would hold more than {MAX_TOTAL_BYTES} bytes of device ids"
            )));
        }
        let now = Utc::now();
        let devices: BTreeSet<&str> = set.iter().map(DeviceId::as_str).collect();
        let account = Account {
            id: id.to_owned(),
            devices: devices.into_iter().map(str::to_owned).collect(),
            created_at: old_account.as_ref().map_or(now, |a| a.created_at),
            updated_at: now,
            version: old_account.as_ref().map_or(1, |a| a.version + 1),
            disabled: None,
        };
        let doc = serde_json::to_vec(&account).expect("accounts serialise");
        self.docs.put(id, &doc)?;
        let mut entries = write(&self.entries);
        install(&mut entries, id, account.clone(), set, bytes);
        Ok((account, old_account.is_none()))
    }
}

/// Puts `account` and its devices in place: an account already held keeps
/// its set's handle (streams holding it see the new devices), a new one
/// gets a handle of its own.
fn install(
    entries: &mut HashMap<String, Entry>,
    id: &str,
    account: Account,
    set: HashSet<DeviceId>,
    bytes: usize,
) {
    match entries.get_mut(id) {
        Some(e) => {
            e.devices.store(Arc::new(set));
            e.account = account;
            e.bytes = bytes;
        }
        None => {
            entries.insert(
                id.to_owned(),
                Entry {
                    account,
                    devices: Arc::new(ArcSwap::from_pointee(set)),
                    bytes,
                },
            );
        }
    }
}

fn bytes_of(set: &HashSet<DeviceId>) -> usize {
    set.iter().map(|d| d.as_str().len() + ENTRY_OVERHEAD).sum()
}

/// An account id: 1 to 128 letters, digits, `.`, `_`, `-`, `:` or `@`.
fn check_id(id: &str) -> Result<(), AccountError> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(AccountError::Invalid(vec![FieldError::new(
            "id",
            "must be 1 to 128 letters, digits, '.', '_', '-', ':' or '@'",
        )]))
    }
}

fn parse_device(field: &str, raw: &str) -> Result<DeviceId, FieldError> {
    DeviceId::parse(raw).map_err(|e| FieldError::new(field, format!("{raw:?}: {e}")))
}

/// The canonical set of `devices`, every bad one named.
fn canonical(devices: &[String]) -> Result<HashSet<DeviceId>, Vec<FieldError>> {
    if devices.len() > MAX_DEVICES_PER_ACCOUNT {
        return Err(vec![FieldError::new(
            "devices",
            format!("at most {MAX_DEVICES_PER_ACCOUNT} devices per account"),
        )]);
    }
    let mut set = HashSet::with_capacity(devices.len());
    let mut errors = Vec::new();
    for (i, raw) in devices.iter().enumerate() {
        match parse_device(&format!("devices[{i}]"), raw) {
            Ok(d) => {
                set.insert(d);
            }
            Err(e) if errors.len() < 10 => errors.push(e),
            Err(_) => {}
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::store::StoreKind;

    fn accounts() -> Accounts {
        let store = Arc::new(Store::open(StoreKind::Memory, std::path::Path::new("")).unwrap());
        Accounts::open(store, &StoredDisabled::default()).unwrap()
    }

    fn dev(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    #[test]
    fn a_held_set_follows_the_account() {
        let a = accounts();
        assert!(a.sets(&["acme".into()]).is_empty(), "unknown: nothing");
        let (acc, new) = a.put("acme", &["mac:AABBCCDDEEFF".into()]).unwrap();
        assert!(new);
        assert_eq!(acc.devices, ["mac:aabbccddeeff"]);
        let held = a.sets(&["acme".into(), "other".into()]);
        assert_eq!(held.len(), 1);
        assert!(held[0].load().contains(&dev("mac:aabbccddeeff")));
        let (_, added) = a.add("acme", "serial:7").unwrap();
        assert!(added);
        assert!(
            held[0].load().contains(&dev("serial:7")),
            "seen by the holder"
        );
        a.remove("acme", "mac:aabbccddeeff").unwrap();
        assert!(
            !held[0].load().contains(&dev("mac:aabbccddeeff")),
            "revoked"
        );
        assert!(matches!(
            a.remove("acme", "mac:aabbccddeeff"),
            Err(AccountError::NotFound(_))
        ));
        a.delete("acme").unwrap();
        assert!(
            held[0].load().is_empty(),
            "a deleted account grants nothing"
        );
        assert!(a.get("acme").is_none());
    }

    #[test]
    fn limits_and_bad_input() {
        let a = accounts();
        assert!(matches!(a.put("a b", &[]), Err(AccountError::Invalid(_))));
        assert!(matches!(
            a.put("acme", &["not a device".into()]),
            Err(AccountError::Invalid(_))
        ));
        let many: Vec<String> = (0..=MAX_DEVICES_PER_ACCOUNT)
            .map(|i| format!("mac:{i:012x}"))
            .collect();
        assert!(matches!(
            a.put("acme", &many),
            Err(AccountError::Invalid(_))
        ));
        assert!(a.get("acme").is_none(), "nothing half-made");
    }

    #[test]
    fn a_stored_account_that_breaks_a_limit_loads_disabled() {
        let store = Arc::new(Store::open(StoreKind::Memory, std::path::Path::new("")).unwrap());
        let now = Utc::now();
        let bad = Account {
            id: "big".into(),
            devices: vec!["not a device".into()],
            created_at: now,
            updated_at: now,
            version: 1,
            disabled: None,
        };
        store
            .put(
                Collection::Accounts,
                "big",
                &serde_json::to_vec(&bad).unwrap(),
            )
            .unwrap();
        let a = Accounts::open(store, &StoredDisabled::default()).unwrap();
        let got = a.get("big").unwrap();
        assert!(got.disabled.is_some());
        assert!(a.sets(&["big".into()])[0].load().is_empty());
    }
}
