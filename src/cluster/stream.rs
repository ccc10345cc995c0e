//! The shared event stream: how accepted events reach every node. One
//! Redis stream, or `--redis-partitions` of them ([`super::layout`]), each
//! a [`Partition`] with its appender and its reader; every node's
//! [`super::merge`] publishes their entries into its hub in one order.
//! Resumes, replays and takeovers read ranges of it in that order too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::keys::KeyRecord;
use super::layout::Layout;
use super::merge::{self, Merge, Start};
use super::needs::{Ensure, NeedGuard, Needs, NotRead};
use super::partition::Partition;
use super::{ClusterError, ClusterMetrics, Link};
use crate::event::{EventDraft, EventId};
use crate::hub::Hub;

pub use super::partition::ResumePage;

/// Most entries a range reads per partition and call.
const RANGE_PAGE: usize = 1000;

/// The shared stream, as one node appends to and reads it.
pub struct SharedStream {
    layout: Layout,
    parts: Vec<Arc<Partition>>,
    /// Which partitions this node's streams and destinations need (a
    /// split stream's only).
    needs: Option<Arc<Needs>>,
    /// For the merge, once started.
    ensures: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Ensure>>>,
    metrics: ClusterMetrics,
}

impl std::fmt::Debug for SharedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStream")
            .field("partitions", &self.parts)
            .finish_non_exhaustive()
    }
}

impl SharedStream {
    /// The stream on `link`, split as `layout` says, with its appenders
    /// running.
    pub(super) fn open(
        link: Arc<Link>,
        layout: Layout,
        max_len: usize,
        max_age: Duration,
        ack_replicas: u32,
        metrics: ClusterMetrics,
    ) -> Arc<Self> {
        let parts = (0..layout.count())
            .map(|p| {
                Partition::open(
                    link.clone(),
                    p,
                    layout,
                    max_len,
                    max_age,
                    ack_replicas,
                    metrics.clone(),
                )
            })
            .collect();
        let (to_merge, ensures) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Self {
            layout,
            parts,
            needs: layout
                .is_split()
                .then(|| Needs::new(layout.count(), to_merge)),
            ensures: std::sync::Mutex::new(Some(ensures)),
            metrics,
        })
    }

    /// Has this node read the partitions a stream with `devices` (empty:
    /// any) may get events of, for as long as the guard lives; `None`
    /// when the stream is not split (its one partition is always read).
    pub async fn read_for(
        &self,
        devices: &[crate::event::DeviceId],
    ) -> Result<Option<NeedGuard>, NotRead> {
        let Some(needs) = self.needs.as_ref() else {
            return Ok(None);
        };
        let mut wanted: Vec<usize> = if devices.is_empty() {
            (0..self.layout.count()).collect()
        } else {
            devices.iter().map(|d| self.layout.of(Some(d))).collect()
        };
        wanted.sort_unstable();
        wanted.dedup();
        needs.need(wanted).await.map(Some)
    }

    /// How it is split.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The partition an event goes to.
    pub fn partition_of(&self, draft: &EventDraft) -> usize {
        self.layout.of(draft.device.as_ref())
    }

    /// Appends events of one partition (the first's: see
    /// [`SharedStream::partition_of`]) in one script call shared with the
    /// other requests appending there now; their ids, in order. `key`,
    /// when given, records the first id under its Idempotency-Key (a key
    /// of that partition) in the same call. An error means the events are
    /// not stored and will not be (see the fence in `append.rs`); Redis is
    /// given until `gives_up`.
    pub async fn append(
        &self,
        drafts: &[EventDraft],
        key: Option<KeyRecord>,
        gives_up: Instant,
    ) -> Result<Vec<EventId>, ClusterError> {
        let p = drafts.first().map_or(0, |d| self.partition_of(d));
        debug_assert!(drafts.iter().all(|d| self.partition_of(d) == p));
        self.parts[p].append(drafts, key, gives_up).await
    }

    /// Appends events of any partitions, each partition's in one call
    /// (the calls run at once); each event's id or why it is not stored.
    /// Events of one partition share their fate; of several, they may not.
    pub async fn append_spread(
        &self,
        drafts: &[EventDraft],
        gives_up: Instant,
    ) -> Vec<Result<EventId, ClusterError>> {
        if !self.layout.is_split() {
            return match self.parts[0].append(drafts, None, gives_up).await {
                Ok(ids) => ids.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e); drafts.len()],
            };
        }
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.layout.count()];
        for (i, d) in drafts.iter().enumerate() {
            groups[self.partition_of(d)].push(i);
        }
        let calls = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .map(|(p, g)| {
                let mine: Vec<EventDraft> = g.iter().map(|&i| drafts[i].clone()).collect();
                async move { (g, self.parts[p].append(&mine, None, gives_up).await) }
            });
        let mut out: Vec<Option<Result<EventId, ClusterError>>> =
            (0..drafts.len()).map(|_| None).collect();
        for (g, result) in join_all(calls).await {
            match result {
                Ok(ids) => {
                    for (&i, id) in g.iter().zip(ids) {
                        out[i] = Some(Ok(id));
                    }
                }
                Err(e) => {
                    for &i in g {
                        out[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(ClusterError::Unavailable(
                        "Redis answered too few ids".into(),
                    ))
                })
            })
            .collect()
    }

    /// Whether the stream still holds everything after `after`: false when
    /// trimming or a Redis restart lost some of them (in some partition,
    /// the client's last event, or an older one, is no longer its oldest
    /// entry).
    pub async fn holds_after(&self, after: EventId) -> Result<bool, ClusterError> {
        let held = join_all(self.parts.iter().map(|p| p.holds_after(after))).await;
        let mut all = true;
        for h in held {
            all &= h?;
        }
        Ok(all)
    }

    /// Where a resume after `after` starts ([`SharedStream::resume_page`]'s
    /// first cursor).
    pub fn resume_cursor(&self, after: EventId) -> String {
        if self.layout.is_split() {
            after.to_string()
        } else {
            self.layout.stream_id(after)
        }
    }

    /// One page of a resume: the entries after `cursor` (from
    /// [`SharedStream::resume_cursor`], or a page's) and before `before`,
    /// in id order, at most `count` of them and, past the first, no more
    /// than `max_bytes` of fields. Redis cuts the page (a script over
    /// XRANGE), so a node never holds more than that of one resume,
    /// however large the events are: of a split stream, it reads a page
    /// of each partition with a share of `max_bytes`, and keeps what comes
    /// before the first one that stopped short (the rest is read again).
    pub async fn resume_page(
        &self,
        cursor: &str,
        before: EventId,
        count: usize,
        max_bytes: usize,
    ) -> Result<ResumePage, ClusterError> {
        if !self.layout.is_split() {
            let before = self.layout.stream_id(before);
            return self.parts[0]
                .resume_page(cursor, &before, count, max_bytes)
                .await;
        }
        let after: EventId = cursor
            .parse()
            .map_err(|_| ClusterError::Unavailable(format!("bad resume cursor {cursor:?}")))?;
        let share = (max_bytes / self.parts.len()).max(1);
        let pages = join_all(self.parts.iter().map(|p| {
            let (from, to) = (
                self.layout.after_in(p.index(), after),
                self.layout.before_in(p.index(), before),
            );
            async move { p.resume_page(&from, &to, count, share).await }
        }))
        .await;
        let mut pages = pages.into_iter().collect::<Result<Vec<_>, _>>()?;
        // Of a partition that stopped short, nothing after its last entry
        // is known yet: the page ends there.
        let horizon = self
            .parts
            .iter()
            .zip(&pages)
            .filter(|(_, page)| page.more)
            .filter_map(|(p, page)| page.cursor.as_deref().and_then(|c| p.id_of(c).ok()))
            .min();
        let read: usize = pages.iter().map(|p| p.read).sum();
        let bytes: usize = pages.iter().map(|p| p.bytes).sum();
        let mut entries: Vec<(EventId, EventDraft)> = pages
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.entries))
            .filter(|(id, _)| horizon.is_none_or(|h| *id <= h))
            .collect();
        entries.sort_unstable_by_key(|e| e.0);
        let cursor = horizon.or_else(|| entries.last().map(|e| e.0));
        let kept = entries.len();
        Ok(ResumePage {
            // What was read past the horizon is read again: counted once.
            read: kept.min(read),
            bytes: (bytes * kept).checked_div(read).unwrap_or(0),
            more: horizon.is_some(),
            cursor: if read == 0 {
                None
            } else {
                cursor.map(|c| c.to_string())
            },
            entries,
        })
    }

    /// Entries after `after` and before `before`, in id order, at most
    /// `max`; and whether the stream still holds everything after `after`
    /// (false when trimming or a Redis restart lost some of them).
    pub async fn range(
        &self,
        after: EventId,
        before: EventId,
        max: usize,
    ) -> Result<(Vec<(EventId, EventDraft)>, bool), ClusterError> {
        if !self.layout.is_split() {
            return self.parts[0].range(after, before, max).await;
        }
        let complete = self.holds_after(after).await?;
        let mut out = Vec::new();
        let mut cursor = self.resume_cursor(after);
        while out.len() < max {
            let page = self
                .resume_page(&cursor, before, RANGE_PAGE.min(max - out.len()), usize::MAX)
                .await?;
            out.extend(page.entries);
            match page.cursor {
                Some(c) if page.more => cursor = c,
                _ => return Ok((out, complete)),
            }
        }
        out.truncate(max);
        Ok((out, false))
    }

    /// Counts the replicas connected to each partition's primary (each
    /// second, from the sweeper), if appends wait for any.
    pub async fn count_replicas(&self) {
        join_all(self.parts.iter().map(|p| p.count_replicas())).await;
    }

    /// Sets the reader's lag gauges (once a second, from the sweeper): of
    /// the partition furthest behind in time, and of all in entries.
    pub async fn measure_lag(&self) {
        let lags = join_all(self.parts.iter().map(|p| p.measure_lag())).await;
        if let Some(ms) = lags.iter().filter_map(|l| l.0).max() {
            self.metrics.reader_lag_ms.set(ms as i64);
        }
        let entries: Vec<u64> = lags.iter().filter_map(|l| l.1).collect();
        if !entries.is_empty() {
            self.metrics
                .reader_lag_entries
                .set(entries.iter().sum::<u64>() as i64);
        }
    }

    /// Trims entries older than the maximum age (approximately).
    pub async fn trim(&self) {
        join_all(self.parts.iter().map(|p| p.trim())).await;
    }

    /// Runs this node's readers and their merge until the process ends:
    /// every entry after the newest ones now goes to `hub`, in id order.
    /// The starting point is fixed before this returns, so that no event
    /// accepted once the node serves can fall before it.
    pub async fn start_reader(
        self: &Arc<Self>,
        hub: Arc<Hub>,
    ) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
        let heads = join_all(self.parts.iter().map(|p| p.head())).await;
        let heads = heads.into_iter().collect::<Result<Vec<_>, _>>()?;
        let (starts, from) = if self.layout.is_split() {
            self.split_start(&heads).await?
        } else {
            // Older entries are for resumes, from the stream.
            let from = self.parts[0].id_of(&heads[0]).unwrap_or_default();
            let start = Start {
                held: Vec::new(),
                floor: from,
                cursor: heads[0].clone(),
            };
            (vec![start], from)
        };
        hub.resume_ids_above(from);
        let (reads, queue) = tokio::sync::mpsc::channel(merge::QUEUE);
        let ensures = crate::sync::lock(&self.ensures)
            .take()
            .expect("the readers start once");
        let merge = Merge::new(
            self.parts.clone(),
            starts,
            hub,
            from,
            self.needs.clone(),
            reads,
        );
        Ok(tokio::spawn(merge.run(queue, ensures)))
    }

    /// Where a split stream's merge starts: each partition's watermark
    /// now, and the lowest of their floors, which every entry to come is
    /// above (the entries already there above it are held, to publish).
    async fn split_start(&self, heads: &[String]) -> Result<(Vec<Start>, EventId), ClusterError> {
        for r in join_all(self.parts.iter().map(|p| p.ensure_mark())).await {
            r?;
        }
        let marks = join_all(
            self.parts
                .iter()
                .zip(heads)
                .map(|(p, head)| p.watermark(head, 0, RANGE_PAGE)),
        )
        .await;
        let marks = marks.into_iter().collect::<Result<Vec<_>, _>>()?;
        let from = marks.iter().map(|w| w.floor).min().unwrap_or_default();
        let starts = marks
            .into_iter()
            .zip(heads)
            .map(|(w, head)| Start {
                held: w.entries.into_iter().filter(|e| e.0 > from).collect(),
                floor: w.floor,
                cursor: w.cursor.unwrap_or_else(|| head.clone()),
            })
            .collect();
        Ok((starts, from))
    }
}
