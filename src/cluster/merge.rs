//! The one order in which every node publishes the partitions' entries:
//! the order of their event ids (see [`super::layout`]).
//!
//! Each partition's reader hands what it reads to this node's merge,
//! which publishes the lowest id it holds once no partition can still
//! bring a lower one. A partition can't once it has handed over an entry
//! above it, or once it has promised ([`Partition::promise`]) that its
//! next entries come after that millisecond: its primary's clock has
//! passed it, and `*` ids follow that clock. A quiet partition is asked
//! only when an event of another one waits for it: one read-only round
//! trip, plus the wait for its clock to reach the next millisecond (up to
//! 1 ms here, the skew between primaries elsewhere; past 10 ms the
//! partition's mark is raised instead, which the append script keeps
//! above). None while every partition is busy.
//!
//! A node reads only the partitions its streams and destinations need
//! ([`super::needs`]): at start every one, then a partition nobody needs
//! is dropped after a linger, and one that becomes needed joins at a
//! point `J` that nothing of the partitions read can still come below.
//! It is read from after `J` (its mark raised past `J` if its clock is
//! behind), and the hub's ring forgets what it held: it vouches for
//! nothing up to `J`, so a resume from before reads the stream, which
//! holds every partition.
//!
//! So every node publishes the same events in the same order with the
//! same ids, whatever the partitions' readers' pace: a node's ring, a
//! `Last-Event-ID` and a forwarding checkpoint are one position in every
//! partition at once, as with a single stream. The cost: while one
//! partition's primary does not answer (a failover), nothing after its
//! last promise is published on any node, until it answers again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::layout::Layout;
use super::needs::{Ensure, Needs, LINGER};
use super::partition::{Partition, Promise, Read, Watermark};
use super::ClusterError;
use crate::event::{EventDraft, EventId};
use crate::hub::Hub;

/// Reads that may wait for the merge before the readers wait too.
pub(super) const QUEUE: usize = 64;
/// Most entries one watermark brings along.
const WATERMARK_ENTRIES: usize = 1000;
/// Between two watermark attempts when a partition did not answer.
const RETRY: Duration = Duration::from_millis(100);
/// How long the merge lets a partition's reader bring the entries its
/// promise counted before it reads them itself.
const PROMISE_WAIT: Duration = Duration::from_millis(500);
/// How far behind a quiet partition's clock may be before the merge
/// raises its mark rather than wait for it.
const MOST_CLOCK_WAIT_MS: u64 = 10;

/// A promise whose entries the reader has not brought yet.
#[derive(Debug)]
struct Pending {
    /// The newest entry then.
    through: EventId,
    /// The floor once it is held.
    floor: EventId,
    /// When the merge reads them itself.
    until: Instant,
}

/// Where one partition stands in the merge.
#[derive(Debug)]
struct Lane {
    /// Read, not yet published, in id order.
    held: VecDeque<(EventId, EventDraft)>,
    /// Every entry of the partition not yet held is above this.
    floor: EventId,
    /// The newest id held or published (a reread is not held twice).
    seen: EventId,
    /// The stream id after which a watermark reads, as last set (at the
    /// start, the join, or by a watermark's reply)...
    cursor: String,
    /// ...unless entries held since are past it: then after `seen`
    /// (formatted only when a watermark reads, not per entry).
    cursor_passed: bool,
    /// A promise waiting for its entries.
    pending: Option<Pending>,
    /// The millisecond to raise its mark to at the next ask (0: none).
    push_ms: u64,
}

/// A partition's place at the start of the merge.
#[derive(Debug)]
pub(super) struct Start {
    /// Entries already read, above the start, in id order.
    pub held: Vec<(EventId, EventDraft)>,
    /// Every entry not in `held` is above this.
    pub floor: EventId,
    /// The stream id its reader and watermarks go on after.
    pub cursor: String,
}

/// How often the merge looks for partitions nobody needs.
const NEEDS_EVERY: Duration = Duration::from_secs(1);

/// One node's merge of the partitions.
pub(super) struct Merge {
    parts: Vec<Arc<Partition>>,
    layout: Layout,
    /// The partitions read (`None`: not read now).
    lanes: Vec<Option<Lane>>,
    /// Their readers.
    readers: Vec<Option<tokio::task::JoinHandle<()>>>,
    /// Since when nothing has needed each (a split stream's only).
    unneeded_since: Vec<Option<Instant>>,
    /// What needs which partition (`None`: one partition, always read).
    needs: Option<Arc<Needs>>,
    /// Where the readers send what they read.
    reads_to: mpsc::Sender<Read>,
    hub: Arc<Hub>,
    /// The last id published, or the point the partitions read were
    /// (re)joined at.
    published: EventId,
    /// When the needs were last looked at.
    looked: Instant,
}

enum Next {
    /// Nothing held.
    Idle,
    /// The lowest id held waits on these partitions' promises.
    Waits(EventId, Vec<usize>),
}

impl Merge {
    /// A merge of `parts` from `starts` (every partition read), publishing
    /// into `hub` above `published`; with `needs`, partitions nobody needs
    /// are dropped, and needed ones joined.
    pub(super) fn new(
        parts: Vec<Arc<Partition>>,
        starts: Vec<Start>,
        hub: Arc<Hub>,
        published: EventId,
        needs: Option<Arc<Needs>>,
        reads_to: mpsc::Sender<Read>,
    ) -> Self {
        let layout = parts[0].layout();
        let readers = parts
            .iter()
            .zip(&starts)
            .map(|(p, s)| {
                Some(p.start_reader(hub.clone(), reads_to.clone(), s.cursor.clone(), true))
            })
            .collect();
        let lanes = starts
            .into_iter()
            .map(|s| {
                Some(Lane {
                    seen: s.held.last().map_or(published, |e| e.0),
                    held: s.held.into(),
                    floor: s.floor,
                    cursor: s.cursor,
                    cursor_passed: false,
                    pending: None,
                    push_ms: 0,
                })
            })
            .collect();
        Self {
            unneeded_since: vec![None; parts.len()],
            parts,
            layout,
            lanes,
            readers,
            needs,
            reads_to,
            hub,
            published,
            looked: Instant::now(),
        }
    }

    /// Runs until the node stops.
    pub(super) async fn run(
        mut self,
        mut reads: mpsc::Receiver<Read>,
        mut ensures: mpsc::UnboundedReceiver<Ensure>,
    ) {
        loop {
            while let Ok(e) = ensures.try_recv() {
                self.ensure(e).await;
            }
            self.drop_unneeded();
            match self.publish_ready() {
                Next::Idle => tokio::select! {
                    r = reads.recv() => match r {
                        Some(r) => self.hold(r.partition, r.entries),
                        None => return,
                    },
                    Some(e) = ensures.recv() => self.ensure(e).await,
                    () = tokio::time::sleep(NEEDS_EVERY) => {}
                },
                Next::Waits(lowest, quiet) => {
                    if !self.wait_for(lowest, &quiet, &mut reads).await {
                        return;
                    }
                }
            }
            while let Ok(r) = reads.try_recv() {
                self.hold(r.partition, r.entries);
            }
        }
    }

    /// The lane of a partition read.
    fn lane(&mut self, p: usize) -> &mut Lane {
        self.lanes[p].as_mut().expect("a partition read")
    }

    /// Reads `e`'s partitions (joining those not read), then says so; a
    /// join that Redis does not answer is tried again.
    async fn ensure(&mut self, e: Ensure) {
        for &p in &e.partitions {
            self.unneeded_since[p] = None;
        }
        while let Err(err) = self.join(&e.partitions).await {
            tracing::debug!(error = %err, "partitions could not be joined yet");
            tokio::time::sleep(RETRY).await;
        }
        let _ = e.done.send(());
    }

    /// Starts reading `wanted`'s partitions not read yet, at a point `J`
    /// that nothing of the partitions read can still come below (every
    /// entry held is above it, and every one not held is above its
    /// lane's floor): so nothing at or below `J` is published from now on.
    async fn join(&mut self, wanted: &[usize]) -> Result<(), ClusterError> {
        let joining: Vec<usize> = wanted
            .iter()
            .copied()
            .filter(|&q| self.lanes[q].is_none())
            .collect();
        if joining.is_empty() {
            return Ok(());
        }
        let read: Vec<usize> = (0..self.lanes.len())
            .filter(|&p| self.lanes[p].is_some())
            .collect();
        let at = if read.is_empty() {
            // Nothing read: from the joining partitions' newest entries.
            let promised = futures_util::future::try_join_all(
                joining.iter().map(|&q| self.parts[q].promise(0)),
            )
            .await?;
            promised
                .iter()
                .map(|p| p.newest.unwrap_or_default().max(p.floor))
                .fold(self.published, EventId::max)
        } else {
            // Fresh promises of the quiet ones, so that `J` is now.
            let quiet: Vec<usize> = read
                .iter()
                .copied()
                .filter(|&p| self.lanes[p].as_ref().is_some_and(|l| l.held.is_empty()))
                .collect();
            let promised =
                futures_util::future::try_join_all(quiet.iter().map(|&p| self.parts[p].promise(0)))
                    .await?;
            for (&p, promise) in quiet.iter().zip(promised) {
                let lane = self.lane(p);
                if promise.newest.is_none_or(|n| n <= lane.seen) {
                    lane.floor = lane.floor.max(promise.floor);
                }
            }
            read.iter()
                .map(|&p| {
                    let lane = self.lanes[p].as_ref().expect("read");
                    lane.held.front().map_or(lane.floor, |e| {
                        EventId::from_u64(e.0.as_u64().saturating_sub(1))
                    })
                })
                .min()
                .unwrap_or(self.published)
                .max(self.published)
        };
        // Every entry of theirs to come is above `J`'s millisecond.
        futures_util::future::try_join_all(
            joining.iter().map(|&q| self.parts[q].promise(at.unix_ms())),
        )
        .await?;
        for &q in &joining {
            let cursor = self.layout.after_in(q, at);
            self.readers[q] = Some(self.parts[q].start_reader(
                self.hub.clone(),
                self.reads_to.clone(),
                cursor.clone(),
                false,
            ));
            self.lanes[q] = Some(Lane {
                held: VecDeque::new(),
                floor: at,
                seen: at,
                cursor,
                cursor_passed: false,
                pending: None,
                push_ms: 0,
            });
        }
        self.published = at;
        self.hub.rejoin_above(at);
        tracing::info!(partitions = ?joining, at = %at, "this node now reads more partitions");
        Ok(())
    }

    /// Stops reading the partitions nothing has needed for [`LINGER`].
    fn drop_unneeded(&mut self) {
        let Some(needs) = self.needs.clone() else {
            return;
        };
        let now = Instant::now();
        if now.duration_since(self.looked) < NEEDS_EVERY {
            return;
        }
        self.looked = now;
        for p in 0..self.lanes.len() {
            if self.lanes[p].is_none() || needs.is_needed(p) {
                self.unneeded_since[p] = None;
                continue;
            }
            let since = *self.unneeded_since[p].get_or_insert(now);
            if now.duration_since(since) >= LINGER {
                if let Some(r) = self.readers[p].take() {
                    r.abort();
                }
                self.lanes[p] = None;
                self.unneeded_since[p] = None;
                tracing::debug!(
                    partition = p,
                    "no stream or destination of this node needs this partition: no longer read"
                );
            }
        }
    }

    fn hold(&mut self, p: usize, entries: Vec<(EventId, EventDraft)>) {
        let Some(lane) = self.lanes[p].as_mut() else {
            return; // a partition no longer read
        };
        for (id, draft) in entries {
            if id <= lane.seen {
                continue; // read again (a watermark brought it first)
            }
            lane.seen = id;
            lane.floor = lane.floor.max(id);
            lane.cursor_passed = true;
            lane.held.push_back((id, draft));
        }
        if let Some(p) = lane.pending.take_if(|p| lane.seen >= p.through) {
            lane.floor = lane.floor.max(p.floor);
        }
    }

    /// Publishes every held entry that no partition can still precede.
    fn publish_ready(&mut self) -> Next {
        loop {
            let Some((p, lowest)) = self
                .lanes
                .iter()
                .enumerate()
                .filter_map(|(p, l)| l.as_ref()?.held.front().map(|e| (p, e.0)))
                .min_by_key(|&(_, id)| id)
            else {
                return Next::Idle;
            };
            let quiet: Vec<usize> = self
                .lanes
                .iter()
                .enumerate()
                .filter_map(|(q, l)| Some((q, l.as_ref()?)))
                .filter(|(q, l)| *q != p && l.held.is_empty() && l.floor < lowest)
                .map(|(q, _)| q)
                .collect();
            if !quiet.is_empty() {
                return Next::Waits(lowest, quiet);
            }
            let (id, draft) = self.lane(p).held.pop_front().expect("the lowest is held");
            if id <= self.published {
                // A partition broke its promise (its mark was lost with an
                // emptied Redis, or in a failover before it reached the
                // replica): this entry can no longer be published in order.
                tracing::warn!(partition = p, id = %id, "a partition's entry came after later ones were published: live subscribers are told of a gap");
                self.hub.history_lost();
                continue;
            }
            self.published = id;
            self.hub.publish_at(id, draft);
        }
    }

    /// Waits until the `quiet` partitions can no longer bring an entry
    /// below `lowest`, or for the next read: asks those that have not
    /// promised, lets the readers bring what was promised, and waits for
    /// a clock that is behind. False once every reader is gone.
    async fn wait_for(
        &mut self,
        lowest: EventId,
        quiet: &[usize],
        reads: &mut mpsc::Receiver<Read>,
    ) -> bool {
        let now = Instant::now();
        let ask: Vec<usize> = quiet
            .iter()
            .copied()
            .filter(|&q| {
                self.lanes[q]
                    .as_ref()
                    .and_then(|l| l.pending.as_ref())
                    .is_none_or(|p| now >= p.until)
            })
            .collect();
        if ask.is_empty() {
            // Every one promised: its reader brings the rest.
            let until = quiet
                .iter()
                .filter_map(|&q| self.lanes[q].as_ref()?.pending.as_ref().map(|p| p.until))
                .min()
                .unwrap_or(now);
            return match tokio::time::timeout_at(until.into(), reads.recv()).await {
                Ok(Some(r)) => {
                    self.hold(r.partition, r.entries);
                    true
                }
                Ok(None) => false,
                Err(_) => true, // read them ourselves, next
            };
        }
        let asked = ask.iter().map(|&q| {
            let lane = self.lanes[q].as_mut().expect("a partition read");
            let cursor = if lane.cursor_passed {
                self.layout.stream_id(lane.seen)
            } else {
                lane.cursor.clone()
            };
            let (part, push) = (self.parts[q].clone(), std::mem::take(&mut lane.push_ms));
            // A promise whose entries did not come: read them.
            let read = lane.pending.take().is_some();
            async move {
                if read {
                    part.watermark(&cursor, push, WATERMARK_ENTRIES)
                        .await
                        .map(Answer::Read)
                } else {
                    part.promise(push).await.map(Answer::Promised)
                }
            }
        });
        let answers = futures_util::future::join_all(asked.collect::<Vec<_>>()).await;
        let (mut failed, mut clock_wait) = (false, 0);
        for (&q, answer) in ask.iter().zip(answers) {
            let clock_ms = match answer {
                Ok(Answer::Read(w)) => {
                    self.hold(q, w.entries);
                    let lane = self.lane(q);
                    lane.floor = lane.floor.max(w.floor);
                    if let Some(c) = w.cursor {
                        lane.cursor = c;
                        lane.cursor_passed = false;
                    }
                    w.clock_ms
                }
                Ok(Answer::Promised(p)) => {
                    let lane = self.lane(q);
                    match p.newest.filter(|n| *n > lane.seen) {
                        Some(through) => {
                            lane.pending = Some(Pending {
                                through,
                                floor: p.floor,
                                until: Instant::now() + PROMISE_WAIT,
                            });
                        }
                        None => lane.floor = lane.floor.max(p.floor),
                    }
                    p.clock_ms
                }
                Err(e) => {
                    tracing::debug!(partition = q, error = %e, "a partition's promise could not be read");
                    failed = true;
                    continue;
                }
            };
            let lane = self.lane(q);
            if lane.held.is_empty() && lane.pending.is_none() && lane.floor < lowest {
                // Its clock has not reached the next millisecond yet.
                let behind = (lowest.unix_ms() + 1).saturating_sub(clock_ms);
                if behind > MOST_CLOCK_WAIT_MS {
                    lane.push_ms = lowest.unix_ms();
                } else {
                    clock_wait = clock_wait.max(behind);
                }
            }
        }
        if failed {
            tokio::time::sleep(RETRY).await;
        } else if clock_wait > 0 {
            tokio::time::sleep(Duration::from_millis(clock_wait)).await;
        }
        true
    }
}

/// What a quiet partition answered.
enum Answer {
    Promised(Promise),
    Read(Watermark),
}
