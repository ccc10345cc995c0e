//! The live destinations: one outbox, one worker and one sink per distinct
//! destination, however many registrations name it.
//!
//! The set follows the registry: [`Destinations::reconcile`] is given every
//! destination live registrations name, starts what is new and closes what
//! is gone. The router reads the set from an immutable snapshot, so
//! routing an event takes no lock that a registration change waits on.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::delivery::{notify, work, DeliveryContext, Notice};
use super::destination::Destination;
use super::outbox::{Outbox, Pushed};
use super::sink::SharedSink;
use crate::hub::Published;
use crate::sync::lock;

/// One live destination.
#[derive(Debug)]
struct Entry {
    outbox: Arc<Outbox>,
    sink: SharedSink,
    /// Live events after this id go to the outbox; [`NOT_OWNED`]: none do
    /// (in a cluster, another node forwards to this destination).
    owned_after: AtomicU64,
}

/// An [`Entry::owned_after`] that takes no event.
const NOT_OWNED: u64 = u64::MAX;

type Pool = HashMap<Destination, Arc<Entry>>;

/// Forwarding figures for the dashboard.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ForwardTotals {
    /// Live destinations.
    pub destinations: usize,
    /// Events delivered.
    pub delivered: u64,
    /// Events given up on.
    pub failed: u64,
    /// Events dropped on full buffers.
    pub dropped: u64,
    /// Events waiting now.
    pub queued: u64,
    /// Events being delivered now (retries included).
    pub in_flight: u64,
}

/// Every live destination.
#[derive(Debug)]
pub struct Destinations {
    ctx: Arc<DeliveryContext>,
    pool: ArcSwap<Pool>,
    /// Serialises reconciliations (each builds the next pool from the last).
    changes: Mutex<()>,
    /// Whether destinations are shared with other nodes (a cluster): then
    /// each starts not owned, and this node forwards only to those it
    /// takes ([`Destinations::take`]).
    shared: bool,
    /// How many live destinations this node owns.
    owned: AtomicUsize,
}

impl Destinations {
    /// No destinations yet. `shared`: in a cluster, where each destination
    /// is forwarded by the node holding its lease.
    pub fn new(ctx: Arc<DeliveryContext>, shared: bool) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            pool: ArcSwap::default(),
            changes: Mutex::default(),
            shared,
            owned: AtomicUsize::new(0),
        })
    }

    /// Makes the live set exactly `live`: starts a worker for each new
    /// destination, closes the outbox of each one no longer named (its
    /// queue is discarded: nobody wants those events any more), and stops
    /// exporting series for labels that no live destination has.
    pub fn reconcile<'a>(&self, live: impl IntoIterator<Item = &'a Destination>) {
        let _one_at_a_time = lock(&self.changes);
        let old = self.pool.load_full();
        let mut next = Pool::with_capacity(old.len());
        for d in live {
            if next.contains_key(d) {
                continue;
            }
            let entry = match old.get(d) {
                Some(e) => e.clone(),
                None => self.start(d),
            };
            next.insert(d.clone(), entry);
        }
        let gone: Vec<&Arc<Entry>> = old
            .iter()
            .filter(|(d, _)| !next.contains_key(*d))
            .map(|(_, e)| e)
            .collect();
        if gone.is_empty() && next.len() == old.len() {
            return;
        }
        let labels: HashSet<&str> = next.values().map(|e| e.outbox.label.as_str()).collect();
        for e in &gone {
            self.disown(e);
            e.outbox.close();
            if !labels.contains(e.outbox.label.as_str()) {
                self.ctx.metrics.destination_removed(&e.outbox.label);
            }
        }
        self.pool.store(Arc::new(next));
    }

    fn start(&self, d: &Destination) -> Arc<Entry> {
        let label = d.label();
        let outbox = Arc::new(Outbox::new(
            Arc::new(d.clone()),
            self.ctx.settings.buffer,
            self.ctx.settings.notice_interval,
            self.ctx.metrics.destination(&label),
        ));
        let sink = SharedSink::default();
        self.ctx
            .runtime
            .spawn(work(outbox.clone(), self.ctx.clone(), sink.clone()));
        let owned_after = if self.shared { NOT_OWNED } else { 0 };
        if !self.shared {
            self.owned.fetch_add(1, Ordering::AcqRel);
        }
        Arc::new(Entry {
            outbox,
            sink,
            owned_after: AtomicU64::new(owned_after),
        })
    }

    /// Whether this node forwards to any destination (the tap skips
    /// routing altogether when it does not).
    pub fn any_owned(&self) -> bool {
        self.owned.load(Ordering::Acquire) > 0
    }

    /// Starts forwarding to `d` the live events after `after` (cluster: its
    /// lease was just taken; the caller replays the older ones, then calls
    /// [`Destinations::caught_up`]: until then its deliveries are held, so
    /// that no live event goes before an older one). False if `d` is not
    /// live.
    pub fn take(&self, d: &Destination, after: crate::event::EventId) -> bool {
        let pool = self.pool.load();
        let Some(entry) = pool.get(d) else {
            return false;
        };
        entry.outbox.hold();
        if entry.owned_after.swap(after.as_u64(), Ordering::AcqRel) == NOT_OWNED {
            self.owned.fetch_add(1, Ordering::AcqRel);
        }
        true
    }

    /// The older events of a [`Destinations::take`] are queued: `d`'s
    /// deliveries go on, in id order.
    pub fn caught_up(&self, d: &Destination) {
        if let Some(entry) = self.pool.load().get(d) {
            entry.outbox.release_in_order();
        }
    }

    /// Stops forwarding live events to `d` (its lease went to another
    /// node). What its outbox holds is still delivered.
    pub fn release(&self, d: &Destination) {
        if let Some(entry) = self.pool.load().get(d) {
            self.disown(entry);
        }
    }

    /// Marks `entry` not owned, counting it out if it was.
    fn disown(&self, entry: &Entry) {
        if entry.owned_after.swap(NOT_OWNED, Ordering::AcqRel) != NOT_OWNED {
            self.owned.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Offers `p` to `d`'s outbox, if this node forwards to `d` and `p` is
    /// after the point it took `d` from; a full one drops its oldest and,
    /// at most once per notice interval, tells the destination. Never
    /// waits.
    pub fn push(&self, d: &Destination, p: &Arc<Published>) {
        self.offer(d, p, false);
    }

    /// As [`Destinations::push`], for an event older than that point (a
    /// takeover's replay from the checkpoint).
    pub fn push_replayed(&self, d: &Destination, p: &Arc<Published>) {
        self.offer(d, p, true);
    }

    fn offer(&self, d: &Destination, p: &Arc<Published>, replayed: bool) {
        let pool = self.pool.load();
        let Some(entry) = pool.get(d) else {
            return;
        };
        let after = entry.owned_after.load(Ordering::Acquire);
        if after == NOT_OWNED || (!replayed && p.event.id.as_u64() <= after) {
            return;
        }
        if let Pushed::Dropped { notice_due: true } = entry.outbox.push(p.clone()) {
            notify(
                entry.outbox.clone(),
                self.ctx.clone(),
                entry.sink.clone(),
                Notice::Dropped,
            );
        }
    }

    /// The live outbox for `d`, if any (for statistics).
    pub fn get(&self, d: &Destination) -> Option<Arc<Outbox>> {
        self.pool.load().get(d).map(|e| e.outbox.clone())
    }

    fn outboxes(&self) -> Vec<Arc<Outbox>> {
        self.pool
            .load()
            .values()
            .map(|e| e.outbox.clone())
            .collect()
    }

    /// How far `d` is finished (see [`Outbox::checkpoint`]), if this node
    /// forwards to it: for the cluster's checkpoints.
    pub fn checkpoint(
        &self,
        d: &Destination,
        routed: crate::event::EventId,
    ) -> Option<crate::event::EventId> {
        let pool = self.pool.load();
        let entry = pool.get(d)?;
        if entry.owned_after.load(Ordering::Acquire) == NOT_OWNED {
            return None;
        }
        entry.outbox.checkpoint(routed)
    }

    /// How many destinations are live.
    pub fn len(&self) -> usize {
        self.pool.load().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live destination.
    pub fn live(&self) -> Vec<Arc<Destination>> {
        self.pool
            .load()
            .values()
            .map(|e| e.outbox.destination.clone())
            .collect()
    }

    /// Delivered, failed and dropped events, summed over live destinations.
    pub fn totals(&self) -> ForwardTotals {
        let all = self.outboxes();
        let mut t = ForwardTotals {
            destinations: all.len(),
            ..Default::default()
        };
        for o in all {
            t.delivered += o.metrics.delivered.get();
            t.failed += o.metrics.failed.get();
            t.dropped += o.metrics.dropped.get();
            let (queued, in_flight) = o.unfinished();
            t.queued += queued as u64;
            t.in_flight += in_flight as u64;
        }
        t
    }

    /// On shutdown: lets the workers deliver what is queued until nothing
    /// is left or `deadline` passes, then logs and counts, per
    /// destination, what was abandoned. Returns how many events that was.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            let all = self.outboxes();
            let left: usize = all
                .iter()
                .map(|o| {
                    let (queued, in_flight) = o.unfinished();
                    queued + in_flight
                })
                .sum();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                for o in all {
                    let (queued, in_flight) = o.unfinished();
                    if queued + in_flight > 0 {
                        o.metrics.abandoned.inc_by((queued + in_flight) as u64);
                        tracing::warn!(destination = %o.label, queued, in_flight,
                            "shutdown: grace period over, events for this destination abandoned");
                    }
                }
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Refreshes every destination's sampled gauges.
    pub fn refresh_gauges(&self) {
        for o in self.outboxes() {
            o.refresh_gauges();
        }
    }
}
