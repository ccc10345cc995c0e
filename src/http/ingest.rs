//! `POST /api/events`: the request read (its format, by `Content-Type`
//! ([`Format`]), its routing, its `Idempotency-Key`, its body) and handed
//! to the ingest [`Pipeline`](crate::ingest::Pipeline), whose outcome is
//! answered.
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

use super::auth::Caller;
use super::body::read_body;
use super::query::QueryPairs;
use super::App;
use crate::auth::Principal;
use crate::bus::{Idempotent, Outcome};
use crate::error::ApiError;
use crate::event::{DeviceId, EventDraft, EventId};
use crate::ingest::batch::BatchOutcome;
use crate::ingest::decode::check_type;
use crate::ingest::{fingerprint, Format, Overrides};
use crate::server::PeerAddr;
use crate::state::idempotency::{scoped_key, MAX_KEY_LEN};
use crate::telemetry::{IngestFormat, IngestResult};

// Header names made once, not parsed from text at every lookup.
static X_DEVICE_ID: HeaderName = HeaderName::from_static("x-device-id");
static X_EVENT_TYPE: HeaderName = HeaderName::from_static("x-event-type");
static X_EVENT_SOURCE: HeaderName = HeaderName::from_static("x-event-source");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Ingests events: plain JSON (the payload is the event), NDJSON batches (one event per line), xmidt WRP as msgpack or JSON.
#[utoipa::path(
    post,
    path = "/api/events",
    tag = "events",
    params(("device" = Option<String>, Query, description = "The event's device (JSON ingest)"), ("type" = Option<String>, Query, description = "The event type"), ("source" = Option<String>, Query, description = "The event source"), ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key and request are accepted once; keys are per credential")),
    request_body(content((serde_json::Value = "application/json"), (String = "application/x-ndjson"), (Vec<u8> = "application/msgpack"), (serde_json::Value = "application/wrp+json")), description = "The event, a batch, or a WRP message"),
    responses(
        (status = 202, description = "Accepted (one event). A repeated Idempotency-Key from the same credential with the same request (body, content type, routing) within the window gets the first event's id again, with Idempotent-Replayed: true, and is not published again", body = Accepted,
            headers(("Idempotent-Replayed" = String, description = "\"true\" on the answer to a repeated Idempotency-Key"))),
        (status = 409, description = "This Idempotency-Key is still in flight", content_type = "application/problem+json", body = crate::http::problems::Problem),
        (status = 422, description = "Invalid fields, or an Idempotency-Key reused with a different request", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::JsonBody,
        crate::http::problems::Guarded,
        crate::http::problems::RateLimited,
        crate::http::problems::StoreUnavailable,
        crate::http::problems::OutcomeUnknown
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn post_events(
    State(app): State<App>,
    peer: Option<Extension<PeerAddr>>,
    Caller(who): Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
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
    let format = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Format::of);
    let result = ingest(app, who, format, peer, query, headers, body).await;
    app.metrics.ingest_took(started.elapsed());
    match result {
        Ok(response) => response,
        Err(err) => {
            app.metrics.ingested(
                format.map_or(IngestFormat::Unsupported, Format::label),
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
    format: Option<Format>,
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

    if format == Format::Ndjson {
        // Boxed, as the cluster path: a single event's future need not
        // be as large as a batch's (its results, its pacing timer).
        let batch =
            Box::pin(
                app.ingest
                    .batch(who, base, &overrides, idempotency_key.as_deref(), &body),
            )
            .await?;
        return batch_reply(app, batch);
    }
    let idempotent = idempotency_key.map(|key| Idempotent {
        fingerprint: fingerprint(&base.content_type, &overrides, &body),
        key,
    });
    let draft = app.ingest.decode(format, base, &overrides, &body)?;
    let Outcome { id, replayed, .. } = app.ingest.publish(who, draft, idempotent.as_ref())?.await?;
    app.metrics.ingested(
        format.label(),
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

// The schema of what `accepted` writes (a test holds them together).
/// One event accepted.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// The event's id (16 hex digits), as the stream's `id:` carries it.
    id: String,
}

/// `202 {"id":"…"}`: written straight into one buffer (an id is 16 hex
/// digits, nothing to escape), not through a JSON tree.
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

/// Counts a batch and answers it: 202 with every line's result, or 400
/// (with the results) when no line was accepted.
fn batch_reply(app: &App, batch: BatchOutcome) -> Result<Response, ApiError> {
    app.metrics
        .ingested(IngestFormat::Ndjson, IngestResult::Accepted, batch.accepted);
    app.metrics
        .ingested(IngestFormat::Ndjson, IngestResult::Rejected, batch.rejected);
    if batch.accepted == 0 {
        let summary = serde_json::to_value(&batch).unwrap_or_default();
        return Err(ApiError::bad_request("no line of the batch was accepted").with_extra(summary));
    }
    Ok((StatusCode::ACCEPTED, Json(batch)).into_response())
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

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, F: std::future::Future>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_single_events_future_does_not_carry_the_batch_and_cluster_paths() {
        // Every POST's future is boxed and moved: 2,144 bytes since the
        // bus publishes an embedded event before its future is awaited
        // (2,464 before), and 5,920 with the batch and Redis paths inline.
        let size = future_size(serve_direct::<hyper::body::Incoming>);
        assert!(size < 3072, "{size} bytes");
    }

    #[tokio::test]
    async fn the_hand_written_202_is_its_schemas_serialisation() {
        let id = EventId::from_u64(0x0123_4567_89ab_cdef);
        let response = accepted(id);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let typed = serde_json::to_vec(&Accepted {
            id: id.hex().as_str().to_owned(),
        })
        .unwrap();
        assert_eq!(body, typed);
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
}
