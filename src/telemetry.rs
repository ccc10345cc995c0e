//! Logs and metrics. This module owns the one Prometheus registry and the
//! HTTP-facing series (ingest, streams, connections); the hub, forwarding,
//! the registry and the store declare their own series and register them
//! here ([`Metrics::register`]). Series are updated through typed methods,
//! so no caller spells a metric name.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

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

impl IngestFormat {
    /// Every format, in declaration order.
    pub const ALL: [Self; 5] = [
        Self::Json,
        Self::WrpMsgpack,
        Self::WrpJson,
        Self::Ndjson,
        Self::Unsupported,
    ];
}

impl IngestResult {
    /// Every result, in declaration order.
    pub const ALL: [Self; 3] = [Self::Accepted, Self::Duplicate, Self::Rejected];
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
label_values!(StreamEnd { Lagged => "lagged", Shutdown => "shutdown", Revoked => "revoked" });

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
    /// Its credential expired or was removed (`auth::lease`).
    Revoked,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamEndLabels {
    reason: StreamEnd,
}

/// Every metric the gateway exposes.
#[derive(Debug)]
pub struct Metrics {
    /// Every module registers its own series here ([`Metrics::register`]).
    registry: std::sync::Mutex<Registry>,
    ingested: Family<IngestLabels, Counter>,
    /// Every series of `ingested`, made at start: counting an event is an
    /// atomic add, not a lookup under the family's lock.
    ingested_by: [[Counter; IngestResult::ALL.len()]; IngestFormat::ALL.len()],
    lagged: Counter,
    stream_ends: Family<StreamEndLabels, Counter>,
    connections: Gauge,
    connections_rejected: Counter,
    ingest_seconds: Histogram,
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
        let ingested = Family::<IngestLabels, Counter>::default();
        // In declaration order: `ingested_by[format as usize][result as usize]`.
        let ingested_by = IngestFormat::ALL.map(|format| {
            IngestResult::ALL.map(|result| {
                ingested
                    .get_or_create(&IngestLabels { format, result })
                    .clone()
            })
        });
        let m = Self {
            ingested,
            ingested_by,
            lagged: Counter::default(),
            stream_ends: Family::default(),
            connections: Gauge::default(),
            connections_rejected: Counter::default(),
            ingest_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            registry: Default::default(),
        };
        registry.register(
            "events_ingested",
            "Events received on POST /api/events, by format and result",
            m.ingested.clone(),
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
            "ingest_duration_seconds",
            "Time to decode, validate and publish one ingest request",
            m.ingest_seconds.clone(),
        );
        Self {
            registry: std::sync::Mutex::new(registry),
            ..m
        }
    }

    /// Lets a module register its own series (with the `ratatoskr_`
    /// prefix) and keep the handles: `hub`, `forward`, `registry` and
    /// `store` own theirs, so that none of them depends on this module.
    pub fn register<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut crate::sync::lock(&self.registry))
    }

    /// One ingest request (or batch line) ended.
    pub fn ingested(&self, format: IngestFormat, result: IngestResult, count: u64) {
        self.ingested_by[format as usize][result as usize].inc_by(count);
    }

    /// Time spent on one ingest request.
    pub fn ingest_took(&self, d: Duration) {
        self.ingest_seconds.observe(d.as_secs_f64());
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
        // An unsupported request is never accepted: its counter stays 0.
        let ingested = self
            .ingested_by
            .iter()
            .map(|by_result| by_result[IngestResult::Accepted as usize].get())
            .sum();
        Snapshot {
            events_ingested: ingested,
            subscribers_lagged: self.lagged.get(),
            connections: self.connections.get(),
        }
    }

    /// The Prometheus/OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ =
            prometheus_client::encoding::text::encode(&mut out, &crate::sync::lock(&self.registry));
        out
    }
}

/// Headline figures, as plain numbers.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Snapshot {
    /// Events accepted.
    pub events_ingested: u64,
    /// Lagged notices.
    pub subscribers_lagged: u64,
    /// Connections now.
    pub connections: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ingest_count_lands_on_its_own_labels() {
        let m = Metrics::new();
        let formats = [
            (IngestFormat::Json, "json"),
            (IngestFormat::WrpMsgpack, "wrp_msgpack"),
            (IngestFormat::WrpJson, "wrp_json"),
            (IngestFormat::Ndjson, "ndjson"),
            (IngestFormat::Unsupported, "unsupported"),
        ];
        let results = [
            (IngestResult::Accepted, "accepted"),
            (IngestResult::Duplicate, "duplicate"),
            (IngestResult::Rejected, "rejected"),
        ];
        let mut n = 0;
        for (format, _) in formats {
            for (result, _) in results {
                n += 1;
                m.ingested(format, result, n);
            }
        }
        let text = m.encode();
        let mut n = 0;
        for (_, f) in formats {
            for (_, r) in results {
                n += 1;
                let line = format!(
                    "ratatoskr_events_ingested_total{{format=\"{f}\",result=\"{r}\"}} {n}\n"
                );
                assert!(text.contains(&line), "{line} missing from\n{text}");
            }
        }
    }

    #[test]
    fn exposes_named_series() {
        let m = Metrics::new();
        m.ingested(IngestFormat::Json, IngestResult::Accepted, 2);
        let text = m.encode();
        assert!(
            text.contains("ratatoskr_events_ingested_total{format=\"json\",result=\"accepted\"} 2"),
            "{text}"
        );
        assert_eq!(m.snapshot().events_ingested, 2);
    }
}
