//! Every credential the gateway accepts, in one place that SIGHUP reloads.
//!
//! The `--api-token` (an admin), JWT keys ([`super::jwt`]) and API keys
//! ([`super::keys`]). Files (PEM, JWKS, keys) are read again on SIGHUP:
//! a rotation needs no restart. A reload that fails keeps what was loaded
//! and says why (log, and `ratatoskr_credentials_reloads_total{result}`):
//! a typo in a new file never locks everyone out.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::jwt::{JwtSettings, KeyError, Verifier};
use super::keys::{ApiKeys, KeysFileError};
use super::lease::Lease;
use super::Principal;
use crate::auth::secret::Secret;

/// Why credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A JWT key.
    #[error(transparent)]
    Jwt(#[from] KeyError),
    /// The API keys file.
    #[error(transparent)]
    Keys(#[from] KeysFileError),
}

/// Where the credentials come from.
#[derive(Debug, Clone, Default)]
pub struct CredentialSettings {
    /// The `--api-token`.
    pub api_token: Option<Secret>,
    /// JWT keys and checks.
    pub jwt: JwtSettings,
    /// The `--api-keys-file`.
    pub api_keys_file: Option<PathBuf>,
}

impl CredentialSettings {
    /// Whether auth is on at all (any credential is configured).
    pub fn any(&self) -> bool {
        self.api_token.is_some() || self.jwt.any_key() || self.api_keys_file.is_some()
    }
}

/// One loaded set.
#[derive(Debug, Default)]
struct Loaded {
    verifier: Option<Arc<Verifier>>,
    keys: ApiKeys,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The credentials in force, swapped whole on reload.
#[derive(Debug)]
pub struct Credentials {
    settings: CredentialSettings,
    /// Digest of the `--api-token`, compared in constant time.
    api_token: Option<[u8; 32]>,
    current: ArcSwap<Loaded>,
    reloads: Family<ResultLabel, Counter>,
    /// Counts the reloads that took: open streams watch it, to look their
    /// API key up again ([`super::lease_watch::LeaseWatch`]).
    generation: tokio::sync::watch::Sender<u64>,
}

impl Credentials {
    /// Loads every configured credential; an error stops the start.
    pub fn load(settings: CredentialSettings) -> Result<Self, CredentialError> {
        let loaded = load(&settings)?;
        Ok(Self {
            api_token: settings
                .api_token
                .as_ref()
                .map(|t| super::keys::digest(t.expose())),
            settings,
            current: ArcSwap::from_pointee(loaded),
            reloads: Family::default(),
            generation: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Registers `ratatoskr_credentials_reloads_total{result}` (the
    /// registry adds the `ratatoskr_` prefix).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        // Both results exported from the start, at 0: a scraper sees the
        // series (and its name) before the first SIGHUP.
        for result in ["ok", "failed"] {
            let _ = self.reloads.get_or_create(&ResultLabel { result });
        }
        registry.register(
            "credentials_reloads",
            "Credential reloads on SIGHUP (JWT keys, API keys), by result",
            self.reloads.clone(),
        );
    }

    /// Whether auth is on.
    pub fn enabled(&self) -> bool {
        self.settings.any()
    }

    /// Reads the files again; keeps the old set when the new one fails.
    pub fn reload(&self) -> Result<(), CredentialError> {
        match load(&self.settings) {
            Ok(loaded) => {
                let keys = loaded.keys.len();
                self.current.store(Arc::new(loaded));
                // After the store: a stream woken by this finds the new set.
                self.generation.send_modify(|g| *g += 1);
                self.reloads
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                tracing::info!(api_keys = keys, "credentials reloaded");
                Ok(())
            }
            Err(e) => {
                self.reloads
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
                tracing::error!(error = %e, "credentials not reloaded; the previous ones stay in force");
                Err(e)
            }
        }
    }

    /// Who presents `token`: the API token, an API key, or a JWT.
    pub fn identify(&self, token: &str) -> Result<Principal, String> {
        self.identify_leased(token).map(|(p, _)| p)
    }

    /// Who presents `token`, and what ends the credential ([`Lease`]): a
    /// stream opened with it ends then.
    pub fn identify_leased(&self, token: &str) -> Result<(Principal, Lease), String> {
        let loaded = self.current.load();
        // One digest serves the API token and the API keys; a gateway with
        // neither (JWTs only) computes none.
        if self.api_token.is_some() || !loaded.keys.is_empty() {
            let digest = super::keys::digest(token);
            if self.api_token.is_some_and(|t| same(&t, &digest)) {
                return Ok((Principal::Admin, Lease::forever()));
            }
            if let Some(p) = loaded.keys.identify_digest(&digest) {
                return Ok((p, Lease::api_key(digest)));
            }
        }
        match &loaded.verifier {
            Some(v) => v.verify_leased(token).map_err(|e| e.to_string()),
            None => Err("the token is not valid".to_owned()),
        }
    }

    /// Whether the API key with this digest is still loaded.
    pub fn holds_key(&self, digest: &[u8; 32]) -> bool {
        self.current.load().keys.identify_digest(digest).is_some()
    }

    /// The reloads that took, to watch: it changes after each one.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

fn load(settings: &CredentialSettings) -> Result<Loaded, CredentialError> {
    Ok(Loaded {
        verifier: Verifier::load(&settings.jwt)?,
        keys: match &settings.api_keys_file {
            Some(path) => ApiKeys::load(path)?,
            None => ApiKeys::default(),
        },
    })
}

/// Constant-time equality of two digests.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_that_fails_keeps_the_previous_keys() {
        let dir = std::env::temp_dir().join(format!("rtk-cred-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.json");
        let (key, entry) = super::super::keys::new_key("a").unwrap();
        std::fs::write(&path, serde_json::json!({ "keys": [entry] }).to_string()).unwrap();
        let c = Credentials::load(CredentialSettings {
            api_keys_file: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert!(c.enabled());
        assert!(c.identify(&key).is_ok());
        std::fs::write(&path, "{ broken").unwrap();
        assert!(c.reload().is_err());
        assert!(c.identify(&key).is_ok(), "the old keys stay");
        let (other, entry) = super::super::keys::new_key("b").unwrap();
        std::fs::write(&path, serde_json::json!({ "keys": [entry] }).to_string()).unwrap();
        c.reload().unwrap();
        assert!(c.identify(&key).is_err(), "a removed key is refused");
        assert!(c.identify(&other).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_api_token_is_an_admin() {
        let c = Credentials::load(CredentialSettings {
            api_token: Some("a-long-enough-token".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(
            c.identify("a-long-enough-token"),
            Ok(Principal::Admin)
        ));
        assert!(c.identify("a-long-enough-tokeN").is_err());
    }
}
