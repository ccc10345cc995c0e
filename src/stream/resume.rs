//! Cluster mode: the part of a resume that this node's ring does not cover
//! (the node started after the client's last event, or evicted it), read
//! from the shared stream page by page as the stream is written.
//!
//! A resume is bounded in bytes (`--cluster-replay-max-bytes`) and in
//! events (`--replay-capacity`), and holds one page at a time: a page is
//! read (cut by Redis at [`PAGE_BYTES`]), filtered and written before the
//! next is read. A resume that spends its budget before the ring's part
//! gets `gap`, as a lost range does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use crate::bus::Bus;
use crate::cluster::{ClusterError, ResumePage, SharedStream};
use crate::event::{Event, EventId};
use crate::hub::{EventFilter, Published, Subscription};

/// Most bytes of entries in one page (one entry larger than this is a
/// page of its own).
pub const PAGE_BYTES: usize = 1024 * 1024;
/// Most entries in one page.
const PAGE_ENTRIES: usize = 256;

/// The bounds of one resume from the shared stream.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes (`--cluster-replay-max-bytes`).
    pub max_bytes: usize,
    /// Most events (`--replay-capacity`).
    pub max_events: usize,
}

type PageRead = Pin<Box<dyn Future<Output = Result<ResumePage, ClusterError>> + Send>>;

/// Cluster mode: what the local ring does not cover (this node started
/// after the client's last event, or it was evicted) comes from the shared
/// stream, up to where the ring's coverage starts, page by page as the
/// body writes it ([`ClusterResume`]). An embedded node's ring was
/// restored from its event log at start: it has nothing more to read. The hub registered the subscriber
/// before taking the ring's part, so the stream's part, the ring's part and
/// the live queue join with no gap and no duplicate. A stream that no
/// longer holds everything after `last` keeps the `gap`.
pub async fn beyond_ring(
    bus: &Bus,
    subscription: &mut Subscription,
    last: EventId,
    limits: Limits,
) -> Option<ClusterResume> {
    let stream = bus.shared_stream()?;
    let filter = subscription.filter().clone();
    let r = subscription.replay.as_mut()?;
    if !r.truncated {
        return None;
    }
    let before = r
        .ring_first
        .unwrap_or(EventId::from_u64(r.live_from.as_u64().saturating_add(1)));
    match stream.holds_after(last).await {
        Ok(complete) => {
            r.truncated = !complete;
            Some(ClusterResume::new(
                stream.clone(),
                filter,
                last,
                before,
                limits.max_bytes,
                limits.max_events,
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "resume: the shared stream is unavailable; the client gets a gap");
            None
        }
    }
}

/// What the next step of a resume gives.
#[derive(Debug)]
pub enum Step {
    /// The matching events of the next page (never empty).
    Events(Vec<Arc<Published>>),
    /// Nothing left to read; `gap`: the budget ran out, or Redis failed,
    /// before the end (events may be missing).
    Done {
        /// Events after the last one written may be missing.
        gap: bool,
    },
}

/// One stream's resume from the shared stream.
pub struct ClusterResume {
    cluster: Arc<SharedStream>,
    filter: EventFilter,
    /// Where the next page starts (after it).
    cursor: String,
    /// Where the ring's part (or the live queue) starts.
    before: EventId,
    bytes_left: usize,
    events_left: usize,
    reading: Option<PageRead>,
}

impl std::fmt::Debug for ClusterResume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterResume")
            .field("cursor", &self.cursor)
            .field("before", &self.before)
            .field("bytes_left", &self.bytes_left)
            .finish_non_exhaustive()
    }
}

impl ClusterResume {
    /// A resume of what comes after `after` and before `before`, at most
    /// `max_bytes` of entries and `max_events` entries.
    pub fn new(
        cluster: Arc<SharedStream>,
        filter: EventFilter,
        after: EventId,
        before: EventId,
        max_bytes: usize,
        max_events: usize,
    ) -> Self {
        Self {
            cursor: cluster.resume_cursor(after),
            cluster,
            filter,
            before,
            bytes_left: max_bytes,
            events_left: max_events,
            reading: None,
        }
    }

    /// The next page's matching events, or the end.
    pub fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            let reading = match &mut self.reading {
                Some(r) => r,
                None => {
                    if self.bytes_left == 0 || self.events_left == 0 {
                        return Poll::Ready(Step::Done { gap: true });
                    }
                    let (cluster, cursor, before) =
                        (self.cluster.clone(), self.cursor.clone(), self.before);
                    let (count, bytes) = (
                        PAGE_ENTRIES.min(self.events_left),
                        PAGE_BYTES.min(self.bytes_left),
                    );
                    self.reading.insert(Box::pin(async move {
                        cluster.resume_page(&cursor, before, count, bytes).await
                    }))
                }
            };
            let read = ready!(reading.as_mut().poll(cx));
            self.reading = None;
            let page = match read {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "resume: the shared stream is unavailable; the client gets a gap");
                    return Poll::Ready(Step::Done { gap: true });
                }
            };
            let Some(cursor) = page.cursor else {
                return Poll::Ready(Step::Done { gap: false });
            };
            self.cursor = cursor;
            self.bytes_left = self.bytes_left.saturating_sub(page.bytes);
            self.events_left = self.events_left.saturating_sub(page.read);
            let events: Vec<Arc<Published>> = page
                .entries
                .into_iter()
                .map(|(id, draft)| Arc::new(Published::new(Event { id, draft })))
                .filter(|p| self.filter.matches(&p.event))
                .collect();
            if !events.is_empty() {
                return Poll::Ready(Step::Events(events));
            }
        }
    }
}
