//! Authentication: who a request is ([`Principal`]), from its token.
//!
//! Off unless `--api-token` or a JSON Web Token key is configured; then the
//! API, the stream and the xmidt hook endpoints need a token:
//! - `Authorization: Bearer <token>` first;
//! - else the `ratatoskr_token` cookie (HttpOnly, for a browser on the
//!   same site);
//! - else, on `GET /events` only, `?access_token=` (a browser's
//!   `EventSource` cannot set headers; a query string ends up in access
//!   logs and histories, so it is not accepted where a header can be set).
//!
//! The `--api-token` is an admin; a JWT is what its `ratatoskr` claim says
//! ([`crate::auth`]). Management routes also need an admin
//! ([`require_admin`]). The dashboard page, its assets, `/health`, `/ready`
//! and `/metrics` stay open, so that the page can load and ask for the
//! token, and probes and scrapers need no secret. The API token is
//! compared in constant time.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, Method};

use super::App;
use std::sync::Arc;

use crate::auth::lease::Lease;
use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::hub::filter::DeviceScope;

/// A credential's rate-limit key: a digest of the token (never the token).
#[derive(Debug, Clone)]
pub struct ClientKey(pub String);

/// The cookie a browser may carry its token in.
pub const COOKIE: &str = "ratatoskr_token";

/// Finds who the request is and puts the [`Principal`] in its extensions;
/// refuses a missing or invalid token (401).
pub async fn authenticate(State(app): State<App>, mut request: Request, next: Next) -> Response {
    match identify(&app, &mut request) {
        Ok(()) => next.run(request).await,
        Err(refused) => *refused,
    }
}

/// Who a request is, as its credentials say.
#[derive(Debug)]
pub struct Identity {
    /// `None` only for a CORS preflight, which carries no credentials.
    pub principal: Option<Principal>,
    /// The credential's rate-limit key, made only where a limit reads it.
    pub key: Option<ClientKey>,
    /// What ends the credential, for a stream (`GET /events`) it opens;
    /// `None` elsewhere, and when nothing ends it.
    pub lease: Option<Lease>,
}

/// What [`authenticate`] does, with the result put in the request's
/// extensions: the [`Principal`] and, where a rate limit reads it, the
/// [`ClientKey`]; or the 401 answer.
pub fn identify<B>(app: &App, request: &mut http::Request<B>) -> Result<(), Box<Response>> {
    let Identity {
        principal,
        key,
        lease,
    } = identity(app, request)?;
    if let Some(key) = key {
        request.extensions_mut().insert(key);
    }
    if let Some(lease) = lease {
        request.extensions_mut().insert(lease);
    }
    if let Some(principal) = principal {
        request.extensions_mut().insert(principal);
    }
    Ok(())
}

/// Finds who the request is, leaving the request as it is: a caller
/// outside the router (the direct ingest path, [`super::Api`]) keeps the
/// result itself rather than pay an extension map (an allocation per
/// value) for it. Refuses a missing or invalid token (401).
pub fn identity<B>(app: &App, request: &http::Request<B>) -> Result<Identity, Box<Response>> {
    if !auth_on(app) {
        return Ok(Identity {
            principal: Some(Principal::Anyone),
            key: None,
            lease: None,
        });
    }
    // CORS preflights carry no credentials by design.
    if request.method() == Method::OPTIONS {
        return Ok(Identity {
            principal: None,
            key: None,
            lease: None,
        });
    }
    // A query token only where a header cannot be set: EventSource.
    let query_allowed = request.method() == Method::GET && request.uri().path() == "/events";
    let given = bearer(request)
        .or_else(|| cookie(request))
        .or_else(|| query_allowed.then(|| from_query(request)).flatten());
    let principal = match given {
        None => Err(if query_allowed {
            "this gateway requires a token: Authorization: Bearer <token>, the ratatoskr_token cookie, or ?access_token=".to_owned()
        } else {
            "this gateway requires a token: Authorization: Bearer <token> or the ratatoskr_token cookie (?access_token= is accepted only on GET /events)".to_owned()
        }),
        Some(ref token) => app.credentials.identify_leased(token),
    };
    match principal {
        Ok((p, lease)) => Ok(Identity {
            principal: Some(p),
            // Only a stream outlives its request.
            lease: query_allowed.then_some(lease).filter(Lease::ends),
            // A rate-limit key only where a limit will read it: the digest
            // is work on every request.
            key: given
                .as_ref()
                .filter(|_| app.rate_limits.any())
                .map(|token| {
                    let digest = crate::auth::keys::digest(token);
                    ClientKey(hex::encode(&digest[..12]))
                }),
        }),
        Err(why) => {
            let mut response = ApiError::unauthorized(why).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ratatoskr\""),
            );
            Err(Box::new(response))
        }
    }
}

/// Refuses anyone but an admin (403): management of registrations, event
/// types and hooks, and the gateway-wide statistics.
pub async fn require_admin(request: Request, next: Next) -> Response {
    match request.extensions().get::<Principal>() {
        Some(p) if p.is_admin() => next.run(request).await,
        // OPTIONS passes authentication without a principal.
        None if request.method() == Method::OPTIONS => next.run(request).await,
        _ => ApiError::forbidden("this needs an admin token").into_response(),
    }
}

/// Lets through admins and scoped tokens that can own things (a JWT with
/// a `sub`, an API key); refuses the rest (403). The handler then limits a
/// scoped token to what it owns: registrations.
pub async fn require_owner(request: Request, next: Next) -> Response {
    match request.extensions().get::<Principal>() {
        Some(p) if p.is_admin() => next.run(request).await,
        Some(Principal::Scoped(s)) if s.owner.is_some() => next.run(request).await,
        None if request.method() == Method::OPTIONS => next.run(request).await,
        Some(_) => ApiError::forbidden("this needs an admin token, or a token with a sub claim")
            .into_response(),
        None => ApiError::forbidden("this needs a token").into_response(),
    }
}

/// The devices a scope may read: its `subscribe` set, and its accounts'
/// devices as they are at each check (so a stream holding this set sees
/// an account's changes).
pub fn readable(app: &App, scope: &Scope) -> Arc<DeviceScope> {
    let granted = scope.subscribe.as_filter_scope();
    if scope.accounts().is_empty() {
        return granted;
    }
    Arc::new(DeviceScope {
        exact: granted.exact.clone(),
        globs: granted.globs.clone(),
        accounts: app.accounts.sets(scope.accounts()),
    })
}

/// `/api/whoami`: a scoped token's fields are present (owner and types
/// may be null); auth off and admins have only the role.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct WhoAmI<'a> {
    /// `anyone` (auth off), `admin` or `scoped`.
    role: &'static str,
    /// A scoped token's owner (`sub:<sub>`, `key:<id>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    owner: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscribe: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accounts: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    types: Option<Option<&'a [String]>>,
}

impl<'a> WhoAmI<'a> {
    fn of(who: &'a Principal) -> Self {
        let role = |role| Self {
            role,
            owner: None,
            subscribe: None,
            accounts: None,
            publish: None,
            types: None,
        };
        match who {
            Principal::Anyone => role("anyone"),
            Principal::Admin => role("admin"),
            Principal::Scoped(s) => Self {
                owner: Some(s.owner.as_deref()),
                subscribe: Some(&s.claim.subscribe),
                accounts: Some(&s.claim.accounts),
                publish: Some(&s.claim.publish),
                types: Some(s.claim.types.as_deref()),
                ..role("scoped")
            },
        }
    }
}

/// Who the caller is and what its token allows, for the dashboard.
#[utoipa::path(get, path = "/api/whoami", tag = "operations",
    responses(
        (status = 200, description = "The caller: role `anyone` (auth off), `admin`, or `scoped` with its claim", body = WhoAmI),
        (status = 401, description = "No valid token (auth on)", content_type = "application/problem+json", body = crate::http::problems::Problem)),
    security(("bearer" = []), ("cookie" = [])))]
pub async fn whoami(Caller(who): Caller) -> Response {
    axum::Json(WhoAmI::of(&who)).into_response()
}

/// The request's principal, as [`authenticate`] set it. With auth on, a
/// request it did not see is nobody: a scope that allows nothing.
pub fn principal(app: &App, set: Option<axum::Extension<Principal>>) -> Principal {
    match set {
        Some(axum::Extension(p)) => p,
        None if !auth_on(app) => Principal::Anyone,
        None => Principal::Scoped(Arc::new(Scope::nothing())),
    }
}

/// Who a handler serves: the [`Principal`] authentication found, or, where
/// it set none, anyone (auth off) or a scope that allows nothing.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl axum::extract::FromRequestParts<App> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        app: &App,
    ) -> Result<Self, Self::Rejection> {
        let set = parts.extensions.get::<Principal>().cloned();
        Ok(Self(principal(app, set.map(axum::Extension))))
    }
}

/// Whether any credential is configured (auth is off otherwise).
fn auth_on(app: &App) -> bool {
    app.credentials.enabled()
}

fn cookie<B>(request: &http::Request<B>) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| value.to_owned())
        })
}

fn bearer<B>(request: &http::Request<B>) -> Option<String> {
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

fn from_query<B>(request: &http::Request<B>) -> Option<String> {
    form_urlencoded::parse(request.uri().query()?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}
