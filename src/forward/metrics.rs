//! Forwarding's own series: the router, the drop notices, and one set of
//! series per destination label.
//!
//! Consumers choose destinations, so the labels are capped
//! ([`ForwardMetrics::with_label_cap`]): past the cap, a new destination's
//! counters and latency go to the label `other`, and its gauges (queue
//! depth, bytes, age, checkpoint lag) are not exported, since summing one
//! destination's level into another's means nothing. A labelled
//! destination that goes frees its slot.

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
    /// Events given up on: refused with a final answer (a 4xx other
    /// than 408 and 429), or past `--delivery-retries` when set.
    pub failed: Counter,
    /// Events given up on because every registration naming the
    /// destination ended (expired, deleted, or disabled by a 410).
    pub expired: Counter,
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

/// `family`'s series for `l` when the destination has its own labels, else
/// a detached metric of the same kind.
fn level<M: Default + Clone>(
    own: bool,
    family: &Family<DestinationLabels, M>,
    l: &DestinationLabels,
) -> M {
    if own {
        family.get_or_create(l).clone()
    } else {
        M::default()
    }
}

/// Destinations with series of their own, by default.
pub const DEFAULT_LABEL_CAP: usize = 100;

/// Every forwarding series.
#[derive(Debug)]
pub struct ForwardMetrics {
    router_panics: Counter,
    inbox_dropped: Counter,
    notices: Counter,
    disabled: Counter,
    delivered: Family<DestinationLabels, Counter>,
    failed: Family<DestinationLabels, Counter>,
    expired: Family<DestinationLabels, Counter>,
    retried: Family<DestinationLabels, Counter>,
    dropped: Family<DestinationLabels, Counter>,
    abandoned: Family<DestinationLabels, Counter>,
    depth: Family<DestinationLabels, Gauge>,
    bytes: Family<DestinationLabels, Gauge>,
    oldest_age: Family<DestinationLabels, F64Gauge>,
    latency: HistogramFamily<DestinationLabels>,
    checkpoint_lag: Family<DestinationLabels, F64Gauge>,
    folded: Counter,
    outbound_in_use: Gauge,
    outbound_waits: Counter,
    /// Most destination labels exported on their own.
    label_cap: usize,
    /// The labels exported on their own now.
    labelled: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The label that destinations past the cap share.
pub const OTHER: &str = "other";

impl ForwardMetrics {
    /// Registers the series into `registry`, with the default label cap.
    pub fn register(registry: &mut Registry) -> Self {
        Self::with_label_cap(registry, DEFAULT_LABEL_CAP)
    }

    /// Registers the series into `registry`; at most `label_cap`
    /// destinations get series of their own.
    pub fn with_label_cap(registry: &mut Registry, label_cap: usize) -> Self {
        let m = Self {
            router_panics: Counter::default(),
            inbox_dropped: Counter::default(),
            notices: Counter::default(),
            disabled: Counter::default(),
            delivered: Family::default(),
            failed: Family::default(),
            expired: Family::default(),
            retried: Family::default(),
            dropped: Family::default(),
            abandoned: Family::default(),
            depth: Family::default(),
            bytes: Family::default(),
            oldest_age: Family::default(),
            latency: Family::new_with_constructor(delivery_histogram),
            checkpoint_lag: Family::default(),
            folded: Counter::default(),
            outbound_in_use: Gauge::default(),
            outbound_waits: Counter::default(),
            label_cap,
            labelled: Default::default(),
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
            "Events given up on: the destination refused them with a final answer (a 4xx other than 408 and 429), or --delivery-retries ran out",
            m.failed.clone(),
        );
        registry.register(
            "destination_expired",
            "Events given up on because every registration naming the destination ended (expired, deleted, or disabled by a 410)",
            m.expired.clone(),
        );
        registry.register(
            "registrations_disabled",
            "Registrations disabled because their destination answered 410 Gone",
            m.disabled.clone(),
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
            "destination_labels_folded",
            "Destinations started past the label cap, whose series went to destination=\"other\"",
            m.folded.clone(),
        );
        registry.register(
            "destination_checkpoint_lag_seconds",
            "How far, in event time, a destination's finished point trails the newest event routed (updated with each cluster checkpoint)",
            m.checkpoint_lag.clone(),
        );
        registry.register(
            "outbound_connections",
            "Outbound connections in use now, over every destination (deliveries and drop notices in flight; at most --max-outbound-connections)",
            m.outbound_in_use.clone(),
        );
        registry.register(
            "outbound_waits",
            "Deliveries and drop notices that waited for an outbound connection (--max-outbound-connections were in use)",
            m.outbound_waits.clone(),
        );
        m
    }

    /// The gauge of outbound connections in use and the counter of waits
    /// for one (for [`super::delivery::OutboundLimit`]).
    pub fn outbound(&self) -> (Gauge, Counter) {
        (self.outbound_in_use.clone(), self.outbound_waits.clone())
    }

    /// The series of one destination label (created on first use), or,
    /// past the label cap, the shared `other` counters with gauges that
    /// are not exported.
    pub fn destination(&self, label: &str) -> DestinationMetrics {
        let own = {
            let mut labelled = crate::sync::lock(&self.labelled);
            labelled.contains(label)
                || (labelled.len() < self.label_cap && labelled.insert(label.to_owned()))
        };
        if !own {
            self.folded.inc();
        }
        let l = DestinationLabels {
            destination: if own { label } else { OTHER }.to_owned(),
        };
        DestinationMetrics {
            delivered: self.delivered.get_or_create(&l).clone(),
            failed: self.failed.get_or_create(&l).clone(),
            expired: self.expired.get_or_create(&l).clone(),
            retried: self.retried.get_or_create(&l).clone(),
            dropped: self.dropped.get_or_create(&l).clone(),
            abandoned: self.abandoned.get_or_create(&l).clone(),
            queue_depth: level(own, &self.depth, &l),
            queue_bytes: level(own, &self.bytes, &l),
            oldest_age: level(own, &self.oldest_age, &l),
            latency: self.latency.get_or_create(&l).clone(),
            checkpoint_lag: level(own, &self.checkpoint_lag, &l),
        }
    }

    /// Stops exporting a destination label that no live destination has
    /// (and frees its slot under the cap). `other` stays: its counters are
    /// cumulative over every folded destination.
    pub fn destination_removed(&self, label: &str) {
        if !crate::sync::lock(&self.labelled).remove(label) {
            return;
        }
        let l = DestinationLabels {
            destination: label.to_owned(),
        };
        self.delivered.remove(&l);
        self.failed.remove(&l);
        self.expired.remove(&l);
        self.retried.remove(&l);
        self.dropped.remove(&l);
        self.abandoned.remove(&l);
        self.depth.remove(&l);
        self.bytes.remove(&l);
        self.oldest_age.remove(&l);
        self.latency.remove(&l);
        self.checkpoint_lag.remove(&l);
    }

    /// A destination answered 410 Gone: its registrations were disabled.
    pub fn registrations_disabled(&self, n: u64) {
        self.disabled.inc_by(n);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn exported(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn destinations_past_the_cap_share_other_and_a_freed_slot_is_reused() {
        let mut registry = Registry::default();
        let m = ForwardMetrics::with_label_cap(&mut registry, 2);
        let a = m.destination("http:a");
        let b = m.destination("http:b");
        let c = m.destination("http:c");
        let d = m.destination("http:d");
        for x in [&a, &b, &c, &d] {
            x.delivered.inc();
            x.queue_depth.set(7);
        }
        let text = exported(&registry);
        assert!(
            text.contains(r#"destination_delivered_total{destination="http:a"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"destination_delivered_total{destination="other"} 2"#),
            "{text}"
        );
        assert!(
            !text.contains("http:c") && !text.contains("http:d"),
            "{text}"
        );
        // A folded destination's level is not summed into anything.
        assert!(
            !text.contains(r#"destination_queue_depth{destination="other"}"#),
            "{text}"
        );
        assert!(text.contains("destination_labels_folded_total 2"), "{text}");
        // The same label again is not a new slot; a removed one frees it.
        m.destination("http:a");
        m.destination_removed("http:a");
        m.destination_removed("http:c"); // folded: nothing to remove
        let e = m.destination("http:e");
        e.delivered.inc();
        let text = exported(&registry);
        assert!(
            text.contains(r#"destination_delivered_total{destination="http:e"} 1"#),
            "{text}"
        );
        assert!(!text.contains("http:a"), "{text}");
        assert!(text.contains(r#"destination="other"} 2"#), "{text}");
    }
}
