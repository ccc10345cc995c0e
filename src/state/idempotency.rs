//! `Idempotency-Key` memory: a repeated key within the window returns the
//! first event's id and is not published again.
//!
//! A key is the credential's own ([`scoped_key`]): one tenant's key never
//! answers for another's event. It remembers a [`Fingerprint`] of the
//! request it was first used with; the same key with another request is
//! refused ([`Claim::Mismatch`], a 422 as Stripe and Svix answer), never
//! answered with the first event's id.
//!
//! A key is claimed *before* its event is published, so two concurrent
//! requests with one key cannot both publish; the second sees the claim in
//! progress and gets a 409. Memory is bounded: past the key limit the
//! oldest keys are forgotten first (a key is at most [`MAX_KEY_LEN`] bytes
//! and its namespace 33, so an entry is a few hundred bytes at most).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::event::EventId;

/// Longest accepted key, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// A digest of what shapes an event (body, content type, routing given
/// outside the body), kept with its key to tell a retry from a new event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The digest of `parts`, each length-prefixed (an absent part differs
    /// from an empty one, and no two splits of the same bytes collide).
    pub fn of(parts: &[Option<&[u8]>]) -> Self {
        let mut h = Sha256::new();
        for part in parts {
            match part {
                Some(bytes) => {
                    h.update((bytes.len() as u64).to_le_bytes());
                    h.update(bytes);
                }
                None => h.update(u64::MAX.to_le_bytes()),
            }
        }
        Self(h.finalize().into())
    }

    /// Lower-case hex, as stored in Redis.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads back what [`Fingerprint::hex`] wrote; `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

/// `key` in the namespace of the credential that sent it: `-:<key>` for
/// auth off and admins (one namespace: each may act for all), else the
/// first 128 bits of the sha256 of the scoped token's owner (`sub:<sub>`,
/// `key:<id>`) or, for a token without `sub`, of its claim, in hex. The
/// digest is fixed-length, so no owner and key can spell another's pair.
/// Called only for a request that carries a key.
pub fn scoped_key(who: &Principal, key: &str) -> String {
    let Some(scope) = who.scope() else {
        return format!("-:{key}");
    };
    let mut h = Sha256::new();
    match &scope.owner {
        Some(owner) => {
            h.update(b"owner\0");
            h.update(owner.as_bytes());
        }
        None => {
            h.update(b"claim\0");
            // Serialising a claim (strings, lists, a flag) cannot fail.
            h.update(serde_json::to_vec(&scope.claim).unwrap_or_default());
        }
    }
    let digest = h.finalize();
    format!("{}:{key}", hex::encode(&digest[..16]))
}

/// What the cache says about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First time in the window: publish, then call [`IdempotencyCache::complete`].
    New,
    /// Seen before, with the same fingerprint: this was the id.
    Seen(EventId),
    /// Seen before with the same fingerprint, and that request has not finished yet.
    InProgress,
    /// Seen before (finished or not) with another fingerprint.
    Mismatch,
}

impl Claim {
    /// What a claim stored with `stored` (and its id, once published)
    /// means for a request with `fingerprint`.
    pub fn of(stored: &Fingerprint, id: Option<EventId>, fingerprint: &Fingerprint) -> Self {
        if stored != fingerprint {
            return Self::Mismatch;
        }
        id.map_or(Self::InProgress, Self::Seen)
    }
}

/// One remembered key.
#[derive(Debug)]
struct Entry {
    claimed: Instant,
    fingerprint: Fingerprint,
    id: Option<EventId>,
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<String, Entry>,
    order: VecDeque<(Instant, String)>,
}

/// Keys seen within the window.
#[derive(Debug)]
pub struct IdempotencyCache {
    state: Mutex<State>,
    window: Duration,
    max_keys: usize,
}

impl IdempotencyCache {
    /// An empty cache.
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            window,
            max_keys: max_keys.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Claims `key` for a request with `fingerprint` at `now`.
    pub fn claim(&self, key: &str, fingerprint: &Fingerprint, now: Instant) -> Claim {
        let mut s = self.lock();
        self.expire(&mut s, now);
        if let Some(e) = s.keys.get(key) {
            return Claim::of(&e.fingerprint, e.id, fingerprint);
        }
        while s.keys.len() >= self.max_keys {
            let Some((at, oldest)) = s.order.pop_front() else {
                break;
            };
            forget(&mut s, at, &oldest);
        }
        s.keys.insert(
            key.to_owned(),
            Entry {
                claimed: now,
                fingerprint: *fingerprint,
                id: None,
            },
        );
        s.order.push_back((now, key.to_owned()));
        Claim::New
    }

    /// Records the id published for a claimed key.
    pub fn complete(&self, key: &str, id: EventId) {
        if let Some(entry) = self.lock().keys.get_mut(key) {
            entry.id = Some(id);
        }
    }

    fn expire(&self, s: &mut State, now: Instant) {
        while let Some((at, _)) = s.order.front() {
            if now.duration_since(*at) <= self.window {
                break;
            }
            if let Some((at, key)) = s.order.pop_front() {
                forget(s, at, &key);
            }
        }
    }
}

/// Removes `key` if the entry is the one claimed at `at` (a key forgotten
/// and claimed again has a newer entry that must stay).
fn forget(s: &mut State, at: Instant, key: &str) {
    if s.keys.get(key).is_some_and(|e| e.claimed == at) {
        s.keys.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: Fingerprint = Fingerprint([1; 32]);

    #[test]
    fn repeated_key_returns_first_id_within_window() {
        let c = IdempotencyCache::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert_eq!(c.claim("k", &FP, t0), Claim::New);
        assert_eq!(c.claim("k", &FP, t0), Claim::InProgress);
        c.complete("k", EventId::from_u64(7));
        assert_eq!(
            c.claim("k", &FP, t0 + Duration::from_secs(5)),
            Claim::Seen(EventId::from_u64(7))
        );
        assert_eq!(c.claim("k", &FP, t0 + Duration::from_secs(11)), Claim::New);
        c.complete("k", EventId::from_u64(8));
        // The stale first entry expiring must not forget the new claim.
        assert_eq!(
            c.claim("k", &FP, t0 + Duration::from_secs(12)),
            Claim::Seen(EventId::from_u64(8))
        );
    }

    #[test]
    fn oldest_keys_are_forgotten_past_the_limit() {
        let c = IdempotencyCache::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        for k in ["a", "b", "c"] {
            assert_eq!(c.claim(k, &FP, t0), Claim::New);
            c.complete(k, EventId::from_u64(1));
        }
        assert_eq!(c.claim("a", &FP, t0), Claim::New);
        assert_eq!(c.claim("c", &FP, t0), Claim::Seen(EventId::from_u64(1)));
    }

    #[test]
    fn another_fingerprint_is_a_mismatch_in_progress_and_after() {
        let c = IdempotencyCache::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        let other = Fingerprint::of(&[Some(b"2")]);
        assert_eq!(c.claim("k", &FP, t0), Claim::New);
        assert_eq!(c.claim("k", &other, t0), Claim::Mismatch);
        c.complete("k", EventId::from_u64(7));
        assert_eq!(c.claim("k", &other, t0), Claim::Mismatch);
        assert_eq!(c.claim("k", &FP, t0), Claim::Seen(EventId::from_u64(7)));
    }

    #[test]
    fn fingerprints_tell_absent_empty_and_split_parts_apart() {
        let of = |p: &[Option<&[u8]>]| Fingerprint::of(p);
        assert_ne!(of(&[None]), of(&[Some(b"")]));
        assert_ne!(
            of(&[Some(b"ab"), Some(b"c")]),
            of(&[Some(b"a"), Some(b"bc")])
        );
        assert_eq!(of(&[Some(b"x")]), of(&[Some(b"x")]));
    }

    #[test]
    fn keys_are_namespaced_by_credential() {
        let scoped = |owner: Option<&str>, publish: &str| {
            let claim = crate::auth::Claim {
                publish: vec![publish.to_owned()],
                ..Default::default()
            };
            let mut scope = crate::auth::Scope::from_claim(claim).unwrap().unwrap();
            scope.owner = owner.map(str::to_owned);
            Principal::Scoped(std::sync::Arc::new(scope))
        };
        let admin = scoped_key(&Principal::Admin, "k");
        assert_eq!(admin, scoped_key(&Principal::Anyone, "k"));
        let a = scoped_key(&scoped(Some("sub:a"), "mac:112233445566"), "k");
        let b = scoped_key(&scoped(Some("sub:b"), "mac:112233445566"), "k");
        let a_too = scoped_key(&scoped(Some("sub:a"), "mac:665544332211"), "k");
        let anon = scoped_key(&scoped(None, "mac:112233445566"), "k");
        let anon_other = scoped_key(&scoped(None, "mac:665544332211"), "k");
        assert_eq!(a, a_too, "one owner, one namespace");
        let all = [&admin, &a, &b, &anon, &anon_other];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }
}
