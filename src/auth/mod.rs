//! Who is asking, and what they may do.
//!
//! Off unless configured (`--api-token`, `--jwt-secret`, `--jwt-public-key`,
//! `--jwks-file`): then every request is [`Principal::Anyone`]. With auth
//! on, a request carries a token (see `http::auth`), and becomes:
//! - [`Principal::Admin`]: the `--api-token`, or a JWT whose `ratatoskr`
//!   claim says `admin: true`: everything, as with auth off;
//! - [`Principal::Scoped`]: a JWT limited by its `ratatoskr` claim
//!   ([`Claim`]): the devices it may subscribe to and publish for, and the
//!   event types it may publish. Management (registrations, event types,
//!   hooks) needs an admin.
//!
//! Globs in a claim are bounded as a subscriber's type globs are (they run
//! inside the hub's publish lock for a scoped stream): at most
//! [`MAX_SCOPE_ENTRIES`] entries per list and the hub's wildcard limits.

pub mod credentials;
pub mod jwt;
pub mod keys;
pub mod lease;
pub mod lease_watch;
pub mod secret;

use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::event::DeviceId;
use crate::hub::filter::{wildcards, DeviceScope, MAX_FILTER_WILDCARDS, MAX_WILDCARDS};

/// Most entries in one list of a claim.
pub const MAX_SCOPE_ENTRIES: usize = 1_000;
/// Most accounts one claim names (a scoped stream looks an event's device
/// up in each, inside the hub's publish lock).
pub const MAX_CLAIM_ACCOUNTS: usize = 64;

/// The `ratatoskr` claim of a token, as sent.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
pub struct Claim {
    /// Device ids or globs the holder may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Accounts whose devices the holder may subscribe to.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// Device ids or globs the holder may publish for.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Event-type globs the holder may publish (absent: any type).
    #[serde(default)]
    pub types: Option<Vec<String>>,
    /// Everything, as the `--api-token`.
    #[serde(default)]
    pub admin: bool,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Auth is off: anyone may do anything.
    Anyone,
    /// The `--api-token`, or an admin token.
    Admin,
    /// A token limited to a scope.
    Scoped(Arc<Scope>),
}

impl Principal {
    /// Whether this principal may manage registrations, event types and
    /// hooks (and see everything).
    pub fn is_admin(&self) -> bool {
        matches!(self, Self::Anyone | Self::Admin)
    }

    /// The scope, for a scoped token.
    pub fn scope(&self) -> Option<&Scope> {
        match self {
            Self::Scoped(s) => Some(s),
            _ => None,
        }
    }
}

/// Why a claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// A list longer than [`MAX_SCOPE_ENTRIES`].
    #[error("claim ratatoskr.{0}: more than {MAX_SCOPE_ENTRIES} entries")]
    TooMany(&'static str),
    /// More than [`MAX_CLAIM_ACCOUNTS`] accounts.
    #[error("claim ratatoskr.accounts: more than {MAX_CLAIM_ACCOUNTS} entries")]
    TooManyAccounts,
    /// An entry that is neither a device id nor a bounded glob.
    #[error("claim ratatoskr.{0}: {1:?} {2}")]
    Entry(&'static str, String, String),
}

/// What a scoped token may do.
#[derive(Debug)]
pub struct Scope {
    /// Devices it may subscribe to.
    pub subscribe: DeviceSet,
    /// Devices it may publish for.
    pub publish: DeviceSet,
    /// Event types it may publish; `None`: any.
    pub types: Option<GlobSet>,
    /// Who holds it, for the registrations it makes: a JWT's `sub`, or
    /// `key:<id>` for an API key. `None`: it may make none.
    pub owner: Option<String>,
    /// The claim as given: its account ids (see [`Scope::accounts`]), and
    /// what `/api/whoami` shows its holder.
    pub claim: Claim,
}

impl Scope {
    /// A scope that allows nothing.
    pub fn nothing() -> Self {
        Self {
            subscribe: DeviceSet::default(),
            publish: DeviceSet::default(),
            types: None,
            owner: None,
            claim: Claim::default(),
        }
    }

    /// The scope a claim grants; `Ok(None)` for an admin claim.
    pub fn from_claim(claim: Claim) -> Result<Option<Self>, ScopeError> {
        if claim.admin {
            return Ok(None);
        }
        let types = match &claim.types {
            None => None,
            Some(list) => Some(globs("types", list)?),
        };
        if claim.accounts.len() > MAX_CLAIM_ACCOUNTS {
            return Err(ScopeError::TooManyAccounts);
        }
        Ok(Some(Self {
            subscribe: DeviceSet::new("subscribe", &claim.subscribe)?,
            publish: DeviceSet::new("publish", &claim.publish)?,
            types,
            owner: None,
            claim,
        }))
    }

    /// Accounts whose devices it may subscribe to (resolved per stream,
    /// through the accounts room).
    pub fn accounts(&self) -> &[String] {
        &self.claim.accounts
    }

    /// Whether this scope may publish an event of `event_type` (none: the
    /// empty type) for `device` (none: only with a glob matching "").
    pub fn may_publish(&self, device: Option<&DeviceId>, event_type: Option<&str>) -> bool {
        let device_ok = match device {
            Some(d) => self.publish.allows(d),
            None => self.publish.0.glob_matches(""),
        };
        let type_ok = self
            .types
            .as_ref()
            .is_none_or(|t| t.is_match(event_type.unwrap_or("")));
        device_ok && type_ok
    }
}

/// A set of devices: exact ids (indexed by the hub) and globs. Shared
/// with every stream the token opens (their filters hold the same set).
#[derive(Debug, Clone, Default)]
pub struct DeviceSet(Arc<DeviceScope>);

impl DeviceSet {
    fn new(field: &'static str, entries: &[String]) -> Result<Self, ScopeError> {
        if entries.len() > MAX_SCOPE_ENTRIES {
            return Err(ScopeError::TooMany(field));
        }
        let mut exact = std::collections::HashSet::new();
        let mut patterns = Vec::new();
        for e in entries {
            if wildcards(e) == 0 {
                let id = DeviceId::parse(e)
                    .map_err(|err| ScopeError::Entry(field, e.clone(), err.to_string()))?;
                exact.insert(id);
            } else {
                patterns.push(e.clone());
            }
        }
        let globs = if patterns.is_empty() {
            None
        } else {
            Some(globs(field, &patterns)?)
        };
        Ok(Self(Arc::new(DeviceScope {
            exact,
            globs,
            accounts: Vec::new(),
        })))
    }

    /// Whether `device` is in this set.
    pub fn allows(&self, device: &DeviceId) -> bool {
        self.0.allows(device)
    }

    /// Whether it holds no device at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same set, as a stream filter's device scope.
    pub fn as_filter_scope(&self) -> Arc<DeviceScope> {
        self.0.clone()
    }
}

/// Compiles bounded globs (`literal_separator` off: device ids hold `:`
/// and `/`, and `*` should cross them).
fn globs(field: &'static str, patterns: &[String]) -> Result<GlobSet, ScopeError> {
    if patterns.len() > MAX_SCOPE_ENTRIES {
        return Err(ScopeError::TooMany(field));
    }
    let mut total = 0;
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let n = wildcards(p);
        if p.is_empty() || p.len() > 256 || n > MAX_WILDCARDS {
            return Err(ScopeError::Entry(
                field,
                p.clone(),
                format!("must be 1 to 256 characters with at most {MAX_WILDCARDS} wildcards"),
            ));
        }
        total += n;
        let glob = Glob::new(p).map_err(|e| ScopeError::Entry(field, p.clone(), e.to_string()))?;
        set.add(glob);
    }
    if total > MAX_FILTER_WILDCARDS {
        return Err(ScopeError::Entry(
            field,
            patterns.join(","),
            format!("{total} wildcards in all; at most {MAX_FILTER_WILDCARDS}"),
        ));
    }
    set.build()
        .map_err(|e| ScopeError::Entry(field, patterns.join(","), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(json: serde_json::Value) -> Claim {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_scope_allows_its_devices_and_types_only() {
        let s = Scope::from_claim(claim(serde_json::json!({
            "subscribe": ["mac:112233445566", "serial:abc*"],
            "publish": ["mac:112233445566"],
            "types": ["status-*"]
        })))
        .unwrap()
        .unwrap();
        let mac = DeviceId::parse("mac:112233445566").unwrap();
        let other = DeviceId::parse("mac:665544332211").unwrap();
        let serial = DeviceId::parse("serial:abc123").unwrap();
        assert!(s.subscribe.allows(&mac) && s.subscribe.allows(&serial));
        assert!(!s.subscribe.allows(&other));
        assert!(s.may_publish(Some(&mac), Some("status-up")));
        assert!(!s.may_publish(Some(&mac), Some("reboot")));
        assert!(!s.may_publish(Some(&serial), Some("status-up")));
        assert!(
            !s.may_publish(None, Some("status-up")),
            "no device, no exact grant"
        );
        assert!(!s.may_publish(Some(&mac), None), "no type, a types list");
    }

    #[test]
    fn admin_claims_and_bad_claims() {
        assert!(Scope::from_claim(claim(serde_json::json!({"admin": true})))
            .unwrap()
            .is_none());
        let too_wild = format!("{}x", "*?".repeat(9));
        for bad in [
            serde_json::json!({"subscribe": ["not a device"]}),
            serde_json::json!({"subscribe": [too_wild]}),
            serde_json::json!({"types": [""]}),
        ] {
            assert!(Scope::from_claim(claim(bad.clone())).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_SCOPE_ENTRIES)
            .map(|i| format!("mac:{i:012x}"))
            .collect();
        assert_eq!(
            Scope::from_claim(claim(serde_json::json!({"publish": many}))).unwrap_err(),
            ScopeError::TooMany("publish")
        );
        let empty = Scope::from_claim(Claim::default()).unwrap().unwrap();
        assert!(empty.subscribe.is_empty() && empty.publish.is_empty());
    }
}
