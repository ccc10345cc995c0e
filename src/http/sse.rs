//! `GET /events`: the SSE stream.
//!
//! Query: `device` (repeatable, OR), `type` (repeatable glob, OR), `format`
//! (`data` or `envelope`), `lastEventId` (for clients that cannot set the
//! `Last-Event-ID` header; the header wins). Invalid values are refused with
//! 400 before the stream starts.
//!
//! The stream opens with `retry:`, then (when resuming) a `gap` event if
//! events may be missing, the missed events, then live events. Live events
//! waiting in the subscriber's queue are written together in one chunk, so
//! a busy subscriber costs one socket write per batch, not per event.
//! Named events (`gap`, `lagged`, `shutdown`, `revoked`) do not trigger a
//! browser's `onmessage`; comments keep idle connections alive.
//!
//! A stream ends with `revoked` when the credential that opened it no
//! longer holds: a JWT past its `exp` (plus `--jwt-leeway`), an API key a
//! reload removed (see `auth::lease`); the client's reconnect then gets
//! 401. The `--api-token` and auth off never end a stream this way.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body::Frame;
use serde_json::json;
use tokio::time::Sleep;

use super::cluster_resume::{ClusterResume, Step};
use super::query::QueryPairs;
use super::App;
use crate::auth::lease::{Lease, LeaseWatch};
use crate::error::ApiError;
use crate::event::EventId;
use crate::hub::{
    frame, CloseReason, DirectConnection, EventFilter, Format, LagPolicy, Lane, LaneWrite,
    Published, SubscribeError, Subscription,
};
use crate::telemetry::{Metrics, StreamEnd};
use frame::{Piece, Transfer};

/// Most bytes copied into one chunk, replayed or live (so that a reader
/// of a burst of large events never holds its own copy of the burst; the
/// queue holds shared frames, a chunk copies them). One event larger than
/// this is written alone, as its shared frame, without a copy.
const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// When a client refused at the per-address stream cap may try again.
const STREAM_CAP_RETRY: Duration = Duration::from_secs(5);
/// Most events drained from a queue per chunk.
const MAX_BATCH_EVENTS: usize = 256;

/// The SSE stream: every event whose device, type and expression match, with id/Last-Event-ID resume, heartbeats and lag notices (gap, lagged, shutdown).
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    params(("device" = Option<Vec<String>>, Query, description = "Device ids (repeat or comma-separate); none: every device the caller may see"), ("type" = Option<Vec<String>>, Query, description = "Event type globs"), ("expression" = Option<String>, Query, description = "A CEL expression over event"), ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id"), ("lastEventId" = Option<String>, Query, description = "Resume after this id (for clients that cannot set the header)")),
    responses(
        (status = 200, description = "The stream, until the client leaves", content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad filter", content_type = "application/problem+json", body = crate::http::openapi::Problem),
        (status = 401, description = "No valid token (auth on)", content_type = "application/problem+json", body = crate::http::openapi::Problem),
        (status = 403, description = "The token may not do this", content_type = "application/problem+json", body = crate::http::openapi::Problem),
        (status = 429, description = "Too many streams from this address", content_type = "application/problem+json", body = crate::http::openapi::Problem),
        (status = 503, description = "Subscriber limit reached", content_type = "application/problem+json", body = crate::http::openapi::Problem)
    ),
    security(("bearer" = []), ("cookie" = []), ("query" = []))
)]
pub async fn subscribe(
    State(app): State<App>,
    RawQuery(query): RawQuery,
    peer: Option<axum::Extension<crate::server::PeerAddr>>,
    opener: Opener,
    transfer: Option<axum::Extension<Transfer>>,
    direct: Option<axum::Extension<DirectConnection>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = QueryPairs::parse(
        query.as_deref(),
        &["device", "type", "format", "lastEventId"],
    )?;
    let filter = EventFilter::new(q.all("device"), q.all("type"))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let filter = scoped(
        &app,
        super::auth::principal(&app, opener.who.map(axum::Extension)),
        filter,
    )?;
    let format = match q.one("format")? {
        None | Some("data") => Format::Data,
        Some("envelope") => Format::Envelope,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format {other:?} is not one of data, envelope"
            )))
        }
    };
    let header_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID must be visible ASCII"))
        })
        .transpose()?
        .filter(|v| !v.trim().is_empty());
    let resume = header_id
        .or(q.one("lastEventId")?)
        .map(|raw| {
            raw.parse::<EventId>()
                .map_err(|e| ApiError::bad_request(format!("Last-Event-ID {raw:?}: {e}")))
        })
        .transpose()?;

    let slot = match peer {
        Some(axum::Extension(peer)) => app.streams_per_ip.open(peer.0.ip()).map_err(|cap| {
            ApiError::too_many_requests(
                format!(
                    "this address has {} streams open already (--max-streams-per-ip)",
                    cap.0
                ),
                STREAM_CAP_RETRY,
            )
        })?,
        None => None,
    };
    let mut subscription = app.hub.subscribe(filter, resume).map_err(|e| match e {
        SubscribeError::ShuttingDown | SubscribeError::Full(_) => {
            ApiError::unavailable(e.to_string())
        }
    })?;
    let from_cluster = match (&app.cluster, resume) {
        (Some(cluster), Some(last)) => {
            resume_from_cluster(&app, cluster, &mut subscription, last).await
        }
        _ => None,
    };
    let transfer = transfer.map(|t| t.0).unwrap_or_default();
    // The connection writes this body's bytes as they are (the lean path):
    // the hub may write events to it directly, in the same form.
    let lane = direct.map(|d| Lane {
        writer: d.0 .0,
        format,
        transfer,
    });
    let mut body = SseBody::new(subscription, format, transfer, &app, resume, lane);
    body.slot = slot;
    if let Some(r) = from_cluster {
        // The ring's part waits for the stream's part.
        body.ring_part = std::mem::take(&mut body.replay).collect();
        body.from_cluster = Some(r);
    }
    body.lease = opener
        .lease
        .and_then(|l| LeaseWatch::new(&l, &app.credentials));
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
    Ok(response)
}

/// Who opens a stream, as authentication found them, and what ends their
/// credential ([`Lease`]: none for the `--api-token` or with auth off).
#[derive(Debug)]
pub struct Opener {
    who: Option<crate::auth::Principal>,
    lease: Option<Lease>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Opener {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Infallible> {
        Ok(Self {
            who: parts.extensions.get::<crate::auth::Principal>().cloned(),
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

/// Cluster mode: what the local ring does not cover (this node started
/// after the client's last event, or it was evicted) comes from the shared
/// stream, up to where the ring's coverage starts, page by page as the
/// body writes it ([`ClusterResume`]). The hub registered the subscriber
/// before taking the ring's part, so the stream's part, the ring's part and
/// the live queue join with no gap and no duplicate. A stream that no
/// longer holds everything after `last` keeps the `gap`.
async fn resume_from_cluster(
    app: &App,
    cluster: &Arc<crate::cluster::Cluster>,
    subscription: &mut Subscription,
    last: EventId,
) -> Option<ClusterResume> {
    let filter = subscription.filter().clone();
    let r = subscription.replay.as_mut()?;
    if !r.truncated {
        return None;
    }
    let before = r
        .ring_first
        .unwrap_or(EventId::from_u64(r.live_from.as_u64().saturating_add(1)));
    match cluster.holds_after(last).await {
        Ok(complete) => {
            r.truncated = !complete;
            Some(ClusterResume::new(
                cluster.clone(),
                filter,
                last,
                before,
                app.config.cluster_replay_max_bytes,
                app.config.replay_capacity.max(1),
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "resume: the shared stream is unavailable; the client gets a gap");
            None
        }
    }
}

/// The response body of one subscriber.
struct SseBody {
    subscription: Subscription,
    format: Format,
    /// How the bytes travel: chunks made here on the lean HTTP/1.1 path.
    transfer: Transfer,
    lag_policy: LagPolicy,
    metrics: Arc<Metrics>,
    /// Frames to write before anything else (retry, gap notice).
    preamble: Option<Bytes>,
    /// Missed events still to write, when resuming (in a cluster: the
    /// current page of the shared stream's part, then the ring's part).
    replay: std::vec::IntoIter<Arc<Published>>,
    /// Cluster mode: the shared stream's part of a resume, still to read.
    from_cluster: Option<ClusterResume>,
    /// The ring's part of a resume, written after the shared stream's.
    ring_part: Vec<Arc<Published>>,
    /// Drained from the queue, not yet written (a drain can be larger
    /// than one chunk).
    batch: Vec<Arc<Published>>,
    /// Events the queue dropped, to report after `batch` is written.
    pending_dropped: u64,
    /// Why the queue closed, to report after `batch` is written.
    pending_closed: Option<CloseReason>,
    /// Events before `batch` may be missing: said before it is written.
    pending_gap: bool,
    heartbeat_every: Duration,
    heartbeat: Pin<Box<Sleep>>,
    /// The heartbeat timer was polled since it was last armed, so it holds
    /// this body's waker until it fires: it need not be polled again on
    /// every delivery. (One task polls a body for its whole life: the lean
    /// pump, hyper's HTTP/1 connection, or its HTTP/2 stream task.)
    heartbeat_polled: bool,
    /// When bytes last went out: a heartbeat is due one interval later.
    last_write: tokio::time::Instant,
    last_id: Option<EventId>,
    /// Resumed, and no live event written yet: live events at or below
    /// `last_id` are skipped until then (see `poll_frame`).
    skipping_seen: bool,
    /// The queue has a lane to the connection (see `hub::subscriber`).
    lane: bool,
    /// Bytes of the first event in `batch` that the lane already wrote.
    partial: usize,
    finished: bool,
    /// This stream's place under `--max-streams-per-ip` (freed on drop).
    slot: Option<super::per_ip::StreamSlot>,
    /// What ends the stream's credential; `None` once it has (or when
    /// nothing can).
    lease: Option<LeaseWatch>,
}

impl SseBody {
    fn new(
        mut subscription: Subscription,
        format: Format,
        transfer: Transfer,
        app: &App,
        resume: Option<EventId>,
        lane: Option<Lane>,
    ) -> Self {
        let has_lane = lane.is_some();
        if let Some(lane) = lane {
            subscription.queue.attach_lane(lane);
        }
        let mut preamble = Piece::with_capacity(64);
        preamble.extend(&frame::retry(app.config.sse_retry.as_millis() as u64));
        let mut replay = Vec::new();
        if let Some(r) = subscription.replay.take() {
            if r.truncated {
                let data = json!({
                    "last_event_id": resume.map(|id| id.to_string()),
                    "oldest_available": r.oldest.map(|id| id.to_string()),
                    "detail": "events after last_event_id may be missing: they are older than the replay buffer or from before a restart",
                });
                preamble.extend(&frame::event(
                    None,
                    Some("gap"),
                    data.to_string().as_bytes(),
                ));
            }
            replay = r.events;
        }
        let every = app.config.heartbeat;
        Self {
            subscription,
            format,
            transfer,
            lag_policy: app.config.lag_policy,
            metrics: app.metrics.clone(),
            preamble: Some(preamble.finish(transfer)),
            replay: replay.into_iter(),
            from_cluster: None,
            ring_part: Vec::new(),
            batch: Vec::new(),
            pending_dropped: 0,
            pending_closed: None,
            pending_gap: false,
            heartbeat_every: every,
            heartbeat: Box::pin(tokio::time::sleep(every)),
            heartbeat_polled: false,
            last_write: tokio::time::Instant::now(),
            last_id: resume,
            skipping_seen: resume.is_some(),
            lane: has_lane,
            partial: 0,
            slot: None,
            lease: None,
            finished: false,
        }
    }

    /// Takes in what the lane wrote: the last id (for notices) and the
    /// time (the heartbeat is due one interval after it).
    fn note_lane(&mut self, wrote: Option<LaneWrite>) {
        if let Some(w) = wrote {
            self.last_id = self.last_id.max(Some(w.id));
            self.last_write = self.last_write.max(w.at);
        }
    }

    /// Notices (drops, the close, a gap) wait to be written.
    fn has_notices(&self) -> bool {
        self.pending_dropped > 0 || self.pending_closed.is_some() || self.pending_gap
    }

    /// The `gap` of a resume from the shared stream that stopped at its
    /// budget (or at a Redis failure) before the ring's part.
    fn resume_gap(&self) -> Bytes {
        let data = json!({
            "last_event_id": self.last_id.map(|id| id.to_string()),
            "detail": "events after last_event_id may be missing: the resume from the cluster's shared stream stopped at its bound (--cluster-replay-max-bytes, --replay-capacity) or at a Redis failure",
        });
        let mut out = Piece::with_capacity(256);
        out.extend(&frame::event(
            None,
            Some("gap"),
            data.to_string().as_bytes(),
        ));
        out.finish(self.transfer)
    }

    /// Concatenates the next replayed events, up to the chunk limit.
    fn next_replay_chunk(&mut self) -> Option<Bytes> {
        let first = self.replay.next()?;
        let frame = first.frame(self.format);
        let mut out = Piece::with_capacity(frame.len());
        out.extend(frame);
        self.last_id = Some(first.event.id);
        while out.len() < MAX_CHUNK_BYTES {
            let Some(e) = self.replay.next() else { break };
            out.extend(e.frame(self.format));
            self.last_id = Some(e.event.id);
        }
        Some(out.finish(self.transfer))
    }

    /// Writes the next chunk of drained events: at most [`MAX_CHUNK_BYTES`]
    /// (or one larger event), then the pending notices once the batch is
    /// written.
    fn live_chunk(&mut self) -> Bytes {
        let format = self.format;
        if self.partial > 0 {
            // The rest of a frame the lane began: alone, as it is (with its
            // chunk framing already on the wire).
            let from = std::mem::take(&mut self.partial);
            let e = self.batch.remove(0);
            self.last_id = Some(e.event.id);
            return e.wire(format, self.transfer).slice(from..);
        }
        let (mut take, mut size) = (0, 0);
        for e in &self.batch {
            let len = e.frame(format).len();
            if take > 0 && size + len > MAX_CHUNK_BYTES {
                break;
            }
            size += len;
            take += 1;
        }
        let last_of_batch = take == self.batch.len();
        let dropped = if last_of_batch {
            std::mem::take(&mut self.pending_dropped)
        } else {
            0
        };
        let closed = if last_of_batch {
            self.pending_closed.take()
        } else {
            None
        };
        // The common case, one event and nothing to report: write the shared
        // frame itself, with no copy.
        if take == 1 && dropped == 0 && closed.is_none() && !self.pending_gap {
            let e = self.batch.remove(0);
            self.last_id = Some(e.event.id);
            return e.wire(format, self.transfer).clone();
        }
        let mut out = Piece::with_capacity(size + 128);
        if std::mem::take(&mut self.pending_gap) {
            let data = json!({
                "last_event_id": self.last_id.map(|id| id.to_string()),
                "detail": "events after last_event_id may be missing: the cluster's Redis lost its stream (restarted without persistence, or trimmed past this node while it was away)",
            });
            out.extend(&frame::event(
                None,
                Some("gap"),
                data.to_string().as_bytes(),
            ));
        }
        for e in self.batch.drain(..take) {
            out.extend(e.frame(format));
            self.last_id = Some(e.event.id);
        }
        if dropped > 0 {
            self.metrics.lagged();
            let data = json!({
                "dropped": dropped,
                "last_event_id": self.last_id.map(|id| id.to_string()),
                "policy": match self.lag_policy { LagPolicy::Disconnect => "disconnect", LagPolicy::Resume => "resume" },
            });
            out.extend(&frame::event(
                None,
                Some("lagged"),
                data.to_string().as_bytes(),
            ));
            if self.lag_policy == LagPolicy::Disconnect {
                self.metrics.stream_ended(StreamEnd::Lagged);
                self.finished = true;
            }
        }
        // The queue closed: one last named notice (unless a lag already
        // ended the stream), then the end.
        let last = match closed {
            Some(CloseReason::Shutdown) => Some((
                StreamEnd::Shutdown,
                "shutdown",
                "the gateway is shutting down",
            )),
            Some(CloseReason::Revoked(why)) => Some((StreamEnd::Revoked, "revoked", why.reason())),
            None => None,
        };
        if let Some((end, name, reason)) = last {
            if !self.finished {
                self.metrics.stream_ended(end);
                let data = json!({"reason": reason, "last_event_id": self.last_id.map(|id| id.to_string())});
                out.extend(&frame::event(None, Some(name), data.to_string().as_bytes()));
            }
            self.finished = true;
        }
        out.finish(self.transfer)
    }
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(p) = this.preamble.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        // Atomic loads unless the expiry or a reload woke this task. The
        // queue, once closed, reports it after what it holds (and stops
        // its lane), as the shutdown does.
        if let Some(watch) = &mut this.lease {
            if let Poll::Ready(why) = watch.poll_revoked(cx) {
                this.lease = None;
                this.subscription.queue.close(CloseReason::Revoked(why));
            }
        }
        loop {
            if let Some(chunk) = this.next_replay_chunk() {
                this.last_write = tokio::time::Instant::now();
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            // The next page only once this one is written: one page held.
            let Some(resume) = this.from_cluster.as_mut() else {
                break;
            };
            match std::task::ready!(resume.poll_step(cx)) {
                Step::Events(page) => this.replay = page.into_iter(),
                Step::Done { gap } => {
                    this.from_cluster = None;
                    this.replay = std::mem::take(&mut this.ring_part).into_iter();
                    if gap {
                        this.last_write = tokio::time::Instant::now();
                        return Poll::Ready(Some(Ok(Frame::data(this.resume_gap()))));
                    }
                }
            }
        }
        if !this.batch.is_empty() || this.has_notices() {
            this.last_write = tokio::time::Instant::now();
            return Poll::Ready(Some(Ok(Frame::data(this.live_chunk()))));
        }
        // Everything taken is written (the lean pump polls again only then):
        // the lane may write, once no seen id is left to skip.
        loop {
            let arm = this.lane && !this.skipping_seen;
            let Poll::Ready(drained) =
                this.subscription
                    .queue
                    .poll_drain(cx, &mut this.batch, MAX_BATCH_EVENTS, arm)
            else {
                break;
            };
            this.note_lane(drained.lane);
            this.partial = drained.partial;
            this.pending_dropped += drained.dropped;
            this.pending_closed = drained.closed.or(this.pending_closed);
            this.pending_gap |= drained.gap;
            // Nothing at or below what the client has: in a cluster, an
            // event can reach this node's hub after a client that already
            // holds its id (from the 202) resumed from it; on one node, an
            // event can reach this stream's hub shard after the client had
            // it on a stream in a shard it passed first. The queue is in
            // id order, so once one live event passes, every later one does.
            if this.skipping_seen {
                if let Some(last) = this.last_id {
                    this.batch.retain(|e| e.event.id > last);
                }
                this.skipping_seen = this.batch.is_empty();
            }
            if this.batch.is_empty() && !this.has_notices() {
                continue;
            }
            this.last_write = tokio::time::Instant::now();
            return Poll::Ready(Some(Ok(Frame::data(this.live_chunk()))));
        }
        // Idle: one timer per stream, re-armed when it fires rather than
        // after every write (re-arming costs a timer-wheel update). It is
        // re-armed for one interval after the last write, so the stream is
        // never silent for longer than the interval.
        if this.heartbeat_polled && !this.heartbeat.is_elapsed() {
            return Poll::Pending;
        }
        while this.heartbeat.as_mut().poll(cx).is_ready() {
            // A reset timer holds no waker until it is polled again.
            this.heartbeat_polled = false;
            if this.lane {
                let wrote = this.subscription.queue.lane_writes();
                this.note_lane(wrote);
            }
            let now = tokio::time::Instant::now();
            let due = this.last_write + this.heartbeat_every;
            if due <= now {
                if this.lane {
                    // The heartbeat is this body's to write: the lane stops
                    // until the next poll finds the queue empty again.
                    match this.subscription.queue.disarm() {
                        Ok(wrote) => this.note_lane(wrote),
                        Err(wrote) => {
                            // Events came in meanwhile (a publish on another
                            // thread, maybe half written through the lane):
                            // they go first, and count as the write.
                            this.note_lane(wrote);
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                }
                this.last_write = now;
                this.heartbeat.as_mut().reset(now + this.heartbeat_every);
                return Poll::Ready(Some(Ok(Frame::data(frame::heartbeat(this.transfer)))));
            }
            this.heartbeat.as_mut().reset(due);
        }
        this.heartbeat_polled = true;
        Poll::Pending
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        if self.lane {
            // The connection closes when the stream lets it go, not when
            // the hub drops the queue.
            self.subscription.queue.detach_lane();
        }
    }
}

use std::future::Future as _;
