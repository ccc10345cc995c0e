//! Delivery: what every destination's worker shares, and the worker itself
//! (batches, concurrency, retries with backoff, the circuit, drop notices).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::metrics::ForwardMetrics;
use super::outbox::{BufferLimits, Outbox, Queued};
use super::sink::{opened, SharedSink, Sink};
use super::ssrf::{AddressPolicy, GuardedResolver};

/// Why a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// May succeed later (5xx, 408, 429, timeout, connection error).
    Retryable(String),
    /// May succeed later, and the receiver said when (`Retry-After` on a
    /// 429 or 503): the next attempt waits that long, at most
    /// [`MAX_RETRY_AFTER`], instead of the backoff.
    RetryAfter(String, Duration),
    /// Will not succeed by retrying (other 4xx, refused address).
    Permanent(String),
}

/// Delivery settings, from the configuration.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Per destination buffer, in events and bytes.
    pub buffer: BufferLimits,
    /// Deliveries in flight per destination.
    pub concurrency: usize,
    /// Outbound connections in use over every destination together.
    pub max_outbound: usize,
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

/// Outbound connections over every destination, by default: half of the
/// descriptors the connection cap keeps back
/// ([`crate::server::FD_RESERVE`]), the other half staying for the store,
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
}

/// The outbound connections every destination's worker shares: one permit
/// per delivery attempt or drop notice in flight. Each destination may
/// hold `concurrency` of them and destinations are as many as
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
            .pool_max_idle_per_host(settings.concurrency.max(1) * 2)
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
        }))
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

/// A destination's worker: takes batches and delivers them, at most
/// `concurrency` at a time, pausing while the circuit is open. Ends when
/// the outbox is closed.
pub(super) async fn work(outbox: Arc<Outbox>, ctx: Arc<DeliveryContext>, shared: SharedSink) {
    let sink = opened(&shared, &outbox.destination, &ctx).await;
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
        let Some(batch) = outbox.take(sink.batch_max()).await else {
            return;
        };
        outbox.begin(batch.len());
        let (outbox, ctx, sink) = (outbox.clone(), ctx.clone(), sink.clone());
        tokio::spawn(async move {
            deliver(&outbox, &ctx, &*sink, &batch).await;
            outbox.end(&batch);
            drop(permit);
        });
    }
}

/// Delivers one batch, retrying what may succeed later, and records the
/// outcome in the destination's series and circuit.
async fn deliver(outbox: &Outbox, ctx: &DeliveryContext, sink: &impl Sink, batch: &[Queued]) {
    let s = &ctx.settings;
    let started = Instant::now();
    let n = batch.len() as u64;
    let mut attempt = 0;
    let result = loop {
        // One connection per attempt, held for the attempt only: a retry's
        // backoff holds none.
        let sent = {
            let _connection = ctx.outbound.acquire().await;
            sink.send(batch).await
        };
        let wait = match sent {
            Err(Failure::Retryable(why)) if attempt < s.retries && !outbox.is_closed() => {
                tracing::debug!(destination = %outbox.label, attempt, %why, "retrying");
                backoff(s.backoff, attempt)
            }
            Err(Failure::RetryAfter(why, after)) if attempt < s.retries && !outbox.is_closed() => {
                tracing::debug!(destination = %outbox.label, attempt, %why, ?after, "retrying when the receiver asked");
                after.min(MAX_RETRY_AFTER)
            }
            other => break other,
        };
        outbox.metrics.retried.inc();
        tokio::time::sleep(wait).await;
        attempt += 1;
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
        Err(Failure::Retryable(why) | Failure::RetryAfter(why, _) | Failure::Permanent(why)) => {
            outbox.metrics.failed.inc_by(n);
            tracing::info!(destination = %outbox.label, %why, events = n, "delivery failed");
            if outbox.record_failure(s.circuit_failures, s.circuit_pause) {
                tracing::warn!(destination = %outbox.label, pause = ?s.circuit_pause, "circuit open: destination paused");
            }
        }
    }
}

/// Tells a destination, in the background and once, that events for it
/// were dropped, and how many since the last notice.
pub(super) fn notify_dropped(outbox: Arc<Outbox>, ctx: Arc<DeliveryContext>, shared: SharedSink) {
    ctx.runtime.clone().spawn(async move {
        let dropped = outbox.take_dropped_since_notice();
        let notice = serde_json::json!({
            "type": "ratatoskr.dropped",
            "text": "This destination is not keeping up: its buffer is full and events for it are being dropped. Add capacity or ask for fewer events.",
            "destination": outbox.label,
            "dropped": dropped,
            "dropped_total": outbox.metrics.dropped.get(),
            "queue_size": ctx.settings.buffer.events,
            "queue_bytes": ctx.settings.buffer.bytes,
            "at": chrono::Utc::now().to_rfc3339(),
        });
        let sink = opened(&shared, &outbox.destination, &ctx).await;
        let sent = {
            let _connection = ctx.outbound.acquire().await;
            sink.notice(notice.to_string()).await
        };
        match sent {
            Ok(()) => ctx.metrics.notice_sent(),
            Err(e) => {
                tracing::warn!(destination = %outbox.label, error = ?e, "drop notice not delivered")
            }
        }
    });
}

/// The longest a receiver's `Retry-After` is honoured: a delivery waiting
/// holds one of the destination's concurrency slots.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Full jitter: a random delay up to `base * 2^attempt` (at least 1 ms),
/// so that many failing deliveries do not retry in step.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let cap = base.saturating_mul(1 << attempt.min(16));
    let ms = cap.as_millis().max(1) as u64;
    Duration::from_millis(fastrand::u64(1..=ms))
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
