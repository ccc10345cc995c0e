//! Optional bearer-token protection (`--api-token`).
//!
//! When a token is configured, the API, the stream and the xmidt hook
//! endpoints need it, as `Authorization: Bearer <token>` or, for clients
//! that cannot set headers (a browser's `EventSource`), `?access_token=` on
//! `GET /events` only (a query string ends up in logs and histories, so it
//! is not accepted where a header can be set).
//! The dashboard page, its assets, `/health`, `/ready` and `/metrics` stay
//! open, so that the page can load and ask for the token, and probes and
//! scrapers need no secret. Tokens are compared in constant time.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, Method};
use sha2::{Digest, Sha256};

use super::App;
use crate::error::ApiError;

/// A secret string whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() < 16 {
            return Err("the token must be at least 16 characters".into());
        }
        Ok(Self(s.to_owned()))
    }
}

/// Refuses requests without the configured token (401).
pub async fn require_token(State(app): State<App>, request: Request, next: Next) -> Response {
    let Some(expected) = &app.config.api_token else {
        return next.run(request).await;
    };
    // CORS preflights carry no credentials by design.
    if request.method() == Method::OPTIONS {
        return next.run(request).await;
    }
    // A query token only where a header cannot be set: EventSource.
    let query_allowed = request.method() == Method::GET && request.uri().path() == "/events";
    let given = bearer(&request).or_else(|| query_allowed.then(|| from_query(&request)).flatten());
    if given.is_some_and(|t| same(&t, expected.expose())) {
        return next.run(request).await;
    }
    let mut response = ApiError::unauthorized(if query_allowed {
        "this gateway requires a token: Authorization: Bearer <token>, or ?access_token="
    } else {
        "this gateway requires a token: Authorization: Bearer <token> (?access_token= is accepted only on GET /events)"
    })
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ratatoskr\""),
    );
    response
}

fn bearer(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn from_query(request: &Request) -> Option<String> {
    form_urlencoded::parse(request.uri().query()?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// Constant-time equality: compares fixed-length digests byte by byte
/// without an early exit, so timing says nothing about the token.
fn same(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly_and_never_print() {
        assert!(same("a-long-enough-token", "a-long-enough-token"));
        assert!(!same("a-long-enough-token", "a-long-enough-tokeN"));
        assert!(!same("a-long-enough-token", ""));
        let s: Secret = "a-long-enough-token".parse().unwrap();
        assert!(!format!("{s:?}").contains("token"));
        assert!("short".parse::<Secret>().is_err());
    }
}
