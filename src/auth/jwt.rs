//! Verifying JSON Web Tokens with the configured keys (`jsonwebtoken`).
//!
//! Each key is bound to its algorithm family: an HS256 secret verifies only
//! HS256/384/512 tokens, an RSA key only RS/PS, an EC key only ES, an
//! Ed25519 key only EdDSA. A token is checked only against keys of the
//! family its header names (and of its `kid`, when a JWKS key has it), so
//! an HS256 token "signed" with an RSA public key finds no key at all
//! (algorithm confusion), and `alg: none` is not an algorithm. `exp` is
//! required; `nbf`, `aud` and `iss` are checked when present or
//! configured, with `--jwt-leeway` for clock skew.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;

use super::lease::Lease;
use super::{Claim, Principal, Scope, ScopeError};
use crate::auth::secret::Secret;

/// Where the keys come from, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct JwtSettings {
    /// HS256 secret.
    pub secret: Option<Secret>,
    /// A PEM file with one RSA, EC or Ed25519 public key.
    pub public_key: Option<PathBuf>,
    /// A JWKS file (`{"keys": […]}`).
    pub jwks: Option<PathBuf>,
    /// Accepted audiences (none: `aud` is not checked).
    pub audience: Vec<String>,
    /// Accepted issuers (none: `iss` is not checked).
    pub issuer: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl JwtSettings {
    /// Whether any key is configured (JWTs are accepted at all).
    pub fn any_key(&self) -> bool {
        self.secret.is_some() || self.public_key.is_some() || self.jwks.is_some()
    }
}

/// Why the keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file that cannot be read or parsed.
    #[error("{flag} {path}: {reason}")]
    File {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A secret the crypto library refused.
    #[error("--jwt-secret: {0}")]
    Secret(String),
}

/// Why a token was refused (each is a 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or an algorithm that is not one (`none`).
    #[error("the token is not a valid JWT")]
    Malformed,
    /// No configured key of the token's algorithm family (and `kid`).
    #[error("no key for this token's algorithm")]
    NoKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    Signature,
    /// Past `exp`.
    #[error("the token has expired")]
    Expired,
    /// Before `nbf`.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// Wrong `aud`.
    #[error("the token is for another audience")]
    Audience,
    /// Wrong `iss`.
    #[error("the token is from another issuer")]
    Issuer,
    /// No `exp`.
    #[error("the token has no exp claim")]
    NoExpiry,
    /// A `ratatoskr` claim out of bounds.
    #[error("{0}")]
    Claim(#[from] ScopeError),
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    family: AlgorithmFamily,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

/// Checks tokens against the configured keys.
#[derive(Debug)]
pub struct Verifier {
    keys: Vec<Key>,
    /// One per algorithm the keys can verify, built once at load.
    validations: Vec<Validation>,
    /// `--jwt-leeway`, in seconds: a stream's token ends this long after
    /// its `exp`, when it would be refused.
    leeway_secs: u64,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    ratatoskr: Option<Claim>,
    #[serde(default)]
    sub: Option<String>,
    /// Checked by the validation (required); read here for the lease. A
    /// number, possibly with a fraction.
    #[serde(default)]
    exp: Option<f64>,
}

impl Verifier {
    /// Loads the keys; `Ok(None)` when none is configured.
    pub fn load(settings: &JwtSettings) -> Result<Option<Arc<Self>>, KeyError> {
        if !settings.any_key() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        if let Some(secret) = &settings.secret {
            let key = DecodingKey::from_secret(secret.expose().as_bytes())
                .map_err(|e| KeyError::Secret(e.to_string()))?;
            keys.push(Key {
                kid: None,
                key,
                family: AlgorithmFamily::Hmac,
            });
        }
        if let Some(path) = &settings.public_key {
            keys.push(pem_key(path)?);
        }
        if let Some(path) = &settings.jwks {
            keys.extend(jwks_keys(path)?);
        }
        let mut validations: Vec<Validation> = Vec::new();
        for k in &keys {
            for &alg in k.family.algorithms() {
                if !validations.iter().any(|v| v.algorithms == [alg]) {
                    validations.push(validation(alg, settings));
                }
            }
        }
        Ok(Some(Arc::new(Self {
            keys,
            validations,
            leeway_secs: settings.leeway_secs,
        })))
    }

    /// The principal a token stands for.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        self.verify_leased(token).map(|(p, _)| p)
    }

    /// The principal a token stands for, and its lease: until `exp` plus
    /// the leeway.
    pub fn verify_leased(&self, token: &str) -> Result<(Principal, Lease), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let family = header.alg.family();
        let by_kid = header
            .kid
            .as_deref()
            .filter(|kid| self.keys.iter().any(|k| k.kid.as_deref() == Some(*kid)));
        let candidates = self
            .keys
            .iter()
            .filter(|k| k.family == family)
            .filter(|k| by_kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)));
        let Some(validation) = self
            .validations
            .iter()
            .find(|v| v.algorithms == [header.alg])
        else {
            return Err(TokenError::NoKey);
        };
        let mut refused = TokenError::NoKey;
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, validation) {
                Ok(data) => {
                    let claim = data.claims.ratatoskr.unwrap_or_default();
                    // The validation required a numeric exp; a fraction
                    // rounds down, as the validation reads it.
                    let lease = match data.claims.exp {
                        Some(exp) => Lease::until_exp(exp.max(0.0) as u64, self.leeway_secs),
                        None => return Err(TokenError::NoExpiry),
                    };
                    let principal = match Scope::from_claim(claim)? {
                        None => Principal::Admin,
                        Some(mut scope) => {
                            scope.owner = data
                                .claims
                                .sub
                                .filter(|s| !s.is_empty() && s.len() <= 256)
                                .map(|s| format!("sub:{s}"));
                            Principal::Scoped(Arc::new(scope))
                        }
                    };
                    return Ok((principal, lease));
                }
                Err(e) => {
                    let why = match e.kind() {
                        ErrorKind::InvalidSignature => TokenError::Signature,
                        ErrorKind::ExpiredSignature => TokenError::Expired,
                        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                        ErrorKind::InvalidAudience => TokenError::Audience,
                        ErrorKind::InvalidIssuer => TokenError::Issuer,
                        ErrorKind::MissingRequiredClaim(c) if c == "exp" => TokenError::NoExpiry,
                        ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::Audience,
                        ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::Issuer,
                        _ => TokenError::Malformed,
                    };
                    // A key that verified the signature says more than
                    // one that did not.
                    if refused == TokenError::NoKey || refused == TokenError::Signature {
                        refused = why;
                    }
                }
            }
        }
        Err(refused)
    }
}

/// What a token of `alg` must satisfy: `exp` (and `nbf` when present)
/// within the leeway, and a configured audience or issuer present and
/// right, not only right when present.
fn validation(alg: jsonwebtoken::Algorithm, settings: &JwtSettings) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = settings.leeway_secs;
    v.validate_nbf = true;
    v.validate_aud = !settings.audience.is_empty();
    let mut required = vec!["exp"];
    if v.validate_aud {
        v.set_audience(&settings.audience);
        required.push("aud");
    }
    if !settings.issuer.is_empty() {
        v.set_issuer(&settings.issuer);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError::File {
        flag,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Reads one kind of PEM public key.
type PemParser = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;

/// One public key from a PEM file: RSA, EC or Ed25519, whichever it is.
fn pem_key(path: &Path) -> Result<Key, KeyError> {
    let pem = read("--jwt-public-key", path)?;
    let tries: [(PemParser, AlgorithmFamily); 3] = [
        (DecodingKey::from_rsa_pem, AlgorithmFamily::Rsa),
        (DecodingKey::from_ec_pem, AlgorithmFamily::Ec),
        (DecodingKey::from_ed_pem, AlgorithmFamily::Ed),
    ];
    for (parse, family) in tries {
        if let Ok(key) = parse(&pem) {
            return Ok(Key {
                kid: None,
                key,
                family,
            });
        }
    }
    Err(KeyError::File {
        flag: "--jwt-public-key",
        path: path.to_owned(),
        reason: "not a PEM RSA, EC or Ed25519 public key".into(),
    })
}

/// Every usable key of a JWKS file.
fn jwks_keys(path: &Path) -> Result<Vec<Key>, KeyError> {
    let bad = |reason: String| KeyError::File {
        flag: "--jwks-file",
        path: path.to_owned(),
        reason,
    };
    let set: JwkSet = serde_json::from_slice(&read("--jwks-file", path)?)
        .map_err(|e| bad(format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| bad(format!("key {:?}: {e}", jwk.common.key_id)))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            family: key.family(),
            key,
        });
    }
    if keys.is_empty() {
        return Err(bad("no keys".into()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

    const SECRET: &str = "a-test-secret-of-enough-length-000";

    fn verifier(audience: &[&str]) -> Verifier {
        let settings = JwtSettings {
            secret: Some(SECRET.parse().unwrap()),
            audience: audience.iter().map(|s| s.to_string()).collect(),
            leeway_secs: 5,
            ..Default::default()
        };
        Arc::try_unwrap(Verifier::load(&settings).unwrap().unwrap()).unwrap()
    }

    fn token(claims: serde_json::Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn good_tokens_give_their_scope_and_bad_ones_say_why() {
        let v = verifier(&[]);
        let scoped = v
            .verify(&token(serde_json::json!({"exp": now() + 60, "ratatoskr": {"subscribe": ["mac:112233445566"]}})))
            .unwrap();
        assert!(scoped.scope().is_some());
        let admin = v
            .verify(&token(
                serde_json::json!({"exp": now() + 60, "ratatoskr": {"admin": true}}),
            ))
            .unwrap();
        assert!(matches!(admin, Principal::Admin));
        let cases = [
            (serde_json::json!({"exp": now() - 60}), TokenError::Expired),
            (
                serde_json::json!({"exp": now() + 60, "nbf": now() + 60}),
                TokenError::NotYetValid,
            ),
            (serde_json::json!({"sub": "x"}), TokenError::NoExpiry),
        ];
        for (claims, why) in cases {
            assert_eq!(
                v.verify(&token(claims.clone())).unwrap_err(),
                why,
                "{claims}"
            );
        }
        // Within the leeway.
        assert!(v
            .verify(&token(serde_json::json!({"exp": now() - 2})))
            .is_ok());
        let other = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"exp": now() + 60}),
            &EncodingKey::from_secret(b"another-secret-of-enough-length-0000").unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&other).unwrap_err(), TokenError::Signature);
        assert_eq!(v.verify("not.a.jwt").unwrap_err(), TokenError::Malformed);
    }

    #[test]
    fn alg_none_and_audiences() {
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(serde_json::json!({"alg": "none", "typ": "JWT"})),
            b64(serde_json::json!({"exp": now() + 60, "ratatoskr": {"admin": true}}))
        );
        assert_eq!(
            verifier(&[]).verify(&none).unwrap_err(),
            TokenError::Malformed
        );
        let v = verifier(&["ratatoskr"]);
        assert!(v
            .verify(&token(
                serde_json::json!({"exp": now() + 60, "aud": "ratatoskr"})
            ))
            .is_ok());
        assert_eq!(
            v.verify(&token(
                serde_json::json!({"exp": now() + 60, "aud": "someone-else"})
            ))
            .unwrap_err(),
            TokenError::Audience
        );
    }
}
