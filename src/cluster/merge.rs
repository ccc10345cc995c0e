//! The one order in which every node publishes the partitions' entries:
//! the order of their event ids (see [`super::layout`]).
//!
//! Each partition's reader hands what it reads to this node's merge,
//! which publishes the lowest id it holds once no partition can still
//! bring a lower one. A partition can't once it has handed over an entry
//! above it, or once it has promised (its watermark: [`Partition::watermark`])
//! that its next entries come after that millisecond. A quiet partition is
//! asked for that promise only when an event of another one waits for it:
//! one round trip, and none while every partition is busy.
//!
//! So every node publishes the same events in the same order with the
//! same ids, whatever the partitions' readers' pace: a node's ring, a
//! `Last-Event-ID` and a forwarding checkpoint are one position in every
//! partition at once, as with a single stream. The cost: while one
//! partition's primary does not answer (a failover), nothing after its
//! last promise is published on any node, until it answers again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::layout::Layout;
use super::partition::Partition;
use crate::event::{EventDraft, EventId};
use crate::hub::Hub;

/// What a partition's reader read, in stream order.
#[derive(Debug)]
pub(super) struct Read {
    /// Whose.
    pub partition: usize,
    /// The entries that decoded.
    pub entries: Vec<(EventId, EventDraft)>,
}

/// Reads that may wait for the merge before the readers wait too.
pub(super) const QUEUE: usize = 64;
/// Most entries one watermark brings along.
const WATERMARK_ENTRIES: usize = 1000;
/// Between two watermark attempts when a partition did not answer.
const RETRY: Duration = Duration::from_millis(100);

/// Where one partition stands in the merge.
#[derive(Debug)]
struct Lane {
    /// Read, not yet published, in id order.
    held: VecDeque<(EventId, EventDraft)>,
    /// Every entry of the partition not yet held is above this.
    floor: EventId,
    /// The newest id held or published (a reread is not held twice).
    seen: EventId,
    /// The stream id after which a watermark reads.
    cursor: String,
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

/// One node's merge of the partitions.
pub(super) struct Merge {
    parts: Vec<Arc<Partition>>,
    layout: Layout,
    lanes: Vec<Lane>,
    hub: Arc<Hub>,
    /// The last id published.
    published: EventId,
}

enum Next {
    /// Nothing held.
    Idle,
    /// The lowest id held waits on these partitions' promises.
    Waits(EventId, Vec<usize>),
}

impl Merge {
    /// A merge of `parts` from `starts`, publishing into `hub` above
    /// `published`.
    pub(super) fn new(
        parts: Vec<Arc<Partition>>,
        starts: Vec<Start>,
        hub: Arc<Hub>,
        published: EventId,
    ) -> Self {
        let layout = parts[0].layout();
        let lanes = starts
            .into_iter()
            .map(|s| Lane {
                seen: s.held.last().map_or(published, |e| e.0),
                held: s.held.into(),
                floor: s.floor,
                cursor: s.cursor,
            })
            .collect();
        Self {
            parts,
            layout,
            lanes,
            hub,
            published,
        }
    }

    /// Runs until every reader is gone.
    pub(super) async fn run(mut self, mut reads: mpsc::Receiver<Read>) {
        loop {
            match self.publish_ready() {
                Next::Idle => match reads.recv().await {
                    Some(r) => self.hold(r.partition, r.entries),
                    None => return,
                },
                Next::Waits(lowest, quiet) => self.ask(lowest, &quiet).await,
            }
            while let Ok(r) = reads.try_recv() {
                self.hold(r.partition, r.entries);
            }
        }
    }

    fn hold(&mut self, p: usize, entries: Vec<(EventId, EventDraft)>) {
        let layout = self.layout;
        let lane = &mut self.lanes[p];
        for (id, draft) in entries {
            if id <= lane.seen {
                continue; // read again (a watermark brought it first)
            }
            lane.seen = id;
            lane.floor = lane.floor.max(id);
            lane.cursor = layout.stream_id(id);
            lane.held.push_back((id, draft));
        }
    }

    /// Publishes every held entry that no partition can still precede.
    fn publish_ready(&mut self) -> Next {
        loop {
            let Some((p, lowest)) = self
                .lanes
                .iter()
                .enumerate()
                .filter_map(|(p, l)| l.held.front().map(|e| (p, e.0)))
                .min_by_key(|&(_, id)| id)
            else {
                return Next::Idle;
            };
            let quiet: Vec<usize> = self
                .lanes
                .iter()
                .enumerate()
                .filter(|(q, l)| *q != p && l.held.is_empty() && l.floor < lowest)
                .map(|(q, _)| q)
                .collect();
            if !quiet.is_empty() {
                return Next::Waits(lowest, quiet);
            }
            let (id, draft) = self.lanes[p].held.pop_front().expect("the lowest is held");
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

    /// Asks the `quiet` partitions for their watermark at `lowest`'s
    /// millisecond.
    async fn ask(&mut self, lowest: EventId, quiet: &[usize]) {
        let asked = quiet.iter().map(|&q| {
            let part = self.parts[q].clone();
            let cursor = self.lanes[q].cursor.clone();
            async move {
                part.watermark(&cursor, lowest.unix_ms(), WATERMARK_ENTRIES)
                    .await
            }
        });
        let answers = futures_util::future::join_all(asked).await;
        let mut failed = false;
        for (&q, answer) in quiet.iter().zip(answers) {
            match answer {
                Ok(w) => {
                    self.hold(q, w.entries);
                    let lane = &mut self.lanes[q];
                    lane.floor = lane.floor.max(w.floor);
                    if let Some(c) = w.cursor {
                        lane.cursor = c;
                    }
                }
                Err(e) => {
                    tracing::debug!(partition = q, error = %e, "a partition's watermark could not be read");
                    failed = true;
                }
            }
        }
        if failed {
            tokio::time::sleep(RETRY).await;
        }
    }
}
