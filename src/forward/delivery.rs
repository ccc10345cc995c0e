//! Delivery: what every destination's worker shares, and the worker itself
//! (one batch at a time, in id order; retries with capped exponential
//! backoff and full jitter until delivered; drop and disable notices).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::attempts::Outcome;
use super::failure::Failure;
use super::metrics::ForwardMetrics;
use super::outbox::{BufferLimits, Outbox, Queued};
use super::sink::{opened, SharedSink, Sink, SinkSetup};
use super::ssrf::{AddressPolicy, GuardedResolver};

/// Delivery settings, from the configuration.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Per destination buffer, in events and bytes.
    pub buffer: BufferLimits,
    /// Outbound connections in use over every destination together.
    pub max_outbound: usize,
    /// Time per attempt.
    pub timeout: Duration,
    /// Retries of one batch before it is given up on; `None`: retried
    /// until delivered or its registrations end.
    pub retries: Option<u32>,
    /// First backoff; doubles per retry, full jitter.
    pub backoff: Duration,
    /// Most backoff between two attempts.
    pub max_backoff: Duration,
    /// Least time between drop notices.
    pub notice_interval: Duration,
}

/// Outbound connections over every destination, by default: half of the
/// descriptors the connection cap keeps back
/// (the server's `FD_RESERVE`), the other half staying for the store,
/// DNS and logs.
pub const DEFAULT_MAX_OUTBOUND: usize = 256;

/// What every destination worker shares.
#[derive(Debug)]
pub struct DeliveryContext {
    pub(super) settings: DeliverySettings,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) http: reqwest::Client,
    pub(super) policy: Arc<AddressPolicy>,
    pub(super) metrics: Arc<ForwardMetrics>,
    pub(super) outbound: OutboundLimit,
    /// What a 410 Gone does to the registrations naming the destination
    /// (set once by whoever owns them: the registry).
    gone: GoneSlot,
}

/// Where the [`GoneHook`] is kept.
#[derive(Default)]
struct GoneSlot(std::sync::OnceLock<GoneHook>);

impl std::fmt::Debug for GoneSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "GoneSlot(set)"
        } else {
            "GoneSlot(unset)"
        })
    }
}

/// Disables the registrations naming a destination that answered 410
/// Gone, given its reason; returns how many it disabled.
pub type GoneHook =
    Box<dyn Fn(Arc<super::destination::Destination>, String) -> usize + Send + Sync>;

/// The outbound connections every destination's worker shares: one permit
/// per delivery attempt or drop notice in flight. Each destination may
/// hold one of them and destinations are as many as
/// registrations, so without this bound slow receivers would take every
/// descriptor and lock clients out. A delivery waits for a permit (in
/// order: the semaphore is fair) and is never dropped for it; the
/// attempt's timeout starts once it has one.
#[derive(Debug)]
pub(super) struct OutboundLimit {
    permits: Arc<Semaphore>,
    in_use: Gauge,
    waits: Counter,
}

/// One outbound connection in use; given back when dropped.
#[derive(Debug)]
pub(super) struct OutboundPermit {
    _permit: Option<OwnedSemaphorePermit>,
    in_use: Gauge,
}

impl Drop for OutboundPermit {
    fn drop(&mut self) {
        self.in_use.dec();
    }
}

impl OutboundLimit {
    fn new(max: usize, metrics: &ForwardMetrics) -> Self {
        let (in_use, waits) = metrics.outbound();
        Self {
            permits: Arc::new(Semaphore::new(max.max(1))),
            in_use,
            waits,
        }
    }

    /// A permit, waiting (and counting the wait) while every one is in use.
    pub(super) async fn acquire(&self) -> OutboundPermit {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(TryAcquireError::NoPermits) => {
                self.waits.inc();
                // The semaphore is never closed, so this always yields one.
                self.permits.clone().acquire_owned().await.ok()
            }
            Err(TryAcquireError::Closed) => None,
        };
        self.in_use.inc();
        OutboundPermit {
            _permit: permit,
            in_use: self.in_use.clone(),
        }
    }
}

impl DeliveryContext {
    /// What opening a sink takes of this context.
    fn sink_setup(&self) -> SinkSetup<'_> {
        SinkSetup {
            http: &self.http,
            policy: &self.policy,
            timeout: self.settings.timeout,
        }
    }

    /// One HTTP client (one connection pool) for every webhook, resolving
    /// only to addresses `policy` permits, never following redirects.
    /// Forwarding tasks run on `runtime` (see [`super::runtime::ForwardRuntime`]).
    pub fn new(
        settings: DeliverySettings,
        policy: Arc<AddressPolicy>,
        metrics: Arc<ForwardMetrics>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, String> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("ratatoskr/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(2)
            .no_proxy()
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let outbound = OutboundLimit::new(settings.max_outbound, &metrics);
        Ok(Arc::new(Self {
            settings,
            runtime,
            http,
            policy,
            metrics,
            outbound,
            gone: GoneSlot::default(),
        }))
    }

    /// Runs `task` on the forwarding runtime.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(task);
    }

    /// Installs what a 410 Gone does (once; later calls are ignored).
    pub fn on_gone(&self, hook: GoneHook) {
        let _ = self.gone.0.set(hook);
    }

    /// A destination answered 410 Gone: disables its registrations
    /// (through the hook, on a blocking thread: it writes the store),
    /// counts them, and tells its failure URL.
    pub(super) fn destination_gone(
        self: &Arc<Self>,
        outbox: &Arc<Outbox>,
        shared: &SharedSink,
        why: String,
    ) {
        tracing::warn!(destination = %outbox.label, %why, "the destination answered 410 Gone: its registrations are disabled");
        let (ctx, outbox, shared) = (self.clone(), outbox.clone(), shared.clone());
        self.runtime.spawn(async move {
            let (c, d, w) = (ctx.clone(), outbox.destination.clone(), why.clone());
            let disabled = tokio::task::spawn_blocking(move || c.gone.0.get().map_or(0, |hook| hook(d, w)))
                .await
                .unwrap_or(0);
            ctx.metrics.registrations_disabled(disabled as u64);
            let has_failure_url = matches!(&*outbox.destination, super::destination::Destination::Http(h) if h.failure_url.is_some());
            if has_failure_url && outbox.notice_due() {
                notify(outbox, ctx, shared, Notice::Disabled(why));
            }
        });
    }

    /// The address policy (for registration-time checks).
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// The forwarding series (for `/ready`).
    pub fn metrics(&self) -> &ForwardMetrics {
        &self.metrics
    }

    /// A handle on the forwarding series.
    pub fn metrics_handle(&self) -> Arc<ForwardMetrics> {
        self.metrics.clone()
    }
}

/// A destination's worker: takes one batch at a time and delivers it
/// before the next, so the destination sees its events in id order. Ends
/// when the outbox is closed.
pub(super) async fn work(outbox: Arc<Outbox>, ctx: Arc<DeliveryContext>, shared: SharedSink) {
    let sink = opened(&shared, &outbox.destination, ctx.sink_setup()).await;
    loop {
        let Some(batch) = outbox.take(sink.batch_max()).await else {
            return;
        };
        outbox.begin(batch.len());
        let gone = deliver(&outbox, &ctx, &*sink, &batch).await;
        outbox.end(&batch);
        if let Some(why) = gone {
            ctx.destination_gone(&outbox, &shared, why);
        }
    }
}

/// Delivers one batch, retrying what may succeed later until it succeeds,
/// its outbox closes (every registration naming the destination ended), or
/// `--delivery-retries` (when set) run out; records each attempt in the
/// destination's log and series. Returns the reason when the destination
/// answered 410 Gone.
async fn deliver(
    outbox: &Outbox,
    ctx: &DeliveryContext,
    sink: &impl Sink,
    batch: &[Queued],
) -> Option<String> {
    let s = &ctx.settings;
    let started = Instant::now();
    let n = batch.len() as u64;
    let mut attempt: u32 = 0;
    loop {
        if outbox.is_closed() {
            outbox.record_all(batch, attempt, Outcome::Expired, None, None, Duration::ZERO);
            outbox.metrics.expired.inc_by(n);
            return None;
        }
        attempt += 1;
        let tried = Instant::now();
        // One connection per attempt, held for the attempt only: a retry's
        // backoff holds none.
        let sent = {
            let _connection = ctx.outbound.acquire().await;
            sink.send(batch).await
        };
        let took = tried.elapsed();
        let (why, wait) = match sent {
            Ok(sent) => {
                outbox.record_all(batch, attempt, Outcome::Delivered, sent.status, None, took);
                outbox.metrics.delivered.inc_by(n - sent.refused as u64);
                outbox.metrics.failed.inc_by(sent.refused as u64);
                outbox
                    .metrics
                    .latency
                    .observe(started.elapsed().as_secs_f64());
                return None;
            }
            Err(Failure::Permanent(why)) => {
                give_up(outbox, batch, attempt, &why, took);
                return None;
            }
            Err(Failure::Gone(why)) => {
                give_up(outbox, batch, attempt, &why, took);
                return Some(why);
            }
            Err(Failure::Retryable(why)) => {
                let wait = backoff(s.backoff, s.max_backoff, attempt - 1);
                (why, wait)
            }
            Err(Failure::RetryAfter(why, after)) => (why, after.min(MAX_RETRY_AFTER)),
        };
        if s.retries.is_some_and(|max| attempt > max) {
            give_up(outbox, batch, attempt, &why, took);
            return None;
        }
        outbox.record_all(
            batch,
            attempt,
            Outcome::Retrying,
            status_of(&why),
            Some(&why),
            took,
        );
        tracing::debug!(destination = %outbox.label, attempt, %why, ?wait, "retrying");
        outbox.metrics.retried.inc();
        outbox.closed_or_after(wait).await;
    }
}

/// Records and counts a batch given up on after a final answer.
fn give_up(outbox: &Outbox, batch: &[Queued], attempt: u32, why: &str, took: Duration) {
    let n = batch.len() as u64;
    outbox.record_all(
        batch,
        attempt,
        Outcome::Failed,
        status_of(why),
        Some(why),
        took,
    );
    outbox.metrics.failed.inc_by(n);
    tracing::info!(destination = %outbox.label, %why, events = n, attempt, "delivery given up");
}

/// The HTTP status in a failure's text, as the sinks write it
/// (`status 503 Service Unavailable`).
fn status_of(why: &str) -> Option<u16> {
    why.strip_prefix("status ")?.get(..3)?.parse().ok()
}

/// A notice to a destination about itself.
#[derive(Debug, Clone)]
pub(super) enum Notice {
    /// Its backlog went over budget and its oldest events are dropped.
    Dropped,
    /// It answered 410 Gone, and its registrations are disabled.
    Disabled(String),
}

/// Tells a destination, in the background and once, that events for it
/// were dropped (and how many since the last notice), or that it was
/// disabled. A drop notice goes to the failure URL, else the webhook; a
/// disable notice only to a failure URL (the webhook said it is gone).
pub(super) fn notify(
    outbox: Arc<Outbox>,
    ctx: Arc<DeliveryContext>,
    shared: SharedSink,
    notice: Notice,
) {
    ctx.runtime.clone().spawn(async move {
        let at = chrono::Utc::now().to_rfc3339();
        let (kind, body) = match &notice {
            Notice::Dropped => {
                let dropped = outbox.take_dropped_since_notice();
                ("dropped", serde_json::json!({
                    "type": "ratatoskr.dropped",
                    "text": "This destination is not keeping up: its backlog is over budget and its oldest events are being dropped. Add capacity or ask for fewer events.",
                    "destination": outbox.label,
                    "dropped": dropped,
                    "dropped_total": outbox.metrics.dropped.get(),
                    "queue_size": ctx.settings.buffer.events,
                    "queue_bytes": ctx.settings.buffer.bytes,
                    "at": at,
                }))
            }
            Notice::Disabled(why) => ("disabled", serde_json::json!({
                "type": "ratatoskr.disabled",
                "text": "This destination answered 410 Gone: its registrations are disabled and get no more events. Replace them (PUT) to start again.",
                "destination": outbox.label,
                "reason": why,
                "at": at,
            })),
        };
        let sink = opened(&shared, &outbox.destination, ctx.sink_setup()).await;
        let sent = {
            let _connection = ctx.outbound.acquire().await;
            sink.notice(kind, body.to_string()).await
        };
        match sent {
            Ok(()) => ctx.metrics.notice_sent(),
            Err(e) => {
                tracing::warn!(destination = %outbox.label, error = ?e, kind, "notice not delivered")
            }
        }
    });
}

/// The longest a receiver's `Retry-After` is honoured: a registration's
/// longest life. A waiting delivery holds nothing but its own
/// destination's turn.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Full jitter: a random delay up to `base * 2^attempt`, capped at `max`
/// (at least 1 ms), so that many failing deliveries do not retry in step.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let cap = base.saturating_mul(1 << attempt.min(16)).min(max);
    let ms = cap.as_millis().max(1) as u64;
    Duration::from_millis(fastrand::u64(1..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_in_bounds() {
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(1_000);
        for attempt in 0..40 {
            for _ in 0..50 {
                let d = backoff(base, max, attempt);
                assert!(d >= Duration::from_millis(1));
                assert!(
                    d <= (base * (1 << attempt.min(16))).min(max),
                    "{d:?} at {attempt}"
                );
            }
        }
        assert!(
            (0..200).any(|_| backoff(base, max, 30) > Duration::from_millis(500)),
            "the cap is reached, not stuck at the base"
        );
    }

    #[test]
    fn a_status_is_read_from_a_sinks_failure_text() {
        assert_eq!(status_of("status 503 Service Unavailable"), Some(503));
        assert_eq!(status_of("SQS unreachable: timeout"), None);
    }
}
