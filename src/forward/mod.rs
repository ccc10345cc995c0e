//! Forwarding: events to registrations' destinations, best effort.
//!
//! ```text
//! hub ──offer (never waits)──▶ inbox ──router task──▶ Registry::route
//!        ──push (never waits)──▶ Outbox per destination ──worker──▶ webhook / SQS
//! ```
//!
//! The hub offers each event to a bounded inbox (in id order, inside its
//! publish), so forwarding adds one `try_send` to the SSE fan-out path. The
//! router task matches events against registrations and pushes them to one
//! bounded [`Outbox`] per destination; a full outbox drops the event for
//! that destination and, at most once per notice interval, tells it so.
//! Each destination's worker delivers with a concurrency limit, retries
//! with backoff and jitter, and a circuit that pauses a failing destination.

pub mod outbox;
pub mod payload;
pub mod runtime;
pub mod sqs;
pub mod ssrf;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};

pub use outbox::{Outbox, Pushed, Queued};
use ssrf::{AddressPolicy, GuardedResolver};

use crate::hub::{Published, Tap};
use crate::registry::spec::Destination;
use crate::registry::Registry;
use crate::sync::lock;
use crate::telemetry::Metrics;

/// Why a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// May succeed later (5xx, 408, 429, timeout, connection error).
    Retryable(String),
    /// Will not succeed by retrying (other 4xx, refused address).
    Permanent(String),
}

/// Delivery settings, from the configuration.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Events per destination buffer.
    pub buffer: usize,
    /// Deliveries in flight per destination.
    pub concurrency: usize,
    /// Time per attempt.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
    /// First backoff; doubles per retry, full jitter.
    pub backoff: Duration,
    /// Consecutive failures that open the circuit.
    pub circuit_failures: u32,
    /// How long the circuit stays open.
    pub circuit_pause: Duration,
    /// Least time between drop notices.
    pub notice_interval: Duration,
}

/// What every destination worker shares.
#[derive(Debug)]
pub struct DeliveryContext {
    settings: DeliverySettings,
    runtime: tokio::runtime::Handle,
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
    metrics: Arc<Metrics>,
}

impl DeliveryContext {
    /// One HTTP client (one connection pool) for every webhook, resolving
    /// only to addresses `policy` permits, never following redirects.
    /// Forwarding tasks run on `runtime` (see [`runtime::ForwardRuntime`]).
    pub fn new(
        settings: DeliverySettings,
        policy: Arc<AddressPolicy>,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, String> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("ratatoskr/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(settings.concurrency.max(1) * 2)
            .no_proxy()
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Arc::new(Self {
            settings,
            runtime,
            http,
            policy,
            metrics,
        }))
    }

    /// The address policy (for registration-time checks).
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }
}

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
}

/// Lazily opened, once per destination, shared by its worker and its
/// drop notices (an SQS transport loads an AWS configuration).
type SharedTransport = Arc<tokio::sync::OnceCell<Arc<Transport>>>;

/// One live destination.
#[derive(Debug)]
struct Entry {
    outbox: Arc<Outbox>,
    /// Registrations naming it.
    refs: usize,
    transport: SharedTransport,
}

/// Every live destination, shared by the registrations that name it.
#[derive(Debug)]
pub struct Destinations {
    ctx: Arc<DeliveryContext>,
    map: Mutex<HashMap<Destination, Entry>>,
    /// Destinations per metrics label: two destinations may share a label
    /// (same URL, different secret), and share its series until both go.
    labels: Mutex<HashMap<String, usize>>,
}

impl Destinations {
    /// No destinations yet.
    pub fn new(ctx: Arc<DeliveryContext>) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            map: Mutex::default(),
            labels: Mutex::default(),
        })
    }

    fn map(&self) -> MutexGuard<'_, HashMap<Destination, Entry>> {
        lock(&self.map)
    }

    /// The outbox for `d`, starting its worker if it is new.
    pub fn acquire(&self, d: &Destination) -> Arc<Outbox> {
        let mut map = self.map();
        if let Some(e) = map.get_mut(d) {
            e.refs += 1;
            return e.outbox.clone();
        }
        let s = &self.ctx.settings;
        *lock(&self.labels).entry(d.label()).or_default() += 1;
        let outbox = Arc::new(Outbox::new(
            d.clone(),
            s.buffer,
            s.notice_interval,
            self.ctx.metrics.destination(&d.label()),
        ));
        let transport = Arc::new(tokio::sync::OnceCell::new());
        map.insert(
            d.clone(),
            Entry {
                outbox: outbox.clone(),
                refs: 1,
                transport: transport.clone(),
            },
        );
        self.ctx
            .runtime
            .spawn(work(outbox.clone(), self.ctx.clone(), transport));
        outbox
    }

    /// One registration stopped using `d`; the last one closes it.
    pub fn release(&self, d: &Destination) {
        let mut map = self.map();
        let gone = match map.get_mut(d) {
            Some(e) if e.refs > 1 => {
                e.refs -= 1;
                None
            }
            Some(_) => map.remove(d).map(|e| e.outbox),
            None => None,
        };
        drop(map);
        if let Some(o) = gone {
            o.close();
            let mut labels = lock(&self.labels);
            let last = match labels.get_mut(&o.label) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => true,
            };
            if last {
                labels.remove(&o.label);
                self.ctx.metrics.destination_removed(&o.label);
            }
        }
    }

    /// The live outbox for `d`, if any (for statistics).
    pub fn get(&self, d: &Destination) -> Option<Arc<Outbox>> {
        self.map().get(d).map(|e| e.outbox.clone())
    }

    /// Delivered, failed and dropped events, summed over live destinations.
    pub fn totals(&self) -> ForwardTotals {
        let map = self.map();
        let mut t = ForwardTotals {
            destinations: map.len(),
            ..Default::default()
        };
        for o in map.values().map(|e| &e.outbox) {
            t.delivered += o.metrics.delivered.get();
            t.failed += o.metrics.failed.get();
            t.dropped += o.metrics.dropped.get();
            t.queued += o.depth() as u64;
        }
        t
    }

    /// On shutdown: lets the workers deliver what is queued until nothing
    /// is left or `deadline` passes, then logs and counts, per
    /// destination, what was abandoned. Returns how many events that was.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            let all: Vec<Arc<Outbox>> = self.map().values().map(|e| e.outbox.clone()).collect();
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
        let all: Vec<Arc<Outbox>> = self.map().values().map(|e| e.outbox.clone()).collect();
        for o in all {
            o.refresh_gauges();
        }
    }

    /// Sends a drop notice to the outbox's destination, in the background.
    pub fn notify_dropped(&self, outbox: &Arc<Outbox>) {
        let transport = self
            .map()
            .get(&outbox.destination)
            .map(|e| e.transport.clone())
            .unwrap_or_default();
        let (outbox, ctx) = (outbox.clone(), self.ctx.clone());
        self.ctx.runtime.clone().spawn(async move {
            let dropped = outbox.take_dropped_since_notice();
            let notice = serde_json::json!({
                "type": "ratatoskr.dropped",
                "text": "This destination is not keeping up: its buffer is full and events for it are being dropped. Add capacity or ask for fewer events.",
                "destination": outbox.label,
                "dropped": dropped,
                "dropped_total": outbox.metrics.dropped.get(),
                "queue_size": ctx.settings.buffer,
                "at": chrono::Utc::now().to_rfc3339(),
            });
            let text = notice.to_string();
            let transport = transport
                .get_or_init(|| async { Arc::new(Transport::open(&outbox.destination, &ctx).await) })
                .await;
            let result = match &**transport {
                Transport::Http(t) => {
                    let id = format!("notice_{}", uuid::Uuid::new_v4().simple());
                    t.notice(&id, Bytes::from(text)).await
                }
                Transport::Sqs(t) => t.notice(text).await,
            };
            match result {
                Ok(()) => ctx.metrics.notice_sent(),
                Err(e) => {
                    tracing::warn!(destination = %outbox.label, error = ?e, "drop notice not delivered")
                }
            }
        });
    }
}

#[derive(Debug)]
enum Transport {
    Http(Box<webhook::WebhookTransport>),
    Sqs(sqs::SqsTransport),
}

impl Transport {
    async fn open(d: &Destination, ctx: &DeliveryContext) -> Self {
        match d {
            Destination::Http(h) => Self::Http(Box::new(webhook::WebhookTransport::new(
                h.clone(),
                ctx.http.clone(),
                &ctx.policy,
                ctx.settings.timeout,
            ))),
            Destination::Sqs(s) => Self::Sqs(sqs::SqsTransport::new(s, ctx.settings.timeout).await),
        }
    }

    fn batch_max(&self) -> usize {
        match self {
            Self::Http(_) => 1,
            Self::Sqs(_) => sqs::BATCH_MAX,
        }
    }

    /// One attempt. `Ok(n)`: sent, with `n` entries refused individually.
    async fn attempt(&self, batch: &[Queued]) -> Result<usize, Failure> {
        match self {
            Self::Http(t) => t.send(&batch[0].event.event).await.map(|()| 0),
            Self::Sqs(t) => t.send(batch).await,
        }
    }
}

/// A destination's worker: takes batches and delivers them, at most
/// `concurrency` at a time, pausing while the circuit is open.
async fn work(outbox: Arc<Outbox>, ctx: Arc<DeliveryContext>, shared: SharedTransport) {
    let transport = shared
        .get_or_init(|| async { Arc::new(Transport::open(&outbox.destination, &ctx).await) })
        .await
        .clone();
    let permits = Arc::new(Semaphore::new(ctx.settings.concurrency));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        // Checked with the permit held: a delivery records its failure
        // before releasing its permit, so the circuit is seen at once.
        while let Some(pause) = outbox.paused_for() {
            if outbox.is_closed() {
                return;
            }
            tokio::time::sleep(pause.min(Duration::from_secs(1))).await;
        }
        let Some(batch) = outbox.take(transport.batch_max()).await else {
            return;
        };
        outbox.begin(batch.len());
        let (outbox, ctx, transport) = (outbox.clone(), ctx.clone(), transport.clone());
        tokio::spawn(async move {
            deliver(&outbox, &ctx, &transport, &batch).await;
            outbox.end(batch.len());
            drop(permit);
        });
    }
}

async fn deliver(outbox: &Outbox, ctx: &DeliveryContext, transport: &Transport, batch: &[Queued]) {
    let s = &ctx.settings;
    let started = Instant::now();
    let n = batch.len() as u64;
    let mut attempt = 0;
    let result = loop {
        match transport.attempt(batch).await {
            Err(Failure::Retryable(why)) if attempt < s.retries && !outbox.is_closed() => {
                outbox.metrics.retried.inc();
                tracing::debug!(destination = %outbox.label, attempt, %why, "retrying");
                tokio::time::sleep(backoff(s.backoff, attempt)).await;
                attempt += 1;
            }
            other => break other,
        }
    };
    outbox
        .metrics
        .latency
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(refused) => {
            outbox.metrics.delivered.inc_by(n - refused as u64);
            outbox.metrics.failed.inc_by(refused as u64);
            outbox.record_success();
        }
        Err(Failure::Retryable(why) | Failure::Permanent(why)) => {
            outbox.metrics.failed.inc_by(n);
            tracing::info!(destination = %outbox.label, %why, events = n, "delivery failed");
            if outbox.record_failure(s.circuit_failures, s.circuit_pause) {
                tracing::warn!(destination = %outbox.label, pause = ?s.circuit_pause, "circuit open: destination paused");
            }
        }
    }
}

/// Full jitter: a random delay up to `base * 2^attempt` (at least 1 ms),
/// so that many failing deliveries do not retry in step.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let cap = base.saturating_mul(1 << attempt.min(16));
    let ms = cap.as_millis().max(1) as u64;
    Duration::from_millis(fastrand::u64(1..=ms))
}

/// The hub's tap: offers every event to the router, in id order.
#[derive(Debug)]
pub struct Forwarding {
    inbox: mpsc::Sender<Arc<Published>>,
    capacity: usize,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl Forwarding {
    /// Starts the router task on `runtime`.
    pub fn start(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        capacity: usize,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<Arc<Published>>(capacity);
        let router = registry.clone();
        let supervisor = metrics.clone();
        runtime.spawn(async move {
            while let Some(p) = rx.recv().await {
                // A panic while routing one event must not stop forwarding
                // for good: that event is skipped, counted and logged, and
                // the router goes on with the next.
                let routed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    router.route(&p);
                }));
                if routed.is_err() {
                    supervisor.router_panicked();
                    tracing::error!(event = %p.event.id, "the forwarding router failed on an event and skipped it");
                }
            }
        });
        Arc::new(Self {
            inbox: tx,
            capacity,
            registry,
            metrics,
        })
    }

    /// On shutdown (no more events come in): waits for the router to empty
    /// its inbox, then for the destinations to deliver what they hold, all
    /// within `grace`. Returns how many events were abandoned.
    pub async fn drain(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        while self.inbox.capacity() < self.capacity && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let unrouted = self.capacity - self.inbox.capacity();
        if unrouted > 0 {
            tracing::warn!(
                events = unrouted,
                "shutdown: events not yet routed were abandoned"
            );
        }
        unrouted + self.registry.destinations().drain(deadline).await
    }
}

impl Tap for Forwarding {
    fn offer(&self, event: &Arc<Published>) {
        if self.registry.is_empty() {
            return;
        }
        if self.inbox.try_send(event.clone()).is_err() {
            self.metrics.forward_inbox_full();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_in_bounds() {
        let base = Duration::from_millis(100);
        for attempt in 0..5 {
            for _ in 0..50 {
                let d = backoff(base, attempt);
                assert!(d >= Duration::from_millis(1));
                assert!(d <= base * (1 << attempt), "{d:?} at {attempt}");
            }
        }
    }
}
