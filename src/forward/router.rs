//! The hub's tap and the router task: events in id order, matched against
//! the registrations' snapshot, pushed to the destinations that want them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::destination::Destination;
use super::destinations::Destinations;
use super::metrics::ForwardMetrics;
use crate::event::Event;
use crate::hub::{Published, Tap};

/// Answers "which destinations want this event". The registry implements
/// it over an immutable snapshot: matching takes no lock, so a slow match
/// (a CEL-heavy filter on the low-priority forwarding thread) never holds
/// up a registration change.
pub trait Matcher: Send + Sync + 'static {
    /// Whether no registration could match anything (the tap then skips
    /// forwarding altogether).
    fn is_empty(&self) -> bool;

    /// Appends to `out` each destination with a live registration that
    /// matches `event`, once per destination.
    fn matching(&self, event: &Event, out: &mut Vec<Arc<Destination>>);

    /// Whether a live registration naming `d` matches `event` (evaluating
    /// only those).
    fn wants(&self, event: &Event, d: &Destination) -> bool;

    /// Since when `d` has been wanted: the earliest last change of a live
    /// registration naming it (cluster: where a takeover with no
    /// checkpoint replays from, so a new destination misses nothing that
    /// came before a node took its lease).
    fn wanted_since(&self, d: &Destination) -> Option<chrono::DateTime<chrono::Utc>>;
}

/// How much the inbox between the hub and the router may hold.
#[derive(Debug, Clone, Copy)]
pub struct InboxLimits {
    /// Events.
    pub events: usize,
    /// Bytes ([`Published::weight`]).
    pub bytes: usize,
}

/// The hub's tap: offers every event to the router, in id order.
pub struct Forwarding {
    inbox: mpsc::Sender<Arc<Published>>,
    limits: InboxLimits,
    /// Weight of the events in the inbox now.
    held: Arc<AtomicUsize>,
    matcher: Arc<dyn Matcher>,
    destinations: Arc<Destinations>,
    metrics: Arc<ForwardMetrics>,
    /// The forwarding runtime (low priority), where filters run.
    runtime: tokio::runtime::Handle,
    /// The newest event the router has finished routing.
    routed: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Forwarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarding")
            .field("limits", &self.limits)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl Forwarding {
    /// Starts the router task on `runtime`.
    pub fn start(
        matcher: Arc<dyn Matcher>,
        destinations: Arc<Destinations>,
        metrics: Arc<ForwardMetrics>,
        limits: InboxLimits,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<Arc<Published>>(limits.events.max(1));
        let held = Arc::new(AtomicUsize::new(0));
        let routed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (m, d, h, r, supervisor) = (
            matcher.clone(),
            destinations.clone(),
            held.clone(),
            routed.clone(),
            metrics.clone(),
        );
        runtime.spawn(async move {
            let mut wanted = Vec::new();
            while let Some(p) = rx.recv().await {
                // A panic while routing one event must not stop forwarding
                // for good: that event is skipped, counted and logged, and
                // the router goes on with the next.
                let routed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    wanted.clear();
                    m.matching(&p.event, &mut wanted);
                    for dest in &wanted {
                        d.push(dest, &p);
                    }
                }));
                h.fetch_sub(p.weight(), Ordering::AcqRel);
                r.fetch_max(p.event.id.as_u64(), Ordering::AcqRel);
                if routed.is_err() {
                    supervisor.router_panicked();
                    tracing::error!(event = %p.event.id, "the forwarding router failed on an event and skipped it");
                }
            }
        });
        Arc::new(Self {
            inbox: tx,
            limits,
            held,
            matcher,
            destinations,
            metrics,
            runtime: runtime.clone(),
            routed,
        })
    }

    /// Cluster takeover: offers `events` (older ones, from the shared
    /// stream) to `only`, where its registrations match them. They join
    /// its buffer like live ones; a buffer that fills drops and notifies.
    /// The filters run on the forwarding runtime, as live routing does, so
    /// a costly one never holds up the API's threads.
    pub async fn replay_to(&self, only: Arc<Destination>, events: Vec<Arc<Published>>) -> usize {
        let wanted = self.matching_for(only.clone(), events).await;
        for p in &wanted {
            self.destinations.push_replayed(&only, p);
        }
        wanted.len()
    }

    /// The events of `events` that `only`'s registrations match (a
    /// replay's), matched on the forwarding runtime.
    pub async fn matching_for(
        &self,
        only: Arc<Destination>,
        events: Vec<Arc<Published>>,
    ) -> Vec<Arc<Published>> {
        let matcher = self.matcher.clone();
        self.runtime
            .spawn(async move {
                events
                    .into_iter()
                    .filter(|p| matcher.wants(&p.event, &only))
                    .collect()
            })
            .await
            .unwrap_or_default()
    }

    /// Since when `d` has been wanted (see [`Matcher::wanted_since`]).
    pub fn wanted_since(&self, d: &Destination) -> Option<chrono::DateTime<chrono::Utc>> {
        self.matcher.wanted_since(d)
    }

    /// How far `d` is finished, if this node forwards to it, for the
    /// cluster's checkpoints (see [`super::Outbox::checkpoint`]).
    pub fn checkpoint(&self, d: &Destination) -> Option<crate::event::EventId> {
        let routed = crate::event::EventId::from_u64(self.routed.load(Ordering::Acquire));
        self.destinations.checkpoint(d, routed)
    }

    /// The live destinations (statistics, gauges).
    pub fn destinations(&self) -> &Arc<Destinations> {
        &self.destinations
    }

    /// On shutdown (no more events come in): waits for the router to empty
    /// its inbox, then for the destinations to deliver what they hold, all
    /// within `grace`. Returns how many events were abandoned.
    pub async fn drain(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        let capacity = self.inbox.max_capacity();
        while self.inbox.capacity() < capacity && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let unrouted = capacity - self.inbox.capacity();
        if unrouted > 0 {
            tracing::warn!(
                events = unrouted,
                "shutdown: events not yet routed were abandoned"
            );
        }
        unrouted + self.destinations.drain(deadline).await
    }
}

impl Tap for Forwarding {
    fn offer(&self, event: &Arc<Published>) {
        // In a cluster, a node that holds no destination's lease routes
        // nothing.
        if self.matcher.is_empty() || !self.destinations.any_owned() {
            return;
        }
        let weight = event.weight();
        let before = self.held.fetch_add(weight, Ordering::AcqRel);
        // An event is always taken into an empty inbox, whatever its size.
        if before > 0 && before + weight > self.limits.bytes {
            self.held.fetch_sub(weight, Ordering::AcqRel);
            self.metrics.inbox_dropped();
            return;
        }
        if self.inbox.try_send(event.clone()).is_err() {
            self.held.fetch_sub(weight, Ordering::AcqRel);
            self.metrics.inbox_dropped();
        }
    }
}
