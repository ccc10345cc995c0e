//! xmidt compatibility: Caduceus/ancla webhook registration (`POST /hook`,
//! `POST /api/v2/hook`) and listing (`GET /hooks`, `GET /api/v2/hooks`),
//! mapped onto registrations so existing xmidt clients work unchanged.
//!
//! As in Caduceus, the webhook's id is the sha256 of its URL, so posting
//! the same URL again replaces and renews it; `events` are unanchored
//! regexes (matched against the event type and the WRP event path);
//! `matcher.device_id` regexes match the event's (canonical) device only,
//! never the publisher-chosen source or event path, `.*` or none meaning
//! every device; `duration` is seconds or a Go duration, `until` an
//! RFC 3339 time that wins over it. Answers are `{"message": ...}` with 200,
//! and errors 400 as Caduceus gives them (in a problem document that also
//! has `message`). `config.alt_urls` is accepted and ignored.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;

use super::body::ApiJson;
use super::registrations::check_addresses;
use super::App;
use crate::error::ApiError;
use crate::event::DeviceId;
use crate::forward::destination::{BodyFormat, Destination, HttpDestination};
use crate::server::PeerAddr;
use crate::state::registry::filter::{FilterSpec, MAX_PATTERN_LEN};
use crate::state::registry::spec::{Origin, Registration, RegistrationRequest};
use crate::state::registry::RegistryError;
use crate::validation::describe;

/// A hook registered, as Caduceus answers it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct HookRegistered {
    /// `Success`.
    message: &'static str,
}

/// The ancla v1 webhook registration.
#[derive(Debug, Deserialize)]
pub struct Hook {
    config: HookConfig,
    #[serde(default)]
    failure_url: Option<String>,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    matcher: Matcher,
    #[serde(default)]
    duration: Option<Value>,
    #[serde(default)]
    until: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HookConfig {
    url: String,
    #[serde(default)]
    content_type: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default, rename = "alt_urls")]
    _alt_urls: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Matcher {
    #[serde(default)]
    device_id: Vec<String>,
}

fn refused(detail: impl Into<String>) -> ApiError {
    let detail = detail.into();
    ApiError::bad_request(detail.clone()).with_extra(json!({ "message": detail }))
}

/// Registers or renews an xmidt (Caduceus/ancla v1) webhook; also at /api/v2/hook.
#[utoipa::path(
    post,
    path = "/hook",
    tag = "xmidt",
    request_body(content = serde_json::Value, content_type = "application/json", description = "The ancla webhook registration: config.url, events, matcher.device_id, duration or until"),
    responses(
        (status = 200, description = "Registered", body = HookRegistered),
        (status = 422, description = "Past the bytes all registrations may keep (--max-registration-bytes)", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::JsonBody,
        crate::http::problems::Guarded,
        crate::http::problems::RateLimited,
        crate::http::problems::RegistrationsBusy
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn register(
    State(app): State<App>,
    peer: Option<Extension<PeerAddr>>,
    hook: Result<ApiJson<Hook>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(hook) = hook.map_err(|e| refused(format!("invalid webhook registration: {e}")))?;
    let id = hex::encode(sha2::Sha256::digest(hook.config.url.as_bytes()));
    let req = registration_of(
        hook,
        peer.map(|p| p.0),
        app.config.registration_max_duration,
    )?;
    check_addresses(&app, &req.destination)
        .await
        .map_err(|e| refused(e.to_string()))?;
    let r = upsert(&app, id, req).await?;
    tracing::info!(id = %r.id, destination = %r.destination.label(), "xmidt webhook registered");
    Ok(Json(HookRegistered { message: "Success" }).into_response())
}

/// Stores the hook's registration under `id`: a new one, or a renewal of
/// the one already there (ancla's "post again to renew"). Compiled off the
/// async workers, as every registration is.
async fn upsert(app: &App, id: String, req: RegistrationRequest) -> Result<Registration, ApiError> {
    let registry = app.registry.clone();
    super::registrations::compile(move || {
        let make = |previous: Option<&Registration>| {
            registry.build(req.clone(), id.clone(), Origin::XmidtHook, previous)
        };
        let written = if registry.get(&id).is_some() {
            registry.replace(&id, None, |current| make(Some(current)))
        } else {
            make(None).and_then(|r| registry.insert(r))
        };
        written.map_err(|e| match e {
            RegistryError::Invalid(errors) => refused(describe(&errors)),
            e => ApiError::from(e),
        })
    })
    .await
}

/// The registration an xmidt hook asks for: its devices and event regexes,
/// its webhook, for at most `max_duration`, with the address it came from.
fn registration_of(
    hook: Hook,
    peer: Option<PeerAddr>,
    max_duration: std::time::Duration,
) -> Result<RegistrationRequest, ApiError> {
    let (devices, patterns) = devices_of(&hook.matcher.device_id)?;
    if hook.events.is_empty() {
        return Err(refused("events must name at least one regex"));
    }
    let duration = duration_of(&hook, max_duration)?;
    let mut metadata = std::collections::BTreeMap::new();
    if let Some(p) = peer {
        metadata.insert("registered_from_address".to_owned(), p.0.to_string());
    }
    Ok(RegistrationRequest {
        device: None,
        devices,
        device_patterns: Some(patterns),
        destination: Destination::Http(HttpDestination {
            url: hook.config.url,
            secret: hook.config.secret.filter(|s| !s.is_empty()),
            headers: Default::default(),
            content_type: match BodyFormat::from_media_type(&hook.config.content_type) {
                Some(BodyFormat::WrpMsgpack) => BodyFormat::WrpMsgpack,
                Some(BodyFormat::WrpJson) => BodyFormat::WrpJson,
                _ => BodyFormat::Payload,
            },
            failure_url: hook.failure_url.filter(|u| !u.is_empty()),
            previous_secret_ttl: None,
            previous_secret: None,
        }),
        duration: json!(duration.as_secs()),
        filter: FilterSpec {
            types: hook.events.iter().map(|e| format!("re:{e}")).collect(),
            ..Default::default()
        },
        metadata,
    })
}

/// The same as `POST /hook`, at ancla's v2 path.
#[utoipa::path(post, path = "/api/v2/hook", tag = "xmidt",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 200, description = "Registered", body = HookRegistered),
        (status = 400, description = "Malformed or refused registration", content_type = "application/problem+json", body = crate::http::problems::Problem),
        (status = 422, description = "Past the bytes all registrations may keep (--max-registration-bytes)", content_type = "application/problem+json", body = crate::http::problems::Problem),
        (status = 429, description = "Rate limited", content_type = "application/problem+json", body = crate::http::problems::Problem),
        (status = 503, description = "The store is unavailable, or too many registrations are compiling", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::BodyLimits,
        crate::http::problems::Guarded),
    security(("bearer" = []), ("cookie" = [])))]
pub async fn register_v2(
    state: State<App>,
    peer: Option<Extension<PeerAddr>>,
    hook: Result<ApiJson<Hook>, ApiError>,
) -> Result<Response, ApiError> {
    register(state, peer, hook).await
}

/// The same as `GET /hooks`, at ancla's v2 path.
#[utoipa::path(get, path = "/api/v2/hooks", tag = "xmidt",
    responses(
        (status = 200, description = "Every webhook", body = Vec<HookView>),
        crate::http::problems::Guarded),
    security(("bearer" = []), ("cookie" = [])))]
pub async fn list_v2(state: State<App>) -> Response {
    list(state).await
}

/// Runs every check `POST /hook` makes on a body before it touches the
/// registry (parse, matcher, duration); for fuzzing and tests.
pub fn check_body(body: &[u8], max: Duration) -> Result<Duration, ApiError> {
    let hook: Hook = serde_json::from_slice(body)
        .map_err(|e| refused(format!("invalid webhook registration: {e}")))?;
    devices_of(&hook.matcher.device_id)?;
    duration_of(&hook, max)
}

/// Literal device ids go to the device index; anything else is a regex.
/// An empty list or a `.*` entry means every device.
fn devices_of(entries: &[String]) -> Result<(Vec<String>, Vec<String>), ApiError> {
    if entries.is_empty() || entries.iter().any(|e| e == ".*") {
        return Ok((Vec::new(), Vec::new()));
    }
    let literal = entries
        .iter()
        .all(|e| regex::escape(e) == *e && DeviceId::parse(e).is_ok());
    if literal {
        return Ok((entries.to_vec(), Vec::new()));
    }
    // Compiled with the registration, off the async workers: here only
    // what costs nothing to check.
    if let Some(e) = entries.iter().find(|e| e.len() > MAX_PATTERN_LEN) {
        return Err(refused(format!(
            "matcher.device_id {:?}...: longer than {MAX_PATTERN_LEN} bytes",
            e.chars().take(32).collect::<String>()
        )));
    }
    Ok((Vec::new(), entries.to_vec()))
}

/// `until` wins over `duration`, as in ancla; one must be set, and
/// neither may reach past the maximum (`until` gets ancla's 10 s of slack
/// for clock skew).
fn duration_of(hook: &Hook, max: Duration) -> Result<Duration, ApiError> {
    if let Some(until) = hook.until.as_deref().filter(|u| !u.is_empty()) {
        let until = chrono::DateTime::parse_from_rfc3339(until)
            .map_err(|e| refused(format!("until {until:?}: {e}")))?;
        let d = (until.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .map_err(|_| refused("until is in the past"))?;
        if d > max + Duration::from_secs(10) {
            return Err(refused(format!(
                "until is more than {} away",
                humantime::format_duration(max)
            )));
        }
        return Ok(d.clamp(Duration::from_secs(1), max));
    }
    let value = hook
        .duration
        .as_ref()
        .ok_or_else(|| refused("duration or until is required"))?;
    crate::state::registry::duration::parse(value, max)
        .map_err(|m| refused(format!("duration: {m}")))
}

/// The xmidt webhooks in ancla's listed form; also at /api/v2/hooks.
#[utoipa::path(
    get,
    path = "/hooks",
    tag = "xmidt",
    responses(
        (status = 200, description = "Every webhook", body = Vec<HookView>),
        crate::http::problems::Guarded
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn list(State(app): State<App>) -> Response {
    let (all, _) = app.registry.list(None, None, None, usize::MAX);
    let hooks: Vec<HookView> = all.iter().filter_map(HookView::of).collect();
    (StatusCode::OK, Json(hooks)).into_response()
}

/// A webhook as ancla lists it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct HookView {
    /// The address the registration came from.
    registered_from_address: String,
    config: HookConfigView,
    /// Where drop and disable notices go; empty for none.
    failure_url: String,
    /// The event regexes.
    events: Vec<String>,
    matcher: HookMatcherView,
    /// The duration asked for, in nanoseconds (Go's `time.Duration`).
    duration: u64,
    /// When it expires (RFC 3339).
    until: String,
}

/// A listed webhook's delivery settings; its secret is never shown.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct HookConfigView {
    url: String,
    content_type: &'static str,
    /// `<obfuscated>` when the webhook has a secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'static str>,
}

/// A listed webhook's device regexes (`.*`: every device).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct HookMatcherView {
    device_id: Vec<String>,
}

impl HookView {
    /// `r` as a webhook, if it was registered as one.
    fn of(r: &Registration) -> Option<Self> {
        let Destination::Http(h) = &r.destination else {
            return None;
        };
        if r.origin != Origin::XmidtHook {
            return None;
        }
        let content_type = match h.content_type {
            BodyFormat::Payload => "application/json",
            other => other.media_type(),
        };
        let device_id = if r.device_patterns.is_empty() && r.devices.is_empty() {
            vec![".*".to_owned()]
        } else if r.device_patterns.is_empty() {
            r.devices.clone()
        } else {
            r.device_patterns.clone()
        };
        Some(Self {
            registered_from_address: r
                .metadata
                .get("registered_from_address")
                .cloned()
                .unwrap_or_default(),
            config: HookConfigView {
                url: h.url.clone(),
                content_type,
                secret: h.secret.as_ref().map(|_| "<obfuscated>"),
            },
            failure_url: h.failure_url.clone().unwrap_or_default(),
            events: r
                .filter
                .types
                .iter()
                .map(|t| t.trim_start_matches("re:").to_owned())
                .collect(),
            matcher: HookMatcherView { device_id },
            duration: r.duration_secs.saturating_mul(1_000_000_000),
            until: r
                .expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
    }
}
