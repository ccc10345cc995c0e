//! Cluster mode: stateless nodes sharing one Redis (`--redis-url`).
//!
//! ```text
//! POST /api/events ──append (XADDs in one fenced script)──▶ Redis stream {prefix}:events ──▶ 202 with its id
//!                                                      │
//!   every node: one reader (XREAD BLOCK, in batches) ◀─┘ ──Hub::publish_at(id)──▶ local fan-out
//! ```
//!
//! An event is answered 202 only once Redis has it, and reaches subscribers
//! on every node (the ingesting one included) through that node's reader,
//! so every node publishes the same events in the same order with the same
//! ids (the stream ids, mapped one-to-one by [`crate::event::wire`]). Local fan-out,
//! filters, coalescing and slow-subscriber handling are the embedded
//! mode's code. A resume that the local ring does not cover is served from
//! the stream (XRANGE). Idempotency keys are Redis keys (SET NX PX),
//! completed by the append itself. An append is fenced by a deadline in
//! Redis's time (`clock.rs`), so a 503 means the events are not stored.
//!
//! Its roles, one file each, over one [`Link`] (the connection and
//! whether Redis answers): the shared [`SharedStream`] (append, read,
//! ranges), the [`SharedKeys`], the member list ([`members`]), the
//! change channel that keeps every node's documents in step
//! ([`changes`]), and the destinations' leases and checkpoints
//! ([`leases`]). The documents themselves are the store's
//! (`state::store::redis`).
//!
//! While Redis cannot be reached, appends fail (the API answers 503 with
//! `Retry-After`), `/ready` is 503, and SSE clients stay connected with
//! their heartbeats; the reader reconnects with jittered backoff and
//! resumes after the last id it saw, so nothing accepted meanwhile by
//! other nodes is skipped.

mod append;
pub mod changes;
mod clock;
mod keys;
mod layout;
pub mod leases;
mod link;
pub mod members;
mod merge;
mod needs;
mod partition;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

pub use self::append::BUDGET as APPEND_BUDGET;
pub use self::keys::{KeyRecord, SharedKeys};
pub use self::layout::{Layout, MAX_PARTITIONS};
pub use self::link::Link;
pub use self::needs::{NeedGuard, NotRead};
pub use self::stream::{ResumePage, SharedStream};

/// Cluster settings, from the configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The shared Redis, and the prefix of every key.
    pub target: crate::redis_target::RedisTarget,
    /// Most entries the stream keeps (approximate trimming).
    pub stream_max_len: usize,
    /// Replicas that must hold an append before it is acknowledged.
    pub ack_replicas: u32,
    /// Oldest entry the stream keeps (approximate trimming, once a second).
    pub max_age: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_window: Duration,
    /// How many streams the events are split over (`--redis-partitions`).
    pub partitions: usize,
}

/// Why a cluster operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// Redis did not answer, or refused.
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    /// An append that did not store its events, and never will (see
    /// `append`'s fence).
    #[error("Redis did not store the events: {0}")]
    NotStored(String),
    /// An append whose outcome Redis did not tell in time: the events may
    /// be stored or not.
    #[error("it is not known whether Redis stored the events: {0}")]
    OutcomeUnknown(String),
    /// A node whose settings do not fit the cluster's.
    #[error("{0}")]
    Misconfigured(String),
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// The cluster's own series.
#[derive(Debug, Clone)]
pub(crate) struct ClusterMetrics {
    round_trip: Histogram,
    connected: Gauge,
    reader_lag_ms: Gauge,
    reader_lag_entries: Gauge,
    reader_reconnects: Counter,
    read_bytes: Counter,
    skipped: Counter,
    appends_late: Counter,
    appends_unanswered: Counter,
    appends_unreplicated: Counter,
    replicas_acking: Gauge,
    history_lost: Counter,
    lease_takeovers: Counter,
    forwarding: Gauge,
    destinations_owned: Gauge,
}

impl ClusterMetrics {
    fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self {
            round_trip: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            connected: Gauge::default(),
            reader_lag_ms: Gauge::default(),
            reader_lag_entries: Gauge::default(),
            reader_reconnects: Counter::default(),
            read_bytes: Counter::default(),
            skipped: Counter::default(),
            appends_late: Counter::default(),
            appends_unanswered: Counter::default(),
            appends_unreplicated: Counter::default(),
            replicas_acking: Gauge::default(),
            history_lost: Counter::default(),
            lease_takeovers: Counter::default(),
            forwarding: Gauge::default(),
            destinations_owned: Gauge::default(),
        };
        registry.register(
            "cluster_lease_takeovers",
            "Times this node took a destination's lease",
            m.lease_takeovers.clone(),
        );
        registry.register(
            "cluster_forwarding",
            "1 while this node holds any destination's lease (and forwards to it for the cluster)",
            m.forwarding.clone(),
        );
        registry.register(
            "cluster_destinations_owned",
            "Destinations this node forwards for the cluster (those whose lease it holds)",
            m.destinations_owned.clone(),
        );
        registry.register(
            "redis_round_trip_seconds",
            "Time for one Redis command or pipeline, answered or failed",
            m.round_trip.clone(),
        );
        registry.register(
            "redis_connected",
            "1 while this node's Redis reader is connected",
            m.connected.clone(),
        );
        registry.register(
            "cluster_reader_lag_milliseconds",
            "Milliseconds between the stream's newest entry and the last one this node's reader read (measured each second)",
            m.reader_lag_ms.clone(),
        );
        registry.register(
            "cluster_reader_lag_entries",
            "Stream entries this node's reader has not read yet (measured each second; Redis 7's entries-added)",
            m.reader_lag_entries.clone(),
        );
        registry.register(
            "cluster_reader_reconnects",
            "Times this node's stream reader reconnected to Redis",
            m.reader_reconnects.clone(),
        );
        registry.register(
            "cluster_read_bytes",
            "Bytes of stream entries (ids and fields) this node's readers read from Redis, over every partition they read",
            m.read_bytes.clone(),
        );
        registry.register(
            "cluster_history_lost",
            "Times this node found the stream had lost entries it had not read (live subscribers were sent a gap)",
            m.history_lost.clone(),
        );
        registry.register(
            "cluster_appends_late",
            "Appends Redis ran after their deadline, and so stored nothing (their requests were answered 503)",
            m.appends_late.clone(),
        );
        registry.register(
            "cluster_appends_unanswered",
            "Appends whose reply did not come in time, after which the node checked whether Redis had stored them",
            m.appends_unanswered.clone(),
        );
        registry.register(
            "cluster_appends_unreplicated",
            "Appends that fewer replicas than --redis-ack-replicas confirmed in time, and that were taken back (their requests were answered 503)",
            m.appends_unreplicated.clone(),
        );
        registry.register(
            "cluster_replicas_acking",
            "Replicas each append waits for: --redis-ack-replicas, or fewer while fewer are connected to the stream's primary",
            m.replicas_acking.clone(),
        );
        registry.register(
            "cluster_entries_skipped",
            "Stream entries this node could not read back (logged)",
            m.skipped.clone(),
        );
        m
    }
}

/// Refuses to start with another `--redis-partitions` than the cluster's
/// (recorded by the first node, under `<prefix>:partitions`): nodes that
/// split the stream differently would not see each other's events.
async fn agree_on_partitions(link: &Link, layout: Layout) -> Result<(), ClusterError> {
    let key = link.key("partitions");
    let mut conn = link.commands();
    let (_, recorded): (Option<String>, String) = redis::pipe()
        .cmd("SET")
        .arg(&key)
        .arg(layout.count())
        .arg("NX")
        .cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await?;
    if recorded == layout.count().to_string() {
        return Ok(());
    }
    Err(ClusterError::Misconfigured(format!(
        "this cluster splits its stream over {recorded} partitions (Redis key {key}), not --redis-partitions {}: give every node the same number; to change it, stop every node, delete that key, and start them all with the new one (the old streams are then left behind, and resumes from before get a gap)",
        layout.count()
    )))
}

/// A node's part in the cluster: its connection, the shared stream, the
/// shared idempotency keys, and its name among the members.
pub struct Cluster {
    link: Arc<Link>,
    stream: Arc<SharedStream>,
    keys: SharedKeys,
    /// This node's name in leases and the member list.
    node_id: String,
    metrics: ClusterMetrics,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("link", &self.link)
            .field("node", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects (failing at once if Redis cannot be reached: a node that
    /// starts without its cluster would only accept what it cannot keep).
    pub async fn connect(
        config: ClusterConfig,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<Arc<Self>, ClusterError> {
        let metrics = metrics.register(ClusterMetrics::register);
        let link = Arc::new(Link::connect(config.target, metrics.round_trip.clone()).await?);
        let layout = Layout::new(config.partitions);
        agree_on_partitions(&link, layout).await?;
        let cluster = Arc::new(Self {
            stream: SharedStream::open(
                link.clone(),
                layout,
                config.stream_max_len,
                config.max_age,
                config.ack_replicas,
                metrics.clone(),
            ),
            keys: SharedKeys::new(link.clone(), layout, config.idempotency_window),
            link,
            node_id: uuid::Uuid::new_v4().simple().to_string(),
            metrics,
        });
        // Before the first append: how many replicas it waits for.
        cluster.stream.count_replicas().await;
        Ok(cluster)
    }

    /// The shared event stream.
    pub fn stream(&self) -> &Arc<SharedStream> {
        &self.stream
    }

    /// The shared idempotency keys.
    pub fn keys(&self) -> &SharedKeys {
        &self.keys
    }

    /// Whether Redis answered the last command and the reader is connected.
    pub fn is_healthy(&self) -> bool {
        self.link.is_healthy()
    }

    /// Reads Redis's clock again, for the appends' fence, and counts the
    /// replicas they wait for (each second).
    pub async fn read_clock(&self) {
        if let Err(e) = self.link.read_clock().await {
            tracing::debug!(error = %e, "Redis's clock could not be read");
        }
        self.stream.count_replicas().await;
    }
}
