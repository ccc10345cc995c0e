//! `GET /api/registrations/{id}/deliveries`: the recent delivery attempts
//! to a registration's destination, newest first; and
//! `POST /api/registrations/{id}/replay`: its events sent again from a
//! point in the event log (embedded) or the stream (cluster).
//!
//! The log is the destination's (registrations naming the same
//! destination share one), kept in memory by the node that forwards to it
//! ([`crate::forward::attempts`]): bounded per destination in entries and
//! bytes. Visibility is the registration's: owners see their own, admins
//! all, another owner's is 404.

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use std::sync::Arc;

use super::auth::Caller;
use super::body::ApiJson;
use super::query::QueryPairs;
use super::App;
use crate::error::ApiError;
use crate::event::EventId;
use crate::forward::attempts::{Page, PAGE_MAX};
use crate::hub::Published;

/// Default page.
const PAGE: usize = 50;

/// The recent delivery attempts to a registration's destination.
#[utoipa::path(
    get,
    path = "/api/registrations/{id}/deliveries",
    tag = "registrations",
    params(
        ("id" = String, Path, description = "The registration id"),
        ("limit" = Option<usize>, Query, description = "1 to 256 (50)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")
    ),
    responses(
        (status = 200, description = "Attempts, newest first: event id, attempt number (0 for an event that had none), outcome (delivered, retrying, failed, dropped, expired), HTTP status or error, duration and time. The log is the destination's, the last 256 attempts, kept by the node that forwards to it", body = crate::forward::attempts::Page),
        (status = 400, description = "Bad query", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::Guarded,
        crate::http::problems::NoSuchRegistration
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn list(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let r = super::registrations::visible(&app, &who, &id)?;
    let q = QueryPairs::parse(query.as_deref(), &["limit", "cursor"])?;
    let limit = q.limit(PAGE, PAGE_MAX)?;
    let cursor = q
        .one("cursor")?
        .map(|c| {
            c.parse::<u64>()
                .map_err(|_| ApiError::bad_request("cursor: not one this API gave"))
        })
        .transpose()?;
    let page = match app.forwarding.destinations().get(&r.destination) {
        Some(outbox) => outbox.attempts.page(limit, cursor),
        None => Page {
            deliveries: Vec::new(),
            next_cursor: None,
        },
    };
    Ok(Json(page).into_response())
}

/// The body of `POST /api/registrations/{id}/replay`: one of the two.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Send again the events after this event id.
    #[serde(default)]
    pub from: Option<String>,
    /// Send again the events since this time (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
}

/// Sends a registration's matching events again, from a point in the log.
#[utoipa::path(
    post,
    path = "/api/registrations/{id}/replay",
    tag = "registrations",
    params(("id" = String, Path, description = "The registration id")),
    request_body(content = ReplayRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Replaying: `replaying` events after the point match the registration and are sent again in order, marked X-Ratatoskr-Replay: true, each with the webhook-id of its first delivery", body = ReplayStarted),
        (status = 400, description = "Malformed JSON", content_type = "application/problem+json", body = crate::http::problems::Problem),
        (status = 503, description = "The log or Redis cannot be read now", content_type = "application/problem+json", body = crate::http::problems::Problem),
        (status = 409, description = "A replay for this registration is running", content_type = "application/problem+json", body = crate::http::problems::Problem),
        (status = 422, description = "Not exactly one of from and since, a bad id or time, a point older than the event log holds, or a disabled registration", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::BodyLimits,
        crate::http::problems::Guarded,
        crate::http::problems::RateLimited,
        crate::http::problems::NoSuchRegistration
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn replay(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ReplayRequest>,
) -> Result<Response, ApiError> {
    let r = super::registrations::visible(&app, &who, &id)?;
    let (replay, outbox) = Replay::prepare(&app, &r, req.point()?).await?;
    let running = Running::start(&app, &r.id)?;
    // Counted first (the answer says how many), then sent in the
    // background, in order, as the destination's backlog makes room.
    let started = ReplayStarted {
        replaying: replay.count().await?,
        after: replay.after.to_string(),
    };
    app.delivery.spawn(replay.send(outbox, running));
    tracing::info!(id = %r.id, events = started.replaying, "replay started");
    Ok((http::StatusCode::ACCEPTED, Json(started)).into_response())
}

/// The answer to a replay: how many events it sends, after which id.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ReplayStarted {
    /// How many of the events after the point match the registration.
    pub replaying: usize,
    /// The id they follow (from `from`, or the last before `since`).
    pub after: String,
}

impl ReplayRequest {
    /// The id after which events are sent again: `from`, or the last id
    /// before `since`.
    fn point(&self) -> Result<EventId, ApiError> {
        match (&self.from, &self.since) {
            (Some(from), None) => from
                .parse::<EventId>()
                .map_err(|_| ApiError::unprocessable("from: not an event id")),
            (None, Some(since)) => {
                let at = chrono::DateTime::parse_from_rfc3339(since).map_err(|e| {
                    ApiError::unprocessable(format!("since: not an RFC 3339 time: {e}"))
                })?;
                let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
                Ok(EventId::from_u64(
                    EventId::floor_at(ms).as_u64().saturating_sub(1),
                ))
            }
            _ => Err(ApiError::unprocessable(
                "give exactly one of from and since",
            )),
        }
    }
}

/// One replay: a destination's matching events of the history after
/// `after`, up to `until` (the newest id when it was asked for).
struct Replay {
    app: App,
    history: crate::bus::History,
    destination: Arc<crate::forward::destination::Destination>,
    after: EventId,
    until: EventId,
}

impl Replay {
    /// The replay of `r`'s events after `after`, and the outbox it sends
    /// into; 422 when `r` is disabled or has no live destination, when
    /// nothing is kept to replay from, or when `after` is older than that.
    async fn prepare(
        app: &App,
        r: &crate::state::registry::spec::Registration,
        after: EventId,
    ) -> Result<(Self, Arc<crate::forward::outbox::Outbox>), ApiError> {
        if r.disabled.is_some() || r.gone.is_some() {
            return Err(ApiError::unprocessable(
                "this registration is disabled: replace it first",
            ));
        }
        let outbox = app
            .forwarding
            .destinations()
            .get(&r.destination)
            .ok_or_else(|| ApiError::unprocessable("this registration has no live destination"))?;
        let history = app.bus.history().ok_or_else(|| {
            ApiError::unprocessable(
                "this gateway keeps no event log (--store memory): there is nothing to replay",
            )
        })?;
        if !history.holds_after(after).await? {
            return Err(ApiError::unprocessable(
                "that point is older than the event log holds",
            ));
        }
        let replay = Self {
            app: app.clone(),
            history,
            destination: Arc::new(r.destination.clone()),
            after,
            until: app.hub.last_id(),
        };
        Ok((replay, outbox))
    }

    /// The matching events of the page after `cursor`, the page's last id
    /// and whether more remain; none past the end.
    async fn page_after(
        &self,
        cursor: EventId,
    ) -> Result<Option<(Vec<Arc<Published>>, EventId, bool)>, ApiError> {
        let (page, more) = self.history.page(cursor, self.until).await?;
        let Some(last) = page.last().map(|p| p.event.id) else {
            return Ok(None);
        };
        let matching = self
            .app
            .forwarding
            .matching_for(self.destination.clone(), page)
            .await;
        Ok(Some((matching, last, more)))
    }

    /// How many events it will send.
    async fn count(&self) -> Result<usize, ApiError> {
        let mut count = 0;
        let mut cursor = self.after;
        while let Some((matching, last, more)) = self.page_after(cursor).await? {
            count += matching.len();
            cursor = last;
            if !more {
                break;
            }
        }
        Ok(count)
    }

    /// Sends them into `outbox` as its backlog makes room, and runs (held
    /// as `running`) until the destination has had every one.
    async fn send(self, outbox: Arc<crate::forward::outbox::Outbox>, running: Running) {
        let _running = running;
        let mut cursor = self.after;
        loop {
            let (matching, last, more) = match self.page_after(cursor).await {
                Ok(Some(page)) => page,
                Ok(None) => return,
                Err(_) => {
                    tracing::warn!(destination = %self.destination.label(), "replay: the log could not be read; the replay ended early");
                    return;
                }
            };
            for p in matching {
                while !outbox.has_room() {
                    if outbox.is_closed() {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                outbox.push_replay(p);
            }
            cursor = last;
            if !more {
                break;
            }
        }
        while outbox.replays_pending() > 0 && !outbox.is_closed() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// A registration's running replay; ends when dropped.
struct Running {
    replays: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    id: String,
}

impl Running {
    /// 409 when one is running for `id` on this node.
    fn start(app: &App, id: &str) -> Result<Self, ApiError> {
        if !crate::sync::lock(&app.replays).insert(id.to_owned()) {
            return Err(ApiError::conflict(
                "a replay for this registration is running",
            ));
        }
        Ok(Self {
            replays: app.replays.clone(),
            id: id.to_owned(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        crate::sync::lock(&self.replays).remove(&self.id);
    }
}
