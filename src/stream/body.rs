//! One subscriber's response body: the stream's state machine.
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

use bytes::Bytes;
use http_body::Frame;
use serde_json::json;
use tokio::time::Sleep;

use super::resume::{ClusterResume, Step};
use crate::auth::lease_watch::LeaseWatch;
use crate::event::EventId;
use crate::hub::{frame, CloseReason, Format, LagPolicy, Lane, LaneWrite, Published, Subscription};
use crate::server::per_ip::StreamSlot;
use crate::telemetry::{Metrics, StreamEnd};
use frame::{Piece, Transfer};

/// Most bytes copied into one chunk, replayed or live (so that a reader
/// of a burst of large events never holds its own copy of the burst; the
/// queue holds shared frames, a chunk copies them). One event larger than
/// this is written alone, as its shared frame, without a copy.
const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// Most events drained from a queue per chunk.
const MAX_BATCH_EVENTS: usize = 256;

/// What every stream is written with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `retry:` a stream opens with (`--sse-retry`).
    pub retry: Duration,
    /// Time between heartbeat comments on an idle stream (`--heartbeat`).
    pub heartbeat: Duration,
    /// What a lagging reader gets (`--lag-policy`).
    pub lag_policy: LagPolicy,
    /// Where stream ends and lags are counted.
    pub metrics: Arc<Metrics>,
}

/// The response body of one subscriber.
pub struct SseBody {
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
    slot: Option<StreamSlot>,
    /// In a cluster with a split stream: the partitions this stream needs
    /// this node to read (no longer needed on drop).
    reading: Option<crate::cluster::NeedGuard>,
    /// What ends the stream's credential; `None` once it has (or when
    /// nothing can).
    lease: Option<LeaseWatch>,
}

impl SseBody {
    /// The body of `subscription`, resuming after `resume` when given,
    /// written through `lane` when the connection offers one.
    pub fn new(
        mut subscription: Subscription,
        format: Format,
        transfer: Transfer,
        settings: &Settings,
        resume: Option<EventId>,
        lane: Option<Lane>,
    ) -> Self {
        let has_lane = lane.is_some();
        if let Some(lane) = lane {
            subscription.queue.attach_lane(lane);
        }
        let mut preamble = Piece::with_capacity(64);
        preamble.extend(&frame::retry(settings.retry.as_millis() as u64));
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
        let every = settings.heartbeat;
        Self {
            subscription,
            format,
            transfer,
            lag_policy: settings.lag_policy,
            metrics: settings.metrics.clone(),
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
            reading: None,
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
            Some(CloseReason::Revoked(why)) => Some((StreamEnd::Revoked, "revoked", why)),
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

impl SseBody {
    /// Holds the stream's place under `--max-streams-per-ip` until it ends.
    pub fn hold(&mut self, slot: Option<StreamSlot>) {
        self.slot = slot;
    }

    /// Keeps the partitions it needs read while it lives.
    pub fn keep_reading(&mut self, reading: Option<crate::cluster::NeedGuard>) {
        self.reading = reading;
    }

    /// Writes the shared stream's part of a resume first; the ring's part
    /// waits for it.
    pub fn resume_first_from(&mut self, resume: ClusterResume) {
        self.ring_part = std::mem::take(&mut self.replay).collect();
        self.from_cluster = Some(resume);
    }

    /// Ends the stream with `revoked` once `lease` no longer holds.
    pub fn watch(&mut self, lease: Option<LeaseWatch>) {
        self.lease = lease;
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
                this.subscription
                    .queue
                    .close(CloseReason::Revoked(why.reason()));
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
