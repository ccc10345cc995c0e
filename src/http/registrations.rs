//! `/api/registrations`: create, list, read, replace or renew, delete.
//!
//! Responses carry the registration without its secrets, its `ETag`, and
//! its destination's delivery figures. `PUT` and `DELETE` honour
//! `If-Match` (412 when the registration changed meanwhile).
//!
//! Admins see and change every registration. A scoped token with an owner
//! (a JWT `sub`, an API key) makes registrations for devices it may read
//! only (403 otherwise), and sees and changes only its own: another's is
//! 404, as if it did not exist.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::body::ApiJson;
use super::query::QueryPairs;
use super::App;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::event::DeviceId;
use crate::forward::destination::Destination;
use crate::state::registry::filter::FilterSpec;
use crate::state::registry::spec::{Origin, Registration, RegistrationRequest};
use crate::state::registry::RegistryError;
use crate::validation::FieldError;

/// Default and largest page for `GET /api/registrations`.
const PAGE: (usize, usize) = (100, 1000);

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let detail = e.to_string();
        match e {
            RegistryError::Invalid(errors) => ApiError::invalid_fields(errors),
            RegistryError::NotFound(_) => ApiError::not_found(detail),
            RegistryError::PreconditionFailed(_) => ApiError::precondition_failed(detail),
            RegistryError::Full(_) => ApiError::unavailable(detail),
            RegistryError::OverBudget(_) => ApiError::unprocessable(detail),
            RegistryError::Store(cause) => ApiError::store_unavailable("registration", &cause),
            RegistryError::Forbidden(_) => ApiError::forbidden(detail),
        }
    }
}

/// Registrations compiled at once. Compiling a registration's patterns is
/// CPU work (up to [`crate::state::registry::filter::MAX_COMPILED_BYTES`] of
/// regexes, tens of milliseconds): it runs on the blocking pool, never an
/// async worker, and one at a time, so every other core is left to
/// streams, ingest and probes however many arrive at once.
const COMPILING_AT_ONCE: usize = 1;
/// How long a registration waits for its turn to compile before it is
/// refused (503): the bound in time of one request's compilation.
const COMPILE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
static COMPILING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(COMPILING_AT_ONCE);

/// Runs `work`, which compiles a registration, off the async workers and
/// in its turn ([`COMPILING_AT_ONCE`]); 503 after [`COMPILE_WAIT`].
pub async fn compile<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    let _turn = tokio::time::timeout(COMPILE_WAIT, COMPILING.acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::unavailable("too many registrations are being compiled; try again")
                .with_retry_after(std::time::Duration::from_secs(1))
        })?;
    super::store_write(work).await
}

/// Refuses destinations whose addresses are internal (SSRF), naming the field.
pub async fn check_addresses(app: &App, destination: &Destination) -> Result<(), ApiError> {
    let refused = app.delivery.policy().check_urls(&destination.urls()).await;
    let errors: Vec<FieldError> = refused
        .into_iter()
        .map(|(field, e)| FieldError::new(field, e.to_string()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_fields(errors))
    }
}

/// A registration as shown (its secrets never are).
#[derive(Serialize, ToSchema)]
pub struct RegistrationView<'a> {
    id: &'a str,
    devices: &'a [String],
    device_patterns: &'a [String],
    /// The destination, secrets and header values redacted: `has_secret`,
    /// `header_names`, and for a rotated webhook secret `has_previous_secret`
    /// and `previous_secret_expires_at` (RFC 3339) while its grace period runs.
    destination: serde_json::Value,
    filter: &'a FilterSpec,
    metadata: &'a BTreeMap<String, String>,
    /// Seconds.
    duration: u64,
    created_at: String,
    updated_at: String,
    expires_at: String,
    expires_in: i64,
    /// `api` or `xmidt_hook`.
    #[schema(value_type = String)]
    origin: Origin,
    /// `sub:<sub>` or `key:<id>` for a scoped token's registration.
    owner: Option<&'a str>,
    etag: String,
    /// `active` or `disabled`.
    status: &'static str,
    disabled_reason: Option<&'a str>,
    /// The destination's delivery figures (null while it has none).
    delivery: Option<DeliveryFigures>,
}

/// A destination's delivery figures, as a registration shows them.
#[derive(Serialize, ToSchema)]
pub struct DeliveryFigures {
    delivered: u64,
    failed: u64,
    expired: u64,
    retried: u64,
    dropped: u64,
    queue_depth: u64,
    in_flight: u64,
    queue_bytes: u64,
}

/// A page of registrations.
#[derive(Serialize, ToSchema)]
pub struct RegistrationPage<'a> {
    items: Vec<RegistrationView<'a>>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<&'a str>,
}

impl<'a> RegistrationView<'a> {
    /// `r` as shown now, with its destination's figures (while it is
    /// active and its destination has any).
    pub fn of(app: &App, r: &'a Registration) -> Self {
        let now = Utc::now();
        let ts = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        let delivery = match app.forwarding.destinations().get(&r.destination) {
            Some(o) if r.disabled.is_none() => Some(DeliveryFigures {
                delivered: o.metrics.delivered.get(),
                failed: o.metrics.failed.get(),
                expired: o.metrics.expired.get(),
                retried: o.metrics.retried.get(),
                dropped: o.metrics.dropped.get(),
                queue_depth: o.depth() as u64,
                in_flight: o.unfinished().1 as u64,
                queue_bytes: o.bytes() as u64,
            }),
            _ => None,
        };
        let off = r.disabled.is_some() || r.gone.is_some();
        Self {
            id: &r.id,
            devices: &r.devices,
            device_patterns: &r.device_patterns,
            destination: r.destination.redacted(now),
            filter: &r.filter,
            metadata: &r.metadata,
            duration: r.duration_secs,
            created_at: ts(&r.created_at),
            updated_at: ts(&r.updated_at),
            expires_at: ts(&r.expires_at),
            expires_in: (r.expires_at - now).num_seconds().max(0),
            origin: r.origin,
            owner: r.owner.as_deref(),
            etag: r.etag(),
            status: if off { "disabled" } else { "active" },
            disabled_reason: r.disabled.as_deref().or(r.gone.as_deref()),
            delivery,
        }
    }
}

fn with_etag(status: StatusCode, app: &App, r: &Registration) -> Response {
    let view = RegistrationView::of(app, r);
    let etag = HeaderValue::from_str(&view.etag);
    let mut response = (status, Json(view)).into_response();
    if let Ok(v) = etag {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

fn if_match(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get(header::IF_MATCH)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("If-Match is not valid text"))
        })
        .transpose()
}

/// Who is asking, for registrations: `None` for an admin (every
/// registration), else the owner it is limited to.
fn owner_of(who: &Principal) -> Result<Option<&str>, ApiError> {
    match who {
        Principal::Scoped(s) => s
            .owner
            .as_deref()
            .map(Some)
            .ok_or_else(|| ApiError::forbidden("this needs a token with a sub claim")),
        _ => Ok(None),
    }
}

/// A registration the caller may see (another owner's is not there).
pub(super) fn visible(app: &App, who: &Principal, id: &str) -> Result<Registration, ApiError> {
    let owner = owner_of(who)?;
    app.registry
        .get(id)
        .filter(|r| owner.is_none_or(|o| r.owner.as_deref() == Some(o)))
        .ok_or_else(|| RegistryError::NotFound(id.into()).into())
}

/// A scoped token registers only for devices it may read, and never by
/// pattern (a pattern cannot be checked against its scope).
fn within_scope(app: &App, who: &Principal, r: &Registration) -> Result<(), RegistryError> {
    let Some(scope) = who.scope() else {
        return Ok(());
    };
    if !r.device_patterns.is_empty() {
        return Err(RegistryError::Forbidden(
            "this token may not register by device pattern".into(),
        ));
    }
    let readable = super::auth::readable(app, scope);
    for d in &r.devices {
        let inside = DeviceId::parse(d).is_ok_and(|d| readable.allows(&d));
        if !inside {
            return Err(RegistryError::Forbidden(format!(
                "this token may not register for device {d}"
            )));
        }
    }
    Ok(())
}

/// Registers a destination for devices' events, for at most the maximum duration.
#[utoipa::path(
    post,
    path = "/api/registrations",
    tag = "registrations",
    request_body(content = crate::state::registry::spec::RegistrationRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = RegistrationView<'static>),
        crate::http::problems::JsonBody,
        crate::http::problems::Guarded,
        crate::http::problems::RateLimited,
        crate::http::problems::RegistrationsBusy,
        crate::http::problems::InvalidFields
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn create(
    State(app): State<App>,
    Caller(who): Caller,
    ApiJson(req): ApiJson<RegistrationRequest>,
) -> Result<Response, ApiError> {
    let owner = owner_of(&who)?.map(str::to_owned);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let registry = app.registry.clone();
    let mut registration = compile(move || registry.build(req, id, Origin::Api, None)).await?;
    within_scope(&app, &who, &registration)?;
    registration.owner = owner;
    check_addresses(&app, &registration.destination).await?;
    let registry = app.registry.clone();
    let registration = compile(move || registry.insert(registration)).await?;
    tracing::info!(id = %registration.id, destination = %registration.destination.label(),
        expires_at = %registration.expires_at, "registration created");
    let mut response = with_etag(StatusCode::CREATED, &app, &registration);
    if let Ok(v) = HeaderValue::from_str(&format!("/api/registrations/{}", registration.id)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// Unexpired registrations (a scoped token's own only), by id.
#[utoipa::path(
    get,
    path = "/api/registrations",
    tag = "registrations",
    params(("device" = Option<String>, Query, description = "Only those naming this device"), ("limit" = Option<usize>, Query, description = "1 to 1000 (100)"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses(
        (status = 200, description = "A page", body = RegistrationPage<'static>),
        (status = 400, description = "Bad query", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::Guarded
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn list(
    State(app): State<App>,
    Caller(who): Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let owner = owner_of(&who)?;
    let q = QueryPairs::parse(query.as_deref(), &["device", "limit", "cursor"])?;
    let device = q
        .one("device")?
        .map(|d| DeviceId::parse(d).map_err(|e| ApiError::bad_request(format!("device: {e}"))))
        .transpose()?;
    let limit = q.limit(PAGE.0, PAGE.1)?;
    let (items, more) = app
        .registry
        .list(device.as_ref(), owner, q.one("cursor")?, limit);
    let next = more.then(|| items.last().map(|r| r.id.clone())).flatten();
    let page = RegistrationPage {
        items: items
            .iter()
            .map(|r| RegistrationView::of(&app, r))
            .collect(),
        next_cursor: next.as_deref(),
    };
    Ok(Json(page).into_response())
}

/// One registration.
#[utoipa::path(
    get,
    path = "/api/registrations/{id}",
    tag = "registrations",
    params(("id" = String, Path, description = "The registration id")),
    responses(
        (status = 200, description = "It", body = RegistrationView<'static>),
        crate::http::problems::Guarded,
        crate::http::problems::NoSuchRegistration
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn get_one(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = visible(&app, &who, &id)?;
    Ok(with_etag(StatusCode::OK, &app, &r))
}

/// Replaces a registration, or renews it with the same body. With the same destination
/// (url or queue_url), a secret, headers or SQS credentials left out keep their current values.
/// A new webhook `secret` with `previous_secret_ttl` (at most `duration`) rotates it: the old
/// secret also signs `webhook-signature` (after the new one) until then; without it the old
/// secret stops at once. A secret left out or resent keeps a running grace period. The
/// response shows `has_previous_secret` and `previous_secret_expires_at`, never the secrets.
#[utoipa::path(
    put,
    path = "/api/registrations/{id}",
    tag = "registrations",
    params(("id" = String, Path, description = "The registration id"), ("If-Match" = Option<String>, Header, description = "Only if the ETag is still this (412 otherwise)")),
    request_body(content = crate::state::registry::spec::RegistrationRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced", body = RegistrationView<'static>),
        (status = 412, description = "If-Match no longer holds", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::JsonBody,
        crate::http::problems::Guarded,
        crate::http::problems::RateLimited,
        crate::http::problems::RegistrationsBusy,
        crate::http::problems::NoSuchRegistration,
        crate::http::problems::InvalidFields
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn replace(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(mut req): ApiJson<RegistrationRequest>,
) -> Result<Response, ApiError> {
    let condition = if_match(&headers)?.map(str::to_owned);
    let current = visible(&app, &who, &id)?;
    req.destination.inherit_secrets(&current.destination);
    check_addresses(&app, &req.destination).await?;
    let registry = app.registry.clone();
    let checker = app.clone();
    let updated = compile(move || {
        registry.replace(&id, condition.as_deref(), |current| {
            let next = registry.build(req, id.clone(), current.origin, Some(current))?;
            // Checked against the registration as it is under the write
            // lock: the owner cannot have changed, the devices must fit.
            within_scope(&checker, &who, &next)?;
            Ok(next)
        })
    })
    .await?;
    tracing::info!(id = %updated.id, expires_at = %updated.expires_at, "registration replaced");
    Ok(with_etag(StatusCode::OK, &app, &updated))
}

/// Deletes a registration.
#[utoipa::path(
    delete,
    path = "/api/registrations/{id}",
    tag = "registrations",
    params(("id" = String, Path, description = "The registration id"), ("If-Match" = Option<String>, Header, description = "Only if the ETag is still this (412 otherwise)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad If-Match", content_type = "application/problem+json", body = crate::http::problems::Problem),
        (status = 412, description = "If-Match no longer holds", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::Guarded,
        crate::http::problems::RateLimited,
        crate::http::problems::StoreUnavailable,
        crate::http::problems::NoSuchRegistration
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn delete(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let condition = match if_match(&headers) {
        Ok(c) => c.map(str::to_owned),
        Err(e) => return e.into_response(),
    };
    if let Err(e) = visible(&app, &who, &id) {
        return e.into_response();
    }
    let registry = app.registry.clone();
    let gone = id.clone();
    let result = super::store_write(move || registry.delete(&gone, condition.as_deref())).await;
    match result {
        Ok(()) => {
            tracing::info!(%id, "registration deleted");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => e.into_response(),
    }
}
