//! Logs and metrics. Every Prometheus series is declared here, with its
//! help text, and updated through typed methods, so the rest of the code
//! never spells a metric name.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global tracing subscriber. Fails if the filter is invalid.
///
/// The log goes to stderr (stdout stays free for a program's own output),
/// coloured only when stderr is a terminal and `NO_COLOR` is unset.
pub fn init_tracing(format: LogFormat, filter: &str) -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("invalid --log filter: {e}"))?;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(true);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// How an ingest request ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum IngestResult {
    /// Accepted and published.
    Accepted,
    /// A repeated Idempotency-Key: not published again.
    Duplicate,
    /// Refused (any 4xx).
    Rejected,
}

/// The ingest format.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum IngestFormat {
    /// Plain JSON.
    Json,
    /// WRP, msgpack.
    WrpMsgpack,
    /// WRP, JSON.
    WrpJson,
    /// Newline-delimited JSON batch.
    Ndjson,
    /// Not a supported content type.
    Unsupported,
}

/// Label values are the snake_case names Prometheus users expect.
macro_rules! label_values {
    ($ty:ty { $($variant:ident => $text:literal),* $(,)? }) => {
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                use std::fmt::Write as _;
                encoder.write_str(match self { $(Self::$variant => $text),* })
            }
        }
    };
}

label_values!(IngestResult { Accepted => "accepted", Duplicate => "duplicate", Rejected => "rejected" });
label_values!(IngestFormat {
    Json => "json",
    WrpMsgpack => "wrp_msgpack",
    WrpJson => "wrp_json",
    Ndjson => "ndjson",
    Unsupported => "unsupported",
});
label_values!(StreamEnd { Lagged => "lagged", Shutdown => "shutdown" });

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IngestLabels {
    format: IngestFormat,
    result: IngestResult,
}

/// Why a stream was ended by the gateway.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum StreamEnd {
    /// Lagged with the disconnect policy.
    Lagged,
    /// The gateway shut down.
    Shutdown,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamEndLabels {
    reason: StreamEnd,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

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
    /// Age of the oldest waiting event, in seconds.
    pub oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Time from dequeue to a final answer (including retries).
    pub latency: Histogram,
}

/// Which kind of stored object.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct StoredKindLabels {
    kind: &'static str,
}

/// Every metric the gateway exposes.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ingested: Family<IngestLabels, Counter>,
    deliveries: Counter,
    dropped: Counter,
    lagged: Counter,
    stream_ends: Family<StreamEndLabels, Counter>,
    subscribers: Gauge,
    connections: Gauge,
    connections_rejected: Counter,
    replay_events: Gauge,
    ingest_seconds: Histogram,
    fanout_seconds: Histogram,
    registrations: Gauge,
    stored_disabled: Family<StoredKindLabels, Counter>,
    router_panics: Counter,
    forward_inbox_full: Counter,
    notices: Counter,
    dest_delivered: Family<DestinationLabels, Counter>,
    dest_failed: Family<DestinationLabels, Counter>,
    dest_retried: Family<DestinationLabels, Counter>,
    dest_dropped: Family<DestinationLabels, Counter>,
    dest_abandoned: Family<DestinationLabels, Counter>,
    dest_depth: Family<DestinationLabels, Gauge>,
    dest_oldest_age: Family<DestinationLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    dest_latency: HistogramFamily<DestinationLabels>,
}

fn delivery_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every series.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ratatoskr");
        let m = Self {
            ingested: Family::default(),
            deliveries: Counter::default(),
            dropped: Counter::default(),
            lagged: Counter::default(),
            stream_ends: Family::default(),
            subscribers: Gauge::default(),
            connections: Gauge::default(),
            connections_rejected: Counter::default(),
            replay_events: Gauge::default(),
            ingest_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            fanout_seconds: Histogram::new(exponential_buckets(0.000_005, 2.0, 20)),
            registrations: Gauge::default(),
            stored_disabled: Family::default(),
            router_panics: Counter::default(),
            forward_inbox_full: Counter::default(),
            notices: Counter::default(),
            dest_delivered: Family::default(),
            dest_failed: Family::default(),
            dest_retried: Family::default(),
            dest_dropped: Family::default(),
            dest_abandoned: Family::default(),
            dest_depth: Family::default(),
            dest_oldest_age: Family::default(),
            dest_latency: Family::new_with_constructor(delivery_histogram),
            registry: Registry::default(),
        };
        registry.register(
            "events_ingested",
            "Events received on POST /api/events, by format and result",
            m.ingested.clone(),
        );
        registry.register(
            "deliveries",
            "Events queued for an SSE subscriber",
            m.deliveries.clone(),
        );
        registry.register(
            "deliveries_dropped",
            "Events dropped for an SSE subscriber whose buffer was full",
            m.dropped.clone(),
        );
        registry.register(
            "subscribers_lagged",
            "Lagged notices sent to slow SSE subscribers",
            m.lagged.clone(),
        );
        registry.register(
            "streams_ended",
            "SSE streams ended by the gateway, by reason",
            m.stream_ends.clone(),
        );
        registry.register(
            "subscribers",
            "SSE subscribers connected now",
            m.subscribers.clone(),
        );
        registry.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connections closed at once because the connection limit was reached",
            m.connections_rejected.clone(),
        );
        registry.register(
            "replay_events",
            "Events held for Last-Event-ID resume",
            m.replay_events.clone(),
        );
        registry.register(
            "ingest_duration_seconds",
            "Time to decode, validate and publish one ingest request",
            m.ingest_seconds.clone(),
        );
        registry.register(
            "fanout_duration_seconds",
            "Time to offer one event to every matching subscriber",
            m.fanout_seconds.clone(),
        );
        registry.register(
            "registrations",
            "Live forwarding registrations",
            m.registrations.clone(),
        );
        registry.register(
            "stored_disabled",
            "Stored registrations or event types loaded disabled because they break a limit",
            m.stored_disabled.clone(),
        );
        registry.register(
            "forward_router_panics",
            "Events the forwarding router failed on and skipped (it goes on with the next)",
            m.router_panics.clone(),
        );
        registry.register(
            "forward_inbox_dropped",
            "Events not forwarded because the forwarding inbox was full",
            m.forward_inbox_full.clone(),
        );
        registry.register(
            "destination_notices",
            "Drop notices sent to destinations",
            m.notices.clone(),
        );
        registry.register(
            "destination_delivered",
            "Events delivered to a destination",
            m.dest_delivered.clone(),
        );
        registry.register(
            "destination_failed",
            "Events a destination did not accept after retries",
            m.dest_failed.clone(),
        );
        registry.register(
            "destination_retried",
            "Delivery attempts retried, by destination",
            m.dest_retried.clone(),
        );
        registry.register(
            "destination_dropped",
            "Events dropped because a destination's buffer was full",
            m.dest_dropped.clone(),
        );
        registry.register(
            "destination_abandoned",
            "Events still queued or in flight for a destination when a shutdown's grace period ran out",
            m.dest_abandoned.clone(),
        );
        registry.register(
            "destination_queue_depth",
            "Events waiting for a destination",
            m.dest_depth.clone(),
        );
        registry.register(
            "destination_oldest_age_seconds",
            "Age of the oldest event waiting for a destination",
            m.dest_oldest_age.clone(),
        );
        registry.register(
            "destination_delivery_duration_seconds",
            "Time to deliver one event or batch, retries included",
            m.dest_latency.clone(),
        );
        Self { registry, ..m }
    }

    /// The series of one destination (created on first use).
    pub fn destination(&self, label: &str) -> DestinationMetrics {
        let l = DestinationLabels {
            destination: label.to_owned(),
        };
        DestinationMetrics {
            delivered: self.dest_delivered.get_or_create(&l).clone(),
            failed: self.dest_failed.get_or_create(&l).clone(),
            retried: self.dest_retried.get_or_create(&l).clone(),
            dropped: self.dest_dropped.get_or_create(&l).clone(),
            abandoned: self.dest_abandoned.get_or_create(&l).clone(),
            queue_depth: self.dest_depth.get_or_create(&l).clone(),
            oldest_age: self.dest_oldest_age.get_or_create(&l).clone(),
            latency: self.dest_latency.get_or_create(&l).clone(),
        }
    }

    /// Stops exporting a destination that is gone.
    pub fn destination_removed(&self, label: &str) {
        let l = DestinationLabels {
            destination: label.to_owned(),
        };
        self.dest_delivered.remove(&l);
        self.dest_failed.remove(&l);
        self.dest_retried.remove(&l);
        self.dest_dropped.remove(&l);
        self.dest_abandoned.remove(&l);
        self.dest_depth.remove(&l);
        self.dest_oldest_age.remove(&l);
        self.dest_latency.remove(&l);
    }

    /// Live registrations now.
    pub fn set_registrations(&self, n: usize) {
        self.registrations.set(n as i64);
    }

    /// The forwarding router panicked on an event and skipped it.
    pub fn router_panicked(&self) {
        self.router_panics.inc();
    }

    /// Times the forwarding router panicked so far.
    pub fn router_panics(&self) -> u64 {
        self.router_panics.get()
    }

    /// A stored registration was loaded disabled.
    pub fn registration_disabled(&self) {
        self.stored_disabled
            .get_or_create(&StoredKindLabels {
                kind: "registration",
            })
            .inc();
    }

    /// A stored event type was loaded disabled.
    pub fn event_type_disabled(&self) {
        self.stored_disabled
            .get_or_create(&StoredKindLabels { kind: "event_type" })
            .inc();
    }

    /// The forwarding inbox was full; an event was not forwarded.
    pub fn forward_inbox_full(&self) {
        self.forward_inbox_full.inc();
    }

    /// A drop notice went out.
    pub fn notice_sent(&self) {
        self.notices.inc();
    }

    /// One ingest request (or batch line) ended.
    pub fn ingested(&self, format: IngestFormat, result: IngestResult, count: u64) {
        self.ingested
            .get_or_create(&IngestLabels { format, result })
            .inc_by(count);
    }

    /// Time spent on one ingest request.
    pub fn ingest_took(&self, d: Duration) {
        self.ingest_seconds.observe(d.as_secs_f64());
    }

    /// One event was fanned out.
    pub fn fanout(&self, queued: u64, dropped: u64, took: Duration) {
        self.deliveries.inc_by(queued);
        if dropped > 0 {
            self.dropped.inc_by(dropped);
        }
        self.fanout_seconds.observe(took.as_secs_f64());
    }

    /// A lagged notice was sent.
    pub fn lagged(&self) {
        self.lagged.inc();
    }

    /// The gateway ended a stream.
    pub fn stream_ended(&self, reason: StreamEnd) {
        self.stream_ends
            .get_or_create(&StreamEndLabels { reason })
            .inc();
    }

    /// A subscriber joined.
    pub fn subscriber_joined(&self) {
        self.subscribers.inc();
    }

    /// A subscriber left.
    pub fn subscriber_left(&self) {
        self.subscribers.dec();
    }

    /// A connection opened.
    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    /// A connection closed.
    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    /// A connection was refused at the limit.
    pub fn connection_rejected(&self) {
        self.connections_rejected.inc();
    }

    /// Totals for the dashboard's JSON view.
    pub fn snapshot(&self) -> Snapshot {
        let ingested = [
            IngestFormat::Json,
            IngestFormat::WrpMsgpack,
            IngestFormat::WrpJson,
            IngestFormat::Ndjson,
        ]
        .into_iter()
        .map(|format| {
            self.ingested
                .get_or_create(&IngestLabels {
                    format,
                    result: IngestResult::Accepted,
                })
                .get()
        })
        .sum();
        Snapshot {
            events_ingested: ingested,
            deliveries: self.deliveries.get(),
            deliveries_dropped: self.dropped.get(),
            subscribers_lagged: self.lagged.get(),
            subscribers: self.subscribers.get(),
            connections: self.connections.get(),
        }
    }

    /// The Prometheus/OpenMetrics text, with sampled gauges refreshed.
    pub fn encode(&self, replay_events: usize) -> String {
        self.replay_events.set(replay_events as i64);
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Headline figures, as plain numbers.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Snapshot {
    /// Events accepted.
    pub events_ingested: u64,
    /// Events queued to subscribers.
    pub deliveries: u64,
    /// Events dropped for slow subscribers.
    pub deliveries_dropped: u64,
    /// Lagged notices.
    pub subscribers_lagged: u64,
    /// Subscribers now.
    pub subscribers: i64,
    /// Connections now.
    pub connections: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_named_series() {
        let m = Metrics::new();
        m.ingested(IngestFormat::Json, IngestResult::Accepted, 2);
        m.fanout(5, 1, Duration::from_micros(20));
        let text = m.encode(3);
        assert!(
            text.contains("ratatoskr_events_ingested_total{format=\"json\",result=\"accepted\"} 2"),
            "{text}"
        );
        assert!(text.contains("ratatoskr_deliveries_total 5"));
        assert!(text.contains("ratatoskr_deliveries_dropped_total 1"));
        assert!(text.contains("ratatoskr_replay_events 3"));
        assert!(text.contains("ratatoskr_fanout_duration_seconds_bucket"));
        assert_eq!(m.snapshot().events_ingested, 2);
    }
}
