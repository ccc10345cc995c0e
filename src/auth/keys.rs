//! Publisher API keys (`--api-keys-file`): stored as SHA-256 digests, never
//! as the keys themselves.
//!
//! The file is JSON, one entry per key, each with the same `ratatoskr`
//! claim a JWT carries:
//!
//! ```json
//! {"keys": [{"id": "plant-7", "sha256": "<64 hex digits>",
//!            "ratatoskr": {"publish": ["mac:*"], "types": ["status-*"]}}]}
//! ```
//!
//! A key is a high-entropy random string (`ratatoskr new-api-key` makes
//! one), so a plain SHA-256 is enough: there is nothing to brute-force that
//! a slow hash would protect. A presented key is hashed and looked up; the
//! lookup's timing can only tell about the digest, which says nothing about
//! the key. The file is bounded ([`MAX_FILE_BYTES`], [`MAX_KEYS`]) and every
//! claim is bounded as a JWT's is.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Claim, Principal, Scope, ScopeError};

/// Largest keys file read.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Most keys in one file.
pub const MAX_KEYS: usize = 10_000;

/// Why a keys file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    /// It cannot be read.
    #[error("--api-keys-file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// It is not the documented JSON.
    #[error("--api-keys-file: not a keys document: {0}")]
    Syntax(String),
    /// An entry is wrong.
    #[error("--api-keys-file: key {index} ({id:?}): {reason}")]
    Entry {
        /// Its position, from 0.
        index: usize,
        /// Its id, as written.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// Too many entries.
    #[error("--api-keys-file: more than {MAX_KEYS} keys")]
    TooMany,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    keys: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    sha256: String,
    #[serde(default)]
    ratatoskr: Claim,
}

/// The loaded keys, by digest.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Principal>,
}

impl ApiKeys {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, KeysFileError> {
        let read_error = |reason: String| KeysFileError::Read {
            path: path.display().to_string(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| read_error(e.to_string()))?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(read_error(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        Self::parse(&std::fs::read(path).map_err(|e| read_error(e.to_string()))?)
    }

    /// Checks a keys document.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeysFileError> {
        let file: File =
            serde_json::from_slice(bytes).map_err(|e| KeysFileError::Syntax(e.to_string()))?;
        if file.keys.len() > MAX_KEYS {
            return Err(KeysFileError::TooMany);
        }
        let mut by_digest = HashMap::with_capacity(file.keys.len());
        let mut ids = std::collections::HashSet::new();
        for (index, entry) in file.keys.into_iter().enumerate() {
            let bad = |reason: String| KeysFileError::Entry {
                index,
                id: entry.id.chars().take(128).collect(),
                reason,
            };
            if !valid_id(&entry.id) {
                return Err(bad(
                    "id must be 1 to 128 letters, digits, '.', '_' or '-'".into()
                ));
            }
            if !ids.insert(entry.id.clone()) {
                return Err(bad("a second key with this id".into()));
            }
            let digest = parse_digest(&entry.sha256)
                .ok_or_else(|| bad("sha256 must be 64 hexadecimal digits".into()))?;
            let principal = principal(&entry.id, entry.ratatoskr)
                .map_err(|e: ScopeError| bad(e.to_string()))?;
            if by_digest.insert(digest, principal).is_some() {
                return Err(bad("the same key as an earlier entry".into()));
            }
        }
        Ok(Self { by_digest })
    }

    /// The principal of a presented key, if it is one.
    pub fn identify(&self, presented: &str) -> Option<Principal> {
        if self.by_digest.is_empty() {
            return None;
        }
        self.identify_digest(&digest(presented))
    }

    /// The principal of a presented key, by its [`digest`].
    pub fn identify_digest(&self, digest: &[u8; 32]) -> Option<Principal> {
        self.by_digest.get(digest).cloned()
    }

    /// How many keys are loaded.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

/// The SHA-256 of a key, as the file stores it.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new random key (256 bits from the operating system's generator,
/// through UUID v4s) and its file entry.
pub fn new_key(id: &str) -> Result<(String, serde_json::Value), String> {
    if !valid_id(id) {
        return Err("the id must be 1 to 128 letters, digits, '.', '_' or '-'".into());
    }
    let random: String = (0..3)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let key = format!("rtk_{random}");
    let entry = serde_json::json!({
        "id": id,
        "sha256": hex::encode(digest(&key)),
        "ratatoskr": {"publish": ["*"]},
    });
    Ok((key, entry))
}

fn principal(id: &str, claim: Claim) -> Result<Principal, ScopeError> {
    Ok(match Scope::from_claim(claim)? {
        None => Principal::Admin,
        Some(mut scope) => {
            scope.owner = Some(format!("key:{id}"));
            Principal::Scoped(Arc::new(scope))
        }
    })
}

fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::DeviceId;

    fn file(entries: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "keys": entries })).unwrap()
    }

    #[test]
    fn a_key_is_found_by_its_digest_and_grants_its_claim() {
        let (key, mut entry) = new_key("plant-7").unwrap();
        assert!(key.starts_with("rtk_") && key.len() == 4 + 96);
        entry["ratatoskr"] =
            serde_json::json!({"publish": ["mac:112233445566"], "types": ["status"]});
        let keys = ApiKeys::parse(&file(serde_json::json!([entry]))).unwrap();
        let Some(Principal::Scoped(scope)) = keys.identify(&key) else {
            panic!("a scoped key");
        };
        let mac = DeviceId::parse("mac:112233445566").unwrap();
        assert!(scope.may_publish(Some(&mac), Some("status")));
        assert!(!scope.may_publish(Some(&mac), Some("reboot")));
        assert_eq!(scope.owner.as_deref(), Some("key:plant-7"));
        assert!(keys.identify("rtk_wrong").is_none());
        assert!(
            keys.identify(&hex::encode(digest(&key))).is_none(),
            "the digest is not the key"
        );
        let admin = ApiKeys::parse(&file(serde_json::json!([{
            "id": "ops", "sha256": hex::encode(digest(&key)), "ratatoskr": {"admin": true}
        }])))
        .unwrap();
        assert!(matches!(admin.identify(&key), Some(Principal::Admin)));
    }

    #[test]
    fn a_file_at_the_key_limit_loads_and_one_past_it_is_refused() {
        let entries: Vec<serde_json::Value> = (0..MAX_KEYS)
            .map(|i| serde_json::json!({"id": format!("k{i}"), "sha256": hex::encode(digest(&format!("key-{i}"))),
                                         "ratatoskr": {"publish": ["mac:*"], "types": ["status-*"]}}))
            .collect();
        let keys = ApiKeys::parse(&file(serde_json::Value::Array(entries.clone()))).unwrap();
        assert_eq!(keys.len(), MAX_KEYS);
        assert!(keys.identify("key-9999").is_some());
        let mut over = entries;
        over.push(serde_json::json!({"id": "one-more", "sha256": hex::encode(digest("x"))}));
        assert!(matches!(
            ApiKeys::parse(&file(serde_json::Value::Array(over))),
            Err(KeysFileError::TooMany)
        ));
    }

    #[test]
    fn the_file_never_holds_the_key() {
        let (key, entry) = new_key("k").unwrap();
        assert!(!entry.to_string().contains(&key));
        assert!(!entry.to_string().contains(&key[4..]));
    }

    #[test]
    fn bad_files_are_refused_with_the_entry_named() {
        let good = hex::encode(digest("x"));
        for (doc, expect) in [
            (b"{".to_vec(), "not a keys document"),
            (b"{\"keys\": [], \"extra\": 1}".to_vec(), "unknown field"),
            (
                file(serde_json::json!([{"id": "a", "sha256": "00"}])),
                "64 hexadecimal",
            ),
            (
                file(serde_json::json!([{"id": "", "sha256": good}])),
                "id must be",
            ),
            (
                file(serde_json::json!([{"id": "a b", "sha256": good}])),
                "id must be",
            ),
            (
                file(
                    serde_json::json!([{"id": "a", "sha256": good}, {"id": "a", "sha256": hex::encode(digest("y"))}]),
                ),
                "second key",
            ),
            (
                file(serde_json::json!([{"id": "a", "sha256": good}, {"id": "b", "sha256": good}])),
                "same key",
            ),
            (
                file(
                    serde_json::json!([{"id": "a", "sha256": good, "ratatoskr": {"publish": ["not a device"]}}]),
                ),
                "ratatoskr.publish",
            ),
            (
                file(serde_json::json!([{"id": "a", "sha256": good, "plain": "secret"}])),
                "unknown field",
            ),
        ] {
            let e = ApiKeys::parse(&doc).unwrap_err().to_string();
            assert!(e.contains(expect), "{e} should say {expect}");
        }
    }
}
