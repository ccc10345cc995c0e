//! How long a stream may outlive the request that opened it.
//!
//! A request is authenticated once, but a stream lasts hours: without a
//! lease, a JWT past its `exp`, or an API key removed from the keys file
//! and reloaded, would keep receiving every new event on the streams it
//! already opened. A [`Lease`] says what ends the credential: a JWT's
//! expiry (`exp` plus `--jwt-leeway`, the instant the gateway starts to
//! refuse it), and an API key's digest, looked up again after each reload.
//! The `--api-token` and auth off hold none: nothing ends their streams.
//!
//! A stream watches its lease with a [`super::lease_watch::LeaseWatch`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What ends a credential, as its request found it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lease {
    /// The first instant the credential is refused (a JWT's `exp` plus
    /// the leeway, to the next second: `exp` is in whole seconds).
    expires: Option<SystemTime>,
    /// An API key's digest: the key must still be loaded after a reload.
    key: Option<[u8; 32]>,
}

impl Lease {
    /// A credential that nothing ends (the `--api-token`, auth off).
    pub fn forever() -> Self {
        Self::default()
    }

    /// A JWT refused from `exp + leeway + 1` seconds after the epoch (the
    /// verifier accepts it while `now - leeway <= exp`, in whole seconds).
    pub fn until_exp(exp_secs: u64, leeway_secs: u64) -> Self {
        let refused_at = exp_secs.saturating_add(leeway_secs).saturating_add(1);
        Self {
            // Past what the clock can hold: practically never.
            expires: UNIX_EPOCH.checked_add(Duration::from_secs(refused_at)),
            key: None,
        }
    }

    /// An API key, valid while a reload keeps it.
    pub fn api_key(digest: [u8; 32]) -> Self {
        Self {
            expires: None,
            key: Some(digest),
        }
    }

    /// Whether anything can end it (else a stream need not watch it).
    pub fn ends(&self) -> bool {
        self.expires.is_some() || self.key.is_some()
    }

    /// The first instant the credential is refused, if any.
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }

    /// The API key's digest, if it is one.
    pub fn key(&self) -> Option<&[u8; 32]> {
        self.key.as_ref()
    }
}

/// Why a stream's credential no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The token expired (`exp` plus the leeway passed).
    Expired,
    /// A reload of the credentials no longer has it (an API key removed
    /// from `--api-keys-file`).
    Removed,
}

impl Revoked {
    /// What the stream's `revoked` notice says.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Expired => "the token expired",
            Self::Removed => "the credential was removed (credentials reloaded)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_is_refused_from_the_second_after_exp_plus_leeway() {
        let l = Lease::until_exp(1_000, 5);
        assert_eq!(l.expires, Some(UNIX_EPOCH + Duration::from_secs(1_006)));
        assert!(l.ends());
        assert!(!Lease::forever().ends());
        assert!(Lease::api_key([0; 32]).ends());
        assert_eq!(Lease::until_exp(u64::MAX, 5).expires, None);
    }
}
