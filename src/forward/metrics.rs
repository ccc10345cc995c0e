//! Forwarding's own series: the router, the drop notices, and one set of
//! series per destination label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type F64Gauge = Gauge<f64, std::sync::atomic::AtomicU64>;

fn delivery_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

/// One destination's series, cloned out of their families: each handle
/// shares its value with the exported series, so updating it is one
/// atomic operation with no label lookup.
#[derive(Debug, Clone)]
pub struct DestinationMetrics {
    /// Events delivered.
    pub delivered: Counter,
    /// Events given up on (after retries, or refused with a 4xx).
    pub failed: Counter,
    /// Retried attempts.
    pub retried: Counter,
    /// Events dropped because the destination's buffer was full.
    pub dropped: Counter,
    /// Events still queued or in flight when a shutdown's grace ran out.
    pub abandoned: Counter,
    /// Events waiting now.
    pub queue_depth: Gauge,
    /// Bytes of the events waiting now.
    pub queue_bytes: Gauge,
    /// Age of the oldest waiting event, in seconds.
    pub oldest_age: F64Gauge,
    /// Time from dequeue to a final answer (including retries).
    pub latency: Histogram,
    /// How far, in event time, the point up to which this destination is
    /// finished trails the newest event routed (cluster mode: what its
    /// checkpoint would replay after a failover).
    pub checkpoint_lag: F64Gauge,
}

/// Every forwarding series.
#[derive(Debug)]
pub struct ForwardMetrics {
    router_panics: Counter,
    inbox_dropped: Counter,
    notices: Counter,
    delivered: Family<DestinationLabels, Counter>,
    failed: Family<DestinationLabels, Counter>,
    retried: Family<DestinationLabels, Counter>,
    dropped: Family<DestinationLabels, Counter>,
    abandoned: Family<DestinationLabels, Counter>,
    depth: Family<DestinationLabels, Gauge>,
    bytes: Family<DestinationLabels, Gauge>,
    oldest_age: Family<DestinationLabels, F64Gauge>,
    latency: HistogramFamily<DestinationLabels>,
    checkpoint_lag: Family<DestinationLabels, F64Gauge>,
}

impl ForwardMetrics {
    /// Registers the series into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            router_panics: Counter::default(),
            inbox_dropped: Counter::default(),
            notices: Counter::default(),
            delivered: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            dropped: Family::default(),
            abandoned: Family::default(),
            depth: Family::default(),
            bytes: Family::default(),
            oldest_age: Family::default(),
            latency: Family::new_with_constructor(delivery_histogram),
            checkpoint_lag: Family::default(),
        };
        registry.register(
            "forward_router_panics",
            "Events the forwarding router failed on and skipped (it goes on with the next)",
            m.router_panics.clone(),
        );
        registry.register(
            "forward_inbox_dropped",
            "Events not forwarded because the forwarding inbox was full (events or bytes)",
            m.inbox_dropped.clone(),
        );
        registry.register(
            "destination_notices",
            "Drop notices sent to destinations",
            m.notices.clone(),
        );
        registry.register(
            "destination_delivered",
            "Events delivered to a destination",
            m.delivered.clone(),
        );
        registry.register(
            "destination_failed",
            "Events a destination did not accept after retries",
            m.failed.clone(),
        );
        registry.register(
            "destination_retried",
            "Delivery attempts retried, by destination",
            m.retried.clone(),
        );
        registry.register(
            "destination_dropped",
            "Events dropped because a destination's buffer was full (events or bytes)",
            m.dropped.clone(),
        );
        registry.register(
            "destination_abandoned",
            "Events still queued or in flight for a destination when a shutdown's grace period ran out",
            m.abandoned.clone(),
        );
        registry.register(
            "destination_queue_depth",
            "Events waiting for a destination",
            m.depth.clone(),
        );
        registry.register(
            "destination_queue_bytes",
            "Bytes of the events waiting for a destination",
            m.bytes.clone(),
        );
        registry.register(
            "destination_oldest_age_seconds",
            "Age of the oldest event waiting for a destination",
            m.oldest_age.clone(),
        );
        registry.register(
            "destination_delivery_duration_seconds",
            "Time to deliver one event or batch, retries included",
            m.latency.clone(),
        );
        registry.register(
            "destination_checkpoint_lag_seconds",
            "How far, in event time, a destination's finished point trails the newest event routed (updated with each cluster checkpoint)",
            m.checkpoint_lag.clone(),
        );
        m
    }

    /// The series of one destination label (created on first use).
    pub fn destination(&self, label: &str) -> DestinationMetrics {
        let l = DestinationLabels {
            destination: label.to_owned(),
        };
        DestinationMetrics {
            delivered: self.delivered.get_or_create(&l).clone(),
            failed: self.failed.get_or_create(&l).clone(),
            retried: self.retried.get_or_create(&l).clone(),
            dropped: self.dropped.get_or_create(&l).clone(),
            abandoned: self.abandoned.get_or_create(&l).clone(),
            queue_depth: self.depth.get_or_create(&l).clone(),
            queue_bytes: self.bytes.get_or_create(&l).clone(),
            oldest_age: self.oldest_age.get_or_create(&l).clone(),
            latency: self.latency.get_or_create(&l).clone(),
            checkpoint_lag: self.checkpoint_lag.get_or_create(&l).clone(),
        }
    }

    /// Stops exporting a destination label that no live destination has.
    pub fn destination_removed(&self, label: &str) {
        let l = DestinationLabels {
            destination: label.to_owned(),
        };
        self.delivered.remove(&l);
        self.failed.remove(&l);
        self.retried.remove(&l);
        self.dropped.remove(&l);
        self.abandoned.remove(&l);
        self.depth.remove(&l);
        self.bytes.remove(&l);
        self.oldest_age.remove(&l);
        self.latency.remove(&l);
        self.checkpoint_lag.remove(&l);
    }

    /// The router panicked on an event and skipped it.
    pub fn router_panicked(&self) {
        self.router_panics.inc();
    }

    /// Times the router panicked so far (shown on `/ready`).
    pub fn router_panics(&self) -> u64 {
        self.router_panics.get()
    }

    /// The inbox was full; an event was not forwarded.
    pub fn inbox_dropped(&self) {
        self.inbox_dropped.inc();
    }

    /// A drop notice went out.
    pub fn notice_sent(&self) {
        self.notices.inc();
    }
}
