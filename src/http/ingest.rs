//! `POST /api/events`: read, decode, route and publish.
//!
//! Formats, chosen by `Content-Type`:
//! - `application/json` (and any `+json` type but `wrp+json`): one JSON value;
//! - `application/msgpack`, `application/wrp+msgpack`, `application/wrp`: one WRP message;
//! - `application/wrp+json`: one WRP message in its JSON form;
//! - `application/x-ndjson`: one JSON event per line, with a result per line.
//!
//! Routing (device, type, source), first found wins: query parameters
//! `device`/`type`/`source`, then headers `X-Device-Id`/`X-Event-Type`/
//! `X-Event-Source`, then the body (a JSON object's top-level string fields,
//! or the WRP locators), then (source only) the peer address.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::json;

use super::body::read_body;
use super::query::QueryPairs;
use super::App;
use crate::auth::Principal;
use crate::catalog::Rejection;
use crate::error::ApiError;
use crate::event::{json as json_event, wrp, DeviceId, EventDraft, EventId};
use crate::idempotency::{scoped_key, Claim, Fingerprint, MAX_KEY_LEN};
use crate::server::PeerAddr;
use crate::telemetry::{IngestFormat, IngestResult};

// Header names made once, not parsed from text at every lookup.
static X_DEVICE_ID: HeaderName = HeaderName::from_static("x-device-id");
static X_EVENT_TYPE: HeaderName = HeaderName::from_static("x-event-type");
static X_EVENT_SOURCE: HeaderName = HeaderName::from_static("x-event-source");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Longest event type, in bytes.
const MAX_TYPE_LEN: usize = 256;

/// Routing values given outside the body.
#[derive(Debug, Default)]
struct Overrides {
    device: Option<DeviceId>,
    event_type: Option<String>,
    source: Option<String>,
}

/// An `Idempotency-Key` in its credential's namespace ([`scoped_key`]),
/// with the fingerprint of the request (or batch line) it came with.
#[derive(Debug)]
struct Idempotent {
    key: String,
    fingerprint: Fingerprint,
}

/// What shapes the event a request makes: its content type, the routing
/// given outside the body, and the body (or batch line). Computed only
/// for a request with an `Idempotency-Key`.
fn fingerprint(content_type: &str, overrides: &Overrides, body: &[u8]) -> Fingerprint {
    Fingerprint::of(&[
        Some(content_type.as_bytes()),
        overrides.device.as_ref().map(|d| d.as_str().as_bytes()),
        overrides.event_type.as_deref().map(str::as_bytes),
        overrides.source.as_deref().map(str::as_bytes),
        Some(body),
    ])
}

/// 422: the key was first used for another event; answering the first
/// event's id would silently drop this one.
fn key_reused() -> ApiError {
    ApiError::unprocessable(
        "this Idempotency-Key was first used with a different request (body, content type or routing); send a new event with a new key",
    )
}

/// 409: the first request with this key has not finished.
fn key_in_flight() -> ApiError {
    ApiError::conflict("a request with this Idempotency-Key is still being processed")
}

/// Ingests events: plain JSON (the payload is the event), NDJSON batches (one event per line), xmidt WRP as msgpack or JSON.
#[utoipa::path(
    post,
    path = "/api/events",
    tag = "events",
    params(("device" = Option<String>, Query, description = "The event's device (JSON ingest)"), ("type" = Option<String>, Query, description = "The event type"), ("source" = Option<String>, Query, description = "The event source"), ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key and request are accepted once; keys are per credential")),
    request_body(content((serde_json::Value = "application/json"), (String = "application/x-ndjson"), (Vec<u8> = "application/msgpack"), (serde_json::Value = "application/wrp+json")), description = "The event, a batch, or a WRP message"),
    responses(
        (status = 202, description = "Accepted (one event). A repeated Idempotency-Key from the same credential with the same request (body, content type, routing) within the window gets the first event's id again, with Idempotent-Replayed: true, and is not published again", body = crate::http::openapi::Accepted,
            headers(("Idempotent-Replayed" = String, description = "\"true\" on the answer to a repeated Idempotency-Key"))),
        (status = 400, description = "Malformed JSON or request", content_type = "application/problem+json", body = crate::http::openapi::Problem),
        (status = 408, description = "Body not received in time", content_type = "application/problem+json", body = crate::http::openapi::Problem),
        (status = 409, description = "This Idempotency-Key is still in flight", content_type = "application/problem+json", body = crate::http::openapi::Problem),
        (status = 413, description = "Body too large", content_type = "application/problem+json", body = crate::http::openapi::Problem),
        (status = 415, description = "Wrong content type", content_type = "application/problem+json", body = crate::http::openapi::Problem),
        (status = 422, description = "Invalid fields, or an Idempotency-Key reused with a different request", content_type = "application/problem+json", body = crate::http::openapi::Problem),
        (status = 401, description = "No valid token (auth on)", content_type = "application/problem+json", body = crate::http::openapi::Problem),
        (status = 403, description = "The token may not do this", content_type = "application/problem+json", body = crate::http::openapi::Problem),
        (status = 429, description = "Rate limited; see Retry-After", content_type = "application/problem+json", body = crate::http::openapi::Problem),
        (status = 503, description = "The store or Redis is unavailable; see Retry-After", content_type = "application/problem+json", body = crate::http::openapi::Problem)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn post_events(
    State(app): State<App>,
    peer: Option<Extension<PeerAddr>>,
    who: Option<Extension<Principal>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let who = super::auth::principal(&app, who);
    handle(
        &app,
        &who,
        peer.map(|p| p.0),
        query.as_deref(),
        &headers,
        body,
    )
    .await
}

/// `POST /api/events` as the server calls it directly ([`super::Api`]):
/// the same authentication and rate limit as the router's layers, then
/// the same handler, without the router's per-request boxing and cloning
/// of the layered services, without a copy of the headers, and with the
/// principal, the client's address and hyper's body kept as they are
/// rather than put in the request's extensions or boxed.
pub async fn serve_direct<B>(app: App, request: http::Request<B>, peer: PeerAddr) -> Response
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    let who = match admit(&app, &request, peer) {
        Ok(who) => who,
        Err(refused) => return *refused,
    };
    let (parts, body) = request.into_parts();
    handle(
        &app,
        &who,
        Some(peer),
        parts.uri.query(),
        &parts.headers,
        body,
    )
    .await
}

/// Who is posting, once authenticated and admitted by the rate limit. A
/// plain function, so that nothing of the identity but the principal (not
/// its key, nor a stream's lease) lives in the POST's future.
fn admit<B>(
    app: &App,
    request: &http::Request<B>,
    peer: PeerAddr,
) -> Result<Principal, Box<Response>> {
    let identity = super::auth::identity(app, request)?;
    let key = identity.key.as_ref().map(|k| k.0.as_str());
    super::rate::admit_client(
        app,
        crate::http::rate::Limited::Ingest,
        Some(peer.0.ip()),
        key,
    )?;
    Ok(super::auth::principal(
        app,
        identity.principal.map(Extension),
    ))
}

/// Ingests one request: counts it, and turns a refusal into its answer.
async fn handle<B>(
    app: &App,
    who: &Principal,
    peer: Option<PeerAddr>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: B,
) -> Response
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    let started = Instant::now();
    let format = format_of(headers);
    let result = ingest(app, who, format, peer, query, headers, body).await;
    app.metrics.ingest_took(started.elapsed());
    match result {
        Ok(response) => response,
        Err(err) => {
            app.metrics.ingested(
                format.unwrap_or(IngestFormat::Unsupported),
                IngestResult::Rejected,
                1,
            );
            err.into_response()
        }
    }
}

async fn ingest<B>(
    app: &App,
    who: &Principal,
    format: Option<IngestFormat>,
    peer: Option<PeerAddr>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: B,
) -> Result<Response, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    let format = format.ok_or_else(|| {
        ApiError::unsupported_media_type(format!(
            "Content-Type {:?} is not supported; use application/json, application/msgpack (WRP), application/wrp+json or application/x-ndjson",
            headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
        ))
    })?;
    let overrides = overrides(query, headers)?;
    let idempotency_key = idempotency_key(headers)?.map(|k| scoped_key(who, &k));
    let body = read_body(app, headers, body).await?;
    let received_at = chrono::Utc::now();
    let fallback_source = peer.map_or_else(|| "http".to_owned(), |p| peer_source(p.0.ip()));
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let base = EventDraft {
        received_at,
        device: None,
        event_type: None,
        source: fallback_source,
        content_type,
        metadata: Default::default(),
        data: Bytes::new(),
        wrp: None,
    };

    if format == IngestFormat::Ndjson {
        // Boxed, as the cluster path: a single event's future need not
        // be as large as a batch's (its results, its pacing timer).
        return Box::pin(ingest_batch(
            app,
            who,
            base,
            &overrides,
            idempotency_key.as_deref(),
            &body,
        ))
        .await;
    }
    let idempotent = idempotency_key.map(|key| Idempotent {
        fingerprint: fingerprint(&base.content_type, &overrides, &body),
        key,
    });
    let draft = decode_one(app, format, base, &overrides, &body)?;
    let Outcome { id, replayed, .. } = publish(app, who, draft, idempotent.as_ref()).await?;
    app.metrics.ingested(
        format,
        if replayed {
            IngestResult::Duplicate
        } else {
            IngestResult::Accepted
        },
        1,
    );
    let mut response = accepted(id);
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `202 {"id":"…"}`: written straight into one buffer (an id is digits
/// and a dash, nothing to escape), not through a JSON tree.
fn accepted(id: EventId) -> Response {
    let body = [r#"{"id":""#, id.hex().as_str(), r#""}"#].concat();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::ACCEPTED;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `http:<address>`, an event's source when nothing names one. An IPv4
/// address (the common case) is written by hand: through `Display` it
/// cost a tenth of a small event's ingest.
fn peer_source(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return format!("http:{ip}");
    };
    let mut out = String::with_capacity(20);
    out.push_str("http:");
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// What publishing one event did.
struct Outcome {
    id: EventId,
    /// The answer to an earlier request with the same idempotency key.
    replayed: bool,
    /// The fullest subscriber queue it went into (see `FanOut::deepest`).
    deepest: usize,
}

/// Publishes unless the idempotency key was seen: to the local hub, or in
/// cluster mode to the shared stream (answered only once Redis has it).
async fn publish(
    app: &App,
    who: &Principal,
    draft: EventDraft,
    key: Option<&Idempotent>,
) -> Result<Outcome, ApiError> {
    may_publish(who, &draft)?;
    conform(app, &draft)?;
    if let Some(cluster) = &app.cluster {
        // Boxed: the Redis round trip's state would otherwise be part of
        // every embedded publish's future too, and be copied with it.
        return Box::pin(publish_to_cluster(cluster, draft, key)).await;
    }
    let fresh = |f: crate::hub::FanOut| Outcome {
        id: f.id,
        replayed: false,
        deepest: f.deepest,
    };
    let Some(Idempotent { key, fingerprint }) = key else {
        return Ok(fresh(app.hub.publish(draft)));
    };
    match app.idempotency.claim(key, fingerprint, Instant::now()) {
        Claim::Seen(id) => Ok(Outcome {
            id,
            replayed: true,
            deepest: 0,
        }),
        Claim::InProgress => Err(key_in_flight()),
        Claim::Mismatch => Err(key_reused()),
        Claim::New => {
            let outcome = fresh(app.hub.publish(draft));
            app.idempotency.complete(key, outcome.id);
            Ok(outcome)
        }
    }
}

/// 503 with `Retry-After` for an event Redis did not take: never accept
/// what cannot be stored.
fn cluster_unavailable(e: &crate::cluster::ClusterError) -> ApiError {
    tracing::warn!(error = %e, "event refused: Redis is unavailable");
    ApiError::unavailable(format!("the event was not accepted: {e}"))
        .with_retry_after(std::time::Duration::from_secs(1))
}

async fn publish_to_cluster(
    cluster: &crate::cluster::Cluster,
    draft: EventDraft,
    key: Option<&Idempotent>,
) -> Result<Outcome, ApiError> {
    if let Some(Idempotent { key, fingerprint }) = key {
        match cluster
            .claim(key, fingerprint)
            .await
            .map_err(|e| cluster_unavailable(&e))?
        {
            Claim::Seen(id) => {
                return Ok(Outcome {
                    id,
                    replayed: true,
                    deepest: 0,
                })
            }
            Claim::InProgress => return Err(key_in_flight()),
            Claim::Mismatch => return Err(key_reused()),
            Claim::New => {}
        }
    }
    match cluster.append(std::slice::from_ref(&draft)).await {
        Ok(ids) => {
            let id = ids[0];
            if let Some(Idempotent { key, fingerprint }) = key {
                if let Err(e) = cluster.complete(key, fingerprint, id).await {
                    tracing::warn!(error = %e, "idempotency key not recorded");
                }
            }
            Ok(Outcome {
                id,
                replayed: false,
                deepest: 0,
            })
        }
        Err(e) => {
            if let Some(Idempotent { key, .. }) = key {
                cluster.release(key).await;
            }
            Err(cluster_unavailable(&e))
        }
    }
}

/// A scoped token publishes only for its devices and types (403).
fn may_publish(who: &Principal, draft: &EventDraft) -> Result<(), ApiError> {
    let Some(scope) = who.scope() else {
        return Ok(());
    };
    if let Some(named) = draft.wrp.as_ref().and_then(|m| {
        m.named_devices()
            .into_iter()
            .find(|d| !scope.publish.allows(d))
    }) {
        return Err(ApiError::forbidden(format!(
            "this token may not publish for device {:?}, which the WRP message names in its source, dest or event path",
            named.as_str()
        )));
    }
    if scope.may_publish(draft.device.as_ref(), draft.event_type.as_deref()) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "this token may not publish events of type {:?} for device {:?}",
        draft.event_type.as_deref().unwrap_or(""),
        draft.device.as_ref().map_or("", |d| d.as_str())
    )))
}

/// Checks the event against its type's definition (schema, strict mode).
fn conform(app: &App, draft: &EventDraft) -> Result<(), ApiError> {
    app.catalog.check(draft).map_err(|rejection| {
        let detail = rejection.to_string();
        match rejection {
            Rejection::Undefined(_) | Rejection::TooCostly(_) | Rejection::Disabled(..) => {
                ApiError::unprocessable(detail)
            }
            Rejection::Schema(_, violations) => {
                ApiError::unprocessable(detail).with_extra(json!({ "errors": violations }))
            }
        }
    })
}

/// Longest a batch waits, in all, for slow readers before it publishes
/// regardless (those readers then lag, as their policy says).
const BATCH_PACING_BUDGET: std::time::Duration = std::time::Duration::from_secs(1);

/// Publishes a batch line by line. When a reader's queue passes half full,
/// the batch pauses (a millisecond at a time, at most
/// [`BATCH_PACING_BUDGET`] per request) so that a reader that keeps up is
/// never made to lag by one large batch.
async fn ingest_batch(
    app: &App,
    who: &Principal,
    base: EventDraft,
    overrides: &Overrides,
    key: Option<&str>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let lines = json_event::split_lines(body);
    if lines.is_empty() {
        return Err(ApiError::bad_request("the batch has no events"));
    }
    if lines.len() > app.config.max_batch {
        return Err(ApiError::too_many_lines(lines.len(), app.config.max_batch));
    }
    let mut results = Vec::with_capacity(lines.len());
    let (mut accepted, mut rejected) = (0u64, 0u64);
    if let (Some(cluster), None) = (&app.cluster, key) {
        return ingest_batch_to_cluster(app, who, cluster, base, overrides, lines).await;
    }
    let half_full = (app.config.subscriber_buffer / 2).max(1);
    let mut paced = std::time::Duration::ZERO;
    let content_type = base.content_type.clone();
    for (line, text) in lines {
        let decoded = decode_one(app, IngestFormat::Json, base.clone(), overrides, &text);
        let outcome = match decoded {
            Ok(draft) => {
                // Each line is its own event: its own key and fingerprint.
                let line_key = key.map(|k| Idempotent {
                    key: format!("{k}#{line}"),
                    fingerprint: fingerprint(&content_type, overrides, &text),
                });
                publish(app, who, draft, line_key.as_ref()).await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(o) => {
                accepted += 1;
                results.push(json!({"line": line, "id": o.id.to_string()}));
                if o.deepest >= half_full && paced < BATCH_PACING_BUDGET {
                    let pause = std::time::Duration::from_millis(1);
                    tokio::time::sleep(pause).await;
                    paced += pause;
                } else if line % 256 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Err(e) => {
                rejected += 1;
                results.push(rejected_line(line, &e));
            }
        }
    }
    batch_reply(app, results, accepted, rejected)
}

/// A batch without an idempotency key, in cluster mode: every valid line
/// goes to Redis in one pipeline.
async fn ingest_batch_to_cluster(
    app: &App,
    who: &Principal,
    cluster: &crate::cluster::Cluster,
    base: EventDraft,
    overrides: &Overrides,
    lines: Vec<(usize, Bytes)>,
) -> Result<Response, ApiError> {
    let mut results: Vec<serde_json::Value> = Vec::with_capacity(lines.len());
    let mut drafts = Vec::new();
    let mut slots = Vec::new();
    for (line, text) in lines {
        let checked = decode_one(app, IngestFormat::Json, base.clone(), overrides, &text)
            .and_then(|d| may_publish(who, &d).map(|()| d))
            .and_then(|d| conform(app, &d).map(|()| d));
        match checked {
            Ok(d) => {
                slots.push((results.len(), line));
                results.push(serde_json::Value::Null);
                drafts.push(d);
            }
            Err(e) => results.push(rejected_line(line, &e)),
        }
    }
    let rejected = (results.len() - drafts.len()) as u64;
    let accepted = drafts.len() as u64;
    if !drafts.is_empty() {
        let ids = cluster
            .append(&drafts)
            .await
            .map_err(|e| cluster_unavailable(&e))?;
        for ((slot, line), id) in slots.into_iter().zip(ids) {
            results[slot] = json!({"line": line, "id": id.to_string()});
        }
    }
    batch_reply(app, results, accepted, rejected)
}

/// A refused line of a batch, as its result.
fn rejected_line(line: usize, e: &ApiError) -> serde_json::Value {
    json!({"line": line, "status": e.status().as_u16(), "detail": e.to_string()})
}

/// Counts a batch and answers it: 202 with every line's result, or 400
/// (with the results) when no line was accepted.
fn batch_reply(
    app: &App,
    results: Vec<serde_json::Value>,
    accepted: u64,
    rejected: u64,
) -> Result<Response, ApiError> {
    app.metrics
        .ingested(IngestFormat::Ndjson, IngestResult::Accepted, accepted);
    app.metrics
        .ingested(IngestFormat::Ndjson, IngestResult::Rejected, rejected);
    let summary = json!({"accepted": accepted, "rejected": rejected, "results": results});
    if accepted == 0 {
        return Err(ApiError::bad_request("no line of the batch was accepted").with_extra(summary));
    }
    Ok((StatusCode::ACCEPTED, Json(summary)).into_response())
}

/// Decodes one event body in `format` onto `base`.
fn decode_one(
    app: &App,
    format: IngestFormat,
    mut draft: EventDraft,
    overrides: &Overrides,
    body: &Bytes,
) -> Result<EventDraft, ApiError> {
    let max_depth = app.config.max_json_depth;
    match format {
        IngestFormat::Json | IngestFormat::Ndjson => {
            let parsed = json_event::parse_payload(body, max_depth)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let hints = parsed.hints;
            draft.device = hints
                .device
                .map(|d| {
                    DeviceId::parse(&d)
                        .map_err(|e| ApiError::unprocessable(format!("field \"device\": {e}")))
                })
                .transpose()?;
            draft.event_type = hints
                .event_type
                .map(|t| check_type(&t).map_err(ApiError::unprocessable))
                .transpose()?;
            if let Some(s) = hints.source {
                draft.source = s;
            }
            draft.data = parsed.data;
        }
        IngestFormat::WrpMsgpack | IngestFormat::WrpJson => {
            let message = if format == IngestFormat::WrpMsgpack {
                wrp::Message::from_msgpack_within(body, max_depth)
            } else {
                wrp::Message::from_json_within(body, max_depth)
            }
            .map_err(|e| match e {
                wrp::WrpError::Decode(d) => ApiError::bad_request(d),
                wrp::WrpError::Invalid(d) => {
                    ApiError::unprocessable(format!("invalid WRP message: {d}"))
                }
            })?;
            let routing = message.routing();
            draft.device = routing.device;
            draft.event_type = Some(routing.event_type);
            if !message.source.is_empty() {
                draft.source = message.source.clone();
            }
            draft.metadata = message.metadata.clone().unwrap_or_default();
            draft.data = Bytes::from(message.to_json());
            draft.wrp = Some(message);
        }
        IngestFormat::Unsupported => {
            return Err(ApiError::unsupported_media_type("unsupported content type"))
        }
    }
    if let Some(d) = &overrides.device {
        draft.device = Some(d.clone());
    }
    if let Some(t) = &overrides.event_type {
        draft.event_type = Some(t.clone());
    }
    if let Some(s) = &overrides.source {
        draft.source = s.clone();
    }
    Ok(draft)
}

/// The ingest format named by `Content-Type` (parameters ignored).
fn format_of(headers: &HeaderMap) -> Option<IngestFormat> {
    let raw = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = raw.split(';').next()?.trim();
    let is = |name: &str| essence.eq_ignore_ascii_case(name);
    // Compared without case and without a lowercased copy.
    Some(if is("application/json") {
        IngestFormat::Json
    } else if is("application/wrp+json") {
        IngestFormat::WrpJson
    } else if [
        "application/msgpack",
        "application/x-msgpack",
        "application/wrp+msgpack",
        "application/wrp",
    ]
    .into_iter()
    .any(is)
    {
        IngestFormat::WrpMsgpack
    } else if [
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
    ]
    .into_iter()
    .any(is)
    {
        IngestFormat::Ndjson
    } else if essence
        .get(..12)
        .is_some_and(|p| p.eq_ignore_ascii_case("application/"))
        && essence
            .get(essence.len().saturating_sub(5)..)
            .is_some_and(|s| s.eq_ignore_ascii_case("+json"))
    {
        IngestFormat::Json
    } else {
        return None;
    })
}

fn overrides(query: Option<&str>, headers: &HeaderMap) -> Result<Overrides, ApiError> {
    let q = QueryPairs::parse(query, &["device", "type", "source"])?;
    let header = |name: &HeaderName| -> Result<Option<String>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str().map(str::to_owned).map_err(|_| {
                    ApiError::bad_request(format!("header {name} is not visible ASCII"))
                })
            })
            .transpose()
    };
    // The query parameter wins over the header (both are checked).
    let given = |key: &str, name: &HeaderName| -> Result<Option<String>, ApiError> {
        Ok(q.one(key)?.map(str::to_owned).or(header(name)?))
    };
    let device = match given("device", &X_DEVICE_ID)? {
        Some(d) => Some(
            DeviceId::parse(&d).map_err(|e| ApiError::bad_request(format!("device {d:?}: {e}")))?,
        ),
        None => None,
    };
    let event_type = match given("type", &X_EVENT_TYPE)? {
        Some(t) => Some(check_type(&t).map_err(ApiError::bad_request)?),
        None => None,
    };
    let source = given("source", &X_EVENT_SOURCE)?;
    if source
        .as_ref()
        .is_some_and(|s| s.len() > 512 || s.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(
            "source must be at most 512 characters, without control characters",
        ));
    }
    Ok(Overrides {
        device,
        event_type,
        source,
    })
}

fn check_type(t: &str) -> Result<String, String> {
    if t.is_empty() || t.len() > MAX_TYPE_LEN || t.chars().any(char::is_control) {
        return Err(format!(
            "event type must be 1 to {MAX_TYPE_LEN} characters without control characters"
        ));
    }
    Ok(t.to_owned())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(&IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
        .trim();
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} characters"
        )));
    }
    Ok(Some(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
        h
    }

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, F: std::future::Future>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_single_events_future_does_not_carry_the_batch_and_cluster_paths() {
        // Every POST's future is boxed and moved: 2,464 bytes, and 5,920
        // with the batch and Redis paths inline (4,880 and 3,872 with one
        // of them).
        let size = future_size(serve_direct::<hyper::body::Incoming>);
        assert!(size < 3072, "{size} bytes");
    }

    #[test]
    fn peer_sources_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.9.99",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(peer_source(ip), format!("http:{ip}"));
        }
    }

    #[test]
    fn content_types_map_to_formats() {
        assert_eq!(
            format_of(&ct("application/json; charset=utf-8")),
            Some(IngestFormat::Json)
        );
        assert_eq!(
            format_of(&ct("Application/CloudEvents+JSON")),
            Some(IngestFormat::Json)
        );
        assert_eq!(
            format_of(&ct("application/wrp+json")),
            Some(IngestFormat::WrpJson)
        );
        assert_eq!(
            format_of(&ct("application/msgpack")),
            Some(IngestFormat::WrpMsgpack)
        );
        assert_eq!(
            format_of(&ct("application/wrp+msgpack")),
            Some(IngestFormat::WrpMsgpack)
        );
        assert_eq!(
            format_of(&ct("application/x-ndjson")),
            Some(IngestFormat::Ndjson)
        );
        assert_eq!(format_of(&ct("text/plain")), None);
        assert_eq!(format_of(&HeaderMap::new()), None);
    }
}
