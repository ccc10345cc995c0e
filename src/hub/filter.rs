//! Subscriber filters: which events a subscriber wants.
//!
//! Devices are OR-ed and matched exactly on canonical ids (the hub indexes
//! subscribers by device, so a device-filtered subscriber costs nothing for
//! other devices' events). Type patterns are globs (`device-*`), OR-ed.
//!
//! Type matching runs inside the hub's publish lock, once per subscriber,
//! so a client must not be able to make it costly:
//! - each pattern has at most [`MAX_WILDCARDS`] wildcards (`*`, `?`,
//!   `[…]`, each `{…}` alternative), and a filter at most
//!   [`MAX_FILTER_WILDCARDS`] in all;
//! - identical pattern sets share one compiled [`TypeMatcher`]
//!   process-wide (a compiled glob is a pure function of its text), so a
//!   thousand subscribers with the same filter cost one matcher;
//! - a matcher with real wildcards remembers its answer for the last
//!   [`MEMO_SIZE`] event types (event types are few, subscribers many).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::event::{DeviceId, Event};

/// Most device ids one subscriber may name.
pub const MAX_DEVICES: usize = 1_000;
/// Most type patterns one subscriber may name.
pub const MAX_TYPE_PATTERNS: usize = 32;
/// Most wildcards in one type pattern.
pub const MAX_WILDCARDS: usize = 8;
/// Most wildcards in all of one subscriber's type patterns.
pub const MAX_FILTER_WILDCARDS: usize = 32;
/// Event types a matcher remembers its answer for.
const MEMO_SIZE: usize = 256;

/// What a subscriber wants to receive.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    devices: Vec<DeviceId>,
    types: Option<Arc<TypeMatcher>>,
    type_patterns: Vec<String>,
    /// A token's device scope, for a subscriber that named no device: the
    /// devices it may see, as exact ids and bounded globs (checked per
    /// event, since the hub cannot index a glob).
    scope: Option<Arc<DeviceScope>>,
}

/// A set of devices a token grants (see [`EventFilter::within`] and
/// the auth module): exact ids, and bounded globs over canonical ids.
#[derive(Debug, Default)]
pub struct DeviceScope {
    /// Exact ids (a set: a stream checks each event against it, inside
    /// the hub's publish lock).
    pub exact: std::collections::HashSet<DeviceId>,
    /// Bounded globs over canonical ids.
    pub globs: Option<GlobSet>,
    /// Accounts' device sets, as they are now (an account's change is
    /// seen by the streams already open: removing a device revokes it).
    pub accounts: Vec<SharedDevices>,
}

/// A device set that its owner swaps whole while readers hold it (an
/// account's devices).
pub type SharedDevices = Arc<arc_swap::ArcSwap<std::collections::HashSet<DeviceId>>>;

impl DeviceScope {
    /// Whether `device` is in the set.
    pub fn allows(&self, device: &DeviceId) -> bool {
        self.exact.contains(device)
            || self.accounts.iter().any(|a| a.load().contains(device))
            || self.glob_matches(device.as_str())
    }

    /// Whether a glob matches `text` (`""` stands for an event with no
    /// device).
    pub fn glob_matches(&self, text: &str) -> bool {
        self.globs.as_ref().is_some_and(|g| g.is_match(text))
    }

    /// Whether it holds no device at all.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_none() && self.accounts.is_empty()
    }
}

/// Compiled type globs, shared by every filter with the same set.
#[derive(Debug)]
pub struct TypeMatcher {
    set: GlobSet,
    /// `Some` when the patterns have real wildcards (a literal or a
    /// `prefix*` is cheaper to match than to look up).
    memo: Option<Mutex<HashMap<Box<str>, bool>>>,
}

impl TypeMatcher {
    fn is_match(&self, ty: &str) -> bool {
        let Some(memo) = &self.memo else {
            return self.set.is_match(ty);
        };
        let mut memo = crate::sync::lock(memo);
        if let Some(&hit) = memo.get(ty) {
            return hit;
        }
        let hit = self.set.is_match(ty);
        if memo.len() >= MEMO_SIZE {
            memo.clear();
        }
        memo.insert(ty.into(), hit);
        hit
    }

    /// The shared matcher for `patterns` (sorted, deduplicated), compiling
    /// it if no live filter has it.
    fn shared(patterns: Vec<String>) -> Result<Arc<Self>, FilterError> {
        static SHARED: OnceLock<Mutex<HashMap<Vec<String>, Weak<TypeMatcher>>>> = OnceLock::new();
        let shared = SHARED.get_or_init(Default::default);
        if let Some(m) = crate::sync::lock(shared)
            .get(&patterns)
            .and_then(Weak::upgrade)
        {
            return Ok(m);
        }
        // Compiled outside the lock: other subscribers never wait on it.
        let mut set = GlobSetBuilder::new();
        let mut complex = false;
        for p in &patterns {
            let glob = Glob::new(p).map_err(|e| FilterError::Type {
                value: p.clone(),
                reason: e.kind().to_string(),
            })?;
            let n = wildcards(p);
            complex |= n > 1 || (n == 1 && !p.ends_with('*'));
            set.add(glob);
        }
        let set = set.build().map_err(|e| FilterError::Type {
            value: patterns.join(","),
            reason: e.to_string(),
        })?;
        let matcher = Arc::new(Self {
            set,
            memo: complex.then(Mutex::default),
        });
        let mut shared = crate::sync::lock(shared);
        if shared.len() >= 1024 {
            shared.retain(|_, w| w.strong_count() > 0);
        }
        shared.insert(patterns, Arc::downgrade(&matcher));
        Ok(matcher)
    }
}

/// Wildcards in a glob: `*` runs, `?`, `[…]` classes, and each `{…}`
/// alternative.
pub fn wildcards(pattern: &str) -> usize {
    let mut n = 0;
    let mut prev = '\0';
    let mut escaped = false;
    for c in pattern.chars() {
        if escaped {
            escaped = false;
            prev = c;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '*' if prev != '*' => n += 1,
            '?' | '[' | '{' | ',' => n += 1,
            _ => {}
        }
        prev = c;
    }
    n
}

/// Why a filter was refused.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A device value that is not a device id.
    #[error("device {value:?}: {source}")]
    Device {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        source: crate::event::device::DeviceIdError,
    },
    /// A type pattern that is not a glob.
    #[error("type pattern {value:?}: {reason}")]
    Type {
        /// The pattern as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Too many values.
    #[error("at most {max} {what} values are allowed")]
    TooMany {
        /// Which parameter.
        what: &'static str,
        /// The limit.
        max: usize,
    },
}

impl EventFilter {
    /// Builds a filter from raw device ids and type globs (both may be empty: any).
    pub fn new<D, T>(devices: D, types: T) -> Result<Self, FilterError>
    where
        D: IntoIterator,
        D::Item: AsRef<str>,
        T: IntoIterator,
        T::Item: AsRef<str>,
    {
        let mut ids = Vec::new();
        for raw in devices {
            let raw = raw.as_ref();
            let id = DeviceId::parse(raw).map_err(|source| FilterError::Device {
                value: raw.to_owned(),
                source,
            })?;
            if !ids.contains(&id) {
                ids.push(id);
            }
            if ids.len() > MAX_DEVICES {
                return Err(FilterError::TooMany {
                    what: "device",
                    max: MAX_DEVICES,
                });
            }
        }
        let patterns: Vec<String> = types.into_iter().map(|t| t.as_ref().to_owned()).collect();
        if patterns.len() > MAX_TYPE_PATTERNS {
            return Err(FilterError::TooMany {
                what: "type",
                max: MAX_TYPE_PATTERNS,
            });
        }
        let mut total = 0;
        for p in &patterns {
            if p.is_empty() || p.len() > 256 {
                return Err(FilterError::Type {
                    value: p.clone(),
                    reason: "must be 1 to 256 characters".into(),
                });
            }
            let n = wildcards(p);
            if n > MAX_WILDCARDS {
                return Err(FilterError::Type {
                    value: p.clone(),
                    reason: format!(
                        "has {n} wildcards; at most {MAX_WILDCARDS} per pattern (*, ?, [..], each {{..}} alternative)"
                    ),
                });
            }
            total += n;
        }
        if total > MAX_FILTER_WILDCARDS {
            return Err(FilterError::Type {
                value: patterns.join(","),
                reason: format!(
                    "{total} wildcards in all; at most {MAX_FILTER_WILDCARDS} per subscription"
                ),
            });
        }
        let types = if patterns.is_empty() {
            None
        } else {
            let mut key = patterns.clone();
            key.sort();
            key.dedup();
            Some(TypeMatcher::shared(key)?)
        };
        Ok(Self {
            devices: ids,
            types,
            type_patterns: patterns,
            scope: None,
        })
    }

    /// This filter, limited to `scope` (for a subscriber with a scoped
    /// token that named no device).
    pub fn within(mut self, scope: Arc<DeviceScope>) -> Self {
        self.scope = Some(scope);
        self
    }

    /// The devices this filter is limited to (empty: any device).
    pub fn devices(&self) -> &[DeviceId] {
        &self.devices
    }

    /// The type globs as given.
    pub fn type_patterns(&self) -> &[String] {
        &self.type_patterns
    }

    /// Whether the event passes, once the hub's index has chosen this
    /// subscriber by device: its type, and its token's device scope.
    pub fn matches_indexed(&self, event: &Event) -> bool {
        self.matches_type(event)
            && self
                .scope
                .as_ref()
                .is_none_or(|s| event.draft.device.as_ref().is_some_and(|d| s.allows(d)))
    }

    /// Whether the event's type passes (the device part is done by the hub's index).
    pub fn matches_type(&self, event: &Event) -> bool {
        match (&self.types, &event.draft.event_type) {
            (None, _) => true,
            (Some(m), Some(t)) => m.is_match(t),
            (Some(_), None) => false,
        }
    }

    /// Whether the event passes the whole filter.
    pub fn matches(&self, event: &Event) -> bool {
        let device_ok = self.devices.is_empty()
            || event
                .draft
                .device
                .as_ref()
                .is_some_and(|d| self.devices.contains(d));
        device_ok && self.matches_indexed(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_event;

    fn ev(device: Option<&str>, ty: Option<&str>) -> Event {
        test_event(1, device, ty)
    }

    #[test]
    fn empty_filter_matches_everything() {
        let f = EventFilter::new(Vec::<String>::new(), Vec::<String>::new()).unwrap();
        assert!(f.matches(&ev(None, None)));
        assert!(f.matches(&ev(Some("a"), Some("b"))));
    }

    #[test]
    fn devices_are_ored_and_canonical() {
        let f = EventFilter::new(["MAC:11:22:33:44:55:66", "b"], Vec::<String>::new()).unwrap();
        assert!(f.matches(&ev(Some("mac:112233445566"), None)));
        assert!(f.matches(&ev(Some("b"), None)));
        assert!(!f.matches(&ev(Some("c"), None)));
        assert!(!f.matches(&ev(None, None)));
    }

    #[test]
    fn type_globs() {
        let f = EventFilter::new(Vec::<String>::new(), ["device-*", "online"]).unwrap();
        assert!(f.matches(&ev(None, Some("device-status"))));
        assert!(f.matches(&ev(None, Some("online"))));
        assert!(!f.matches(&ev(None, Some("offline"))));
        assert!(!f.matches(&ev(None, None)));
        assert!(EventFilter::new(Vec::<String>::new(), ["a[b"]).is_err());
        assert!(EventFilter::new(["mac:12"], Vec::<String>::new()).is_err());
    }

    #[test]
    fn wildcards_are_capped_per_pattern_and_per_filter() {
        let none = Vec::<String>::new();
        let hostile = "*a".repeat(120);
        let e = EventFilter::new(none.clone(), [hostile.as_str()]).unwrap_err();
        assert!(e.to_string().contains("at most 8 per pattern"), "{e}");
        assert!(EventFilter::new(none.clone(), ["*a".repeat(8)]).is_ok());
        let five: Vec<String> = (0..5).map(|i| format!("{i}*a*b*c*d*e*f*")).collect();
        let e = EventFilter::new(none.clone(), &five).unwrap_err();
        assert!(e.to_string().contains("per subscription"), "{e}");
        assert_eq!(wildcards("a{b,c}[xy]?**z\\*"), 5);
    }

    #[test]
    fn identical_type_sets_share_one_matcher_and_remember_answers() {
        let none = Vec::<String>::new();
        let a = EventFilter::new(none.clone(), ["*x*y", "z*"]).unwrap();
        let b = EventFilter::new(none.clone(), ["z*", "*x*y", "z*"]).unwrap();
        assert!(Arc::ptr_eq(
            a.types.as_ref().unwrap(),
            b.types.as_ref().unwrap()
        ));
        for _ in 0..2 {
            assert!(a.matches(&ev(None, Some("1x2y"))));
            assert!(!b.matches(&ev(None, Some("1x2"))));
        }
        let memo = a.types.as_ref().unwrap().memo.as_ref().unwrap();
        assert_eq!(crate::sync::lock(memo).len(), 2);
        // A lone prefix glob is matched directly.
        let p = EventFilter::new(none, ["device-*"]).unwrap();
        assert!(p.types.as_ref().unwrap().memo.is_none());
    }
}
