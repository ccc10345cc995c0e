//! `GET /events`: the SSE stream.
//!
//! Query: `device` (repeatable, OR), `type` (repeatable glob, OR), `format`
//! (`data` or `envelope`), `lastEventId` (for clients that cannot set the
//! `Last-Event-ID` header; the header wins). Invalid values are refused with
//! 400 before the stream starts.
//!
//! The stream itself, its state machine, is [`crate::stream`]'s; this
//! handler checks the request, scopes its filter to the caller, and opens
//! the subscription.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use http::{header, HeaderMap, HeaderValue, StatusCode};

use super::auth::Caller;
use super::query::QueryPairs;
use super::App;
use crate::auth::lease::Lease;
use crate::auth::lease_watch::LeaseWatch;
use crate::error::ApiError;
use crate::event::EventId;
use crate::hub::frame::Transfer;
use crate::hub::{DirectConnection, EventFilter, Format, Lane, SubscribeError};
use crate::server::per_ip::StreamSlot;
use crate::stream::body::SseBody;
use crate::stream::{self, resume};

/// When a client refused at the per-address stream cap may try again.
const STREAM_CAP_RETRY: Duration = Duration::from_secs(5);

/// The SSE stream: every event whose device, type and expression match, with id/Last-Event-ID resume, heartbeats and lag notices (gap, lagged, shutdown).
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    params(("device" = Option<Vec<String>>, Query, description = "Device ids (repeat or comma-separate); none: every device the caller may see"), ("type" = Option<Vec<String>>, Query, description = "Event type globs"), ("expression" = Option<String>, Query, description = "A CEL expression over event"), ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id"), ("lastEventId" = Option<String>, Query, description = "Resume after this id (for clients that cannot set the header)")),
    responses(
        (status = 200, description = "The stream, until the client leaves", content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad filter", content_type = "application/problem+json", body = crate::http::problems::Problem),
        (status = 429, description = "Too many streams from this address", content_type = "application/problem+json", body = crate::http::problems::Problem),
        (status = 503, description = "Subscriber limit reached", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::Guarded
    ),
    security(("bearer" = []), ("cookie" = []), ("query" = []))
)]
pub async fn subscribe(
    State(app): State<App>,
    RawQuery(query): RawQuery,
    peer: Option<axum::Extension<crate::server::PeerAddr>>,
    opener: Opener,
    connection: Connection,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let asked = Asked::parse(&app, query.as_deref(), &headers, opener.who)?;
    let slot = place(&app, peer.map(|p| p.0))?;
    let transfer = connection.transfer;
    let mut body = open(&app, asked, connection).await?;
    body.hold(slot);
    let lease = opener
        .lease
        .and_then(|l| LeaseWatch::new(&l, &app.credentials));
    body.watch(lease);
    Ok(event_stream(body, transfer))
}

/// Subscribes, reads what a resume needs from before the ring (the bus's
/// history), and wraps both in the stream's body.
async fn open(app: &App, asked: Asked, connection: Connection) -> Result<SseBody, ApiError> {
    let Asked {
        filter,
        format,
        resume: after,
    } = asked;
    // A split cluster stream: this node reads the partitions the filter
    // may get events of before the stream joins the hub.
    let reading = match app.bus.shared_stream() {
        Some(stream) => stream
            .read_for(filter.devices())
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?,
        None => None,
    };
    let mut subscription = app.hub.subscribe(filter, after).map_err(refused)?;
    let from_history = match after {
        Some(last) => {
            resume::beyond_ring(&app.bus, &mut subscription, last, resume_limits(app)).await
        }
        None => None,
    };
    let transfer = connection.transfer;
    let lane = connection.lane(format);
    let mut body = SseBody::new(subscription, format, transfer, &settings(app), after, lane);
    body.keep_reading(reading);
    if let Some(r) = from_history {
        body.resume_first_from(r);
    }
    Ok(body)
}

/// What a stream asks for, checked: its filter (scoped to the caller), its
/// format, and where it resumes.
struct Asked {
    filter: EventFilter,
    format: Format,
    resume: Option<EventId>,
}

impl Asked {
    /// Reads the query and `Last-Event-ID`; 400 on a bad value, 403 on a
    /// device outside the caller's scope.
    fn parse(
        app: &App,
        query: Option<&str>,
        headers: &HeaderMap,
        who: crate::auth::Principal,
    ) -> Result<Self, ApiError> {
        let q = QueryPairs::parse(query, &["device", "type", "format", "lastEventId"])?;
        let filter = EventFilter::new(q.all("device"), q.all("type"))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Self {
            filter: scoped(app, who, filter)?,
            format: format_of(&q)?,
            resume: last_event_id(headers, &q)?,
        })
    }
}

/// How the connection carries the body: its transfer framing, and, on the
/// lean HTTP/1.1 path, the writer the hub may write events to directly.
#[derive(Debug)]
pub struct Connection {
    transfer: Transfer,
    direct: Option<DirectConnection>,
}

impl Connection {
    /// The lean path's lane for a stream in `format` (the hub writes its
    /// events in the same form as the body would).
    fn lane(self, format: Format) -> Option<Lane> {
        let transfer = self.transfer;
        self.direct.map(|d| Lane {
            writer: d.0,
            format,
            transfer,
        })
    }
}

impl axum::extract::FromRequestParts<App> for Connection {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &App,
    ) -> Result<Self, Infallible> {
        Ok(Self {
            transfer: parts
                .extensions
                .get::<Transfer>()
                .copied()
                .unwrap_or_default(),
            direct: parts.extensions.get::<DirectConnection>().cloned(),
        })
    }
}

/// `format`: `data` (the default) or `envelope`.
fn format_of(q: &QueryPairs) -> Result<Format, ApiError> {
    match q.one("format")? {
        None | Some("data") => Ok(Format::Data),
        Some("envelope") => Ok(Format::Envelope),
        Some(other) => Err(ApiError::bad_request(format!(
            "format {other:?} is not one of data, envelope"
        ))),
    }
}

/// Where the stream resumes: `Last-Event-ID`, else `?lastEventId=`.
fn last_event_id(headers: &HeaderMap, q: &QueryPairs) -> Result<Option<EventId>, ApiError> {
    let header_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID must be visible ASCII"))
        })
        .transpose()?
        .filter(|v| !v.trim().is_empty());
    header_id
        .or(q.one("lastEventId")?)
        .map(|raw| {
            raw.parse::<EventId>()
                .map_err(|e| ApiError::bad_request(format!("Last-Event-ID {raw:?}: {e}")))
        })
        .transpose()
}

/// The stream's place under `--max-streams-per-ip` (429 at the cap).
fn place(app: &App, peer: Option<crate::server::PeerAddr>) -> Result<Option<StreamSlot>, ApiError> {
    let Some(peer) = peer else {
        return Ok(None);
    };
    app.streams_per_ip.open(peer.0.ip()).map_err(|cap| {
        ApiError::too_many_requests(
            format!(
                "this address has {} streams open already (--max-streams-per-ip)",
                cap.0
            ),
            STREAM_CAP_RETRY,
        )
    })
}

/// 503: the hub takes no more subscribers now.
fn refused(e: SubscribeError) -> ApiError {
    match e {
        SubscribeError::ShuttingDown | SubscribeError::Full(_) => {
            ApiError::unavailable(e.to_string())
        }
    }
}

/// The `text/event-stream` response around `body`.
fn event_stream(body: SseBody, transfer: Transfer) -> Response {
    let mut response = Response::new(Body::new(body));
    // Says to the connection (the lean HTTP/1.1 path) that the body's bytes
    // are already chunks.
    response.extensions_mut().insert(transfer);
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Who opens a stream (the [`Caller`]), and what ends their credential
/// ([`Lease`]: none for the `--api-token` or with auth off).
#[derive(Debug)]
pub struct Opener {
    who: crate::auth::Principal,
    lease: Option<Lease>,
}

impl axum::extract::FromRequestParts<App> for Opener {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        app: &App,
    ) -> Result<Self, Infallible> {
        let Caller(who) = Caller::from_request_parts(parts, app).await?;
        Ok(Self {
            who,
            lease: parts.extensions.get::<Lease>().copied(),
        })
    }
}

/// A scoped token sees only its devices: a device it names outside them is
/// refused (403, not an empty stream), and naming none means all of them
/// (never everything). Resumes and replays go through the same filter.
fn scoped(
    app: &App,
    who: crate::auth::Principal,
    filter: EventFilter,
) -> Result<EventFilter, ApiError> {
    let Some(scope) = who.scope() else {
        return Ok(filter);
    };
    // Accounts' devices are read at each event (a device removed from an
    // account stops at once), so a stream that holds any is never served
    // by the hub's device index alone.
    let set = super::auth::readable(app, scope);
    if set.is_empty() {
        return Err(ApiError::forbidden(
            "this token may not subscribe to any device",
        ));
    }
    if let Some(outside) = filter.devices().iter().find(|d| !set.allows(d)) {
        return Err(ApiError::forbidden(format!(
            "this token may not subscribe to device {outside}"
        )));
    }
    if !filter.devices().is_empty() {
        return Ok(if set.accounts.is_empty() {
            filter
        } else {
            filter.within(set)
        });
    }
    if set.globs.is_none() && set.accounts.is_empty() {
        // Exact ids only: the hub's device index serves them, at no cost
        // for other devices' events.
        return EventFilter::new(set.exact.iter().map(|d| d.as_str()), filter.type_patterns())
            .map_err(|e| ApiError::bad_request(e.to_string()));
    }
    Ok(filter.within(set))
}

/// What every stream is written with, from the configuration.
fn settings(app: &App) -> stream::body::Settings {
    stream::body::Settings {
        retry: app.config.sse_retry,
        heartbeat: app.config.heartbeat,
        lag_policy: app.config.lag_policy,
        metrics: app.metrics.clone(),
    }
}

/// The bounds of a resume from the shared stream.
fn resume_limits(app: &App) -> resume::Limits {
    resume::Limits {
        max_bytes: app.config.cluster_replay_max_bytes,
        max_events: app.config.replay_capacity.max(1),
    }
}
