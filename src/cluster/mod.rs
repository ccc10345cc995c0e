//! Cluster mode: stateless nodes sharing one Redis (`--redis-url`).
//!
//! ```text
//! POST /api/events ──append (XADD, pipelined)──▶ Redis stream {prefix}:events ──▶ 202 with its id
//!                                                      │
//!   every node: one reader (XREAD BLOCK, in batches) ◀─┘ ──Hub::publish_at(id)──▶ local fan-out
//! ```
//!
//! An event is answered 202 only once Redis has it, and reaches subscribers
//! on every node (the ingesting one included) through that node's reader,
//! so every node publishes the same events in the same order with the same
//! ids (the stream ids, mapped one-to-one by [`wire`]). Local fan-out,
//! filters, coalescing and slow-subscriber handling are the embedded
//! mode's code. A resume that the local ring does not cover is served from
//! the stream (XRANGE). Idempotency keys are Redis keys (SET NX PX).
//!
//! While Redis cannot be reached, appends fail (the API answers 503 with
//! `Retry-After`), `/ready` is 503, and SSE clients stay connected with
//! their heartbeats; the reader reconnects with jittered backoff and
//! resumes after the last id it saw, so nothing accepted meanwhile by
//! other nodes is skipped.

mod append;
pub mod follow;
pub mod members;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamRangeReply;
use redis::AsyncCommands;

use crate::event::{wire, EventDraft, EventId};
use crate::hub::Hub;
use crate::state::idempotency::{Claim, Fingerprint};

/// Cluster settings, from the configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://…` or `rediss://…`.
    pub url: String,
    /// Prefix of every key, so that clusters can share one Redis.
    pub prefix: String,
    /// Most entries the stream keeps (approximate trimming).
    pub stream_max_len: usize,
    /// Oldest entry the stream keeps (approximate trimming, once a second).
    pub max_age: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_window: Duration,
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis did not answer, or refused.
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    /// The URL does not parse.
    #[error("--redis-url: {0}")]
    Url(String),
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// The cluster's own series.
#[derive(Debug, Clone)]
struct ClusterMetrics {
    round_trip: Histogram,
    connected: Gauge,
    reader_lag_ms: Gauge,
    reader_lag_entries: Gauge,
    reader_reconnects: Counter,
    skipped: Counter,
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
            skipped: Counter::default(),
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
            "cluster_history_lost",
            "Times this node found the stream had lost entries it had not read (live subscribers were sent a gap)",
            m.history_lost.clone(),
        );
        registry.register(
            "cluster_entries_skipped",
            "Stream entries this node could not read back (logged)",
            m.skipped.clone(),
        );
        m
    }
}

/// The reader's progress.
#[derive(Debug)]
struct ReaderProgress {
    /// The last event id read.
    last: AtomicU64,
    /// Entries read since start.
    read: AtomicU64,
    /// The stream's `entries-added` less `read` when first measured
    /// (`u64::MAX` before).
    base: AtomicU64,
}

/// A node's connection to the cluster.
pub struct Cluster {
    config: ClusterConfig,
    client: redis::Client,
    /// Multiplexed: concurrent requests share one connection and are
    /// pipelined by it, so ingest is not one round trip per event.
    commands: ConnectionManager,
    stream: String,
    /// Whether the last command or read reached Redis.
    healthy: AtomicBool,
    /// This node's name in leases.
    node_id: String,
    /// How far the reader got, for [`Cluster::measure_lag`].
    progress: ReaderProgress,
    /// To the appender task ([`append`]).
    appends: tokio::sync::mpsc::Sender<append::Append>,
    metrics: ClusterMetrics,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: show only the prefix.
        f.debug_struct("Cluster")
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

/// How long one Redis command may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the reader blocks in one XREAD.
const READ_BLOCK: Duration = Duration::from_millis(1000);
/// How long the reader waits before reading a busy stream again.
const READ_LINGER: Duration = Duration::from_millis(1);
/// Most entries per XREAD or XRANGE.
const READ_BATCH: usize = 1000;
/// A resume's page ([`Cluster::resume_page`]): XRANGE's entries, cut at
/// ARGV[4] bytes of ids and fields (the first entry always goes, so a page
/// is never empty while entries remain).
const RESUME_PAGE: &str = r"
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
local budget = tonumber(ARGV[4])
local out = {}
local used = 0
for i, e in ipairs(entries) do
  local size = #e[1]
  local fields = e[2]
  for j = 1, #fields do size = size + #fields[j] end
  if i > 1 and used + size > budget then break end
  used = used + size
  out[i] = e
end
return out
";

/// One page of a resume, from [`Cluster::resume_page`].
#[derive(Debug)]
pub struct ResumePage {
    /// The entries that decoded, oldest first.
    pub entries: Vec<(EventId, EventDraft)>,
    /// Entries read (decoded or not): 0 once nothing is left before the bound.
    pub read: usize,
    /// Bytes of their ids and fields.
    pub bytes: usize,
    /// The stream id of the last entry read: the next page starts after it.
    pub cursor: Option<String>,
}

impl Cluster {
    /// Connects (failing at once if Redis cannot be reached: a node that
    /// starts without its cluster would only accept what it cannot keep).
    pub async fn connect(
        config: ClusterConfig,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<Arc<Self>, ClusterError> {
        let client = crate::state::store::redis::open_client(&config.url)
            .map_err(|e| ClusterError::Url(e.to_string()))?;
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let commands = tokio::time::timeout(
            RESPONSE_TIMEOUT * 3,
            ConnectionManager::new_with_config(client.clone(), manager),
        )
        .await
        .map_err(|_| ClusterError::Unavailable("timed out connecting".into()))??;
        let stream = format!("{}:events", config.prefix);
        let (appends, queue) = tokio::sync::mpsc::channel(append::QUEUE);
        let cluster = Arc::new(Self {
            config,
            client,
            commands,
            stream,
            healthy: AtomicBool::new(true),
            node_id: uuid::Uuid::new_v4().simple().to_string(),
            metrics: metrics.register(ClusterMetrics::register),
            appends,
            progress: ReaderProgress {
                last: AtomicU64::new(0),
                read: AtomicU64::new(0),
                base: AtomicU64::new(u64::MAX),
            },
        });
        tokio::spawn(append::run(Arc::downgrade(&cluster), queue));
        Ok(cluster)
    }

    /// Whether Redis answered the last command and the reader is connected.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn observe<T>(
        &self,
        started: Instant,
        result: redis::RedisResult<T>,
    ) -> Result<T, ClusterError> {
        self.metrics
            .round_trip
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(v) => {
                self.healthy.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => {
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                {
                    self.healthy.store(false, Ordering::Relaxed);
                }
                Err(e.into())
            }
        }
    }

    /// Appends events to the stream, in one pipeline shared with the other
    /// requests appending now; their ids, in order.
    pub async fn append(&self, drafts: &[EventDraft]) -> Result<Vec<EventId>, ClusterError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let entries = drafts.iter().map(wire::encode).collect();
        let stopped = || ClusterError::Unavailable("the appender stopped".into());
        self.appends
            .send(append::Append { entries, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Whether the stream still holds everything after `after`: false when
    /// trimming or a Redis restart lost some of them (the client's last
    /// event, or an older one, is no longer its oldest entry).
    pub async fn holds_after(&self, after: EventId) -> Result<bool, ClusterError> {
        let mut conn = self.commands.clone();
        let started = Instant::now();
        let first: StreamRangeReply =
            self.observe(started, conn.xrange_count(&self.stream, "-", "+", 1).await)?;
        Ok(first
            .ids
            .first()
            .and_then(|e| wire::event_id(&e.id).ok())
            .is_some_and(|oldest| oldest <= after))
    }

    /// One page of a resume: the entries after the stream id `cursor` and
    /// before `before`, oldest first, at most `count` of them and, past the
    /// first, no more than `max_bytes` of fields. Redis cuts the page (a
    /// script over XRANGE), so a node never holds more than that of one
    /// resume, however large the events are.
    pub async fn resume_page(
        &self,
        cursor: &str,
        before: EventId,
        count: usize,
        max_bytes: usize,
    ) -> Result<ResumePage, ClusterError> {
        let mut conn = self.commands.clone();
        let started = Instant::now();
        let reply: redis::Value = self.observe(
            started,
            redis::Script::new(RESUME_PAGE)
                .key(&self.stream)
                .arg(format!("({cursor}"))
                .arg(format!("({}", wire::stream_id(before)))
                .arg(count.max(1))
                .arg(max_bytes)
                .invoke_async(&mut conn)
                .await,
        )?;
        let raw = self.entries(reply)?;
        let mut page = ResumePage {
            entries: Vec::with_capacity(raw.len()),
            read: raw.len(),
            bytes: 0,
            cursor: raw.last().map(|e| e.stream_id()),
        };
        for e in raw {
            page.bytes += e.size();
            page.entries.extend(self.read_back(e));
        }
        Ok(page)
    }

    /// Entries after `after` and before `before`, oldest first, at most
    /// `max`; and whether the stream still holds everything after `after`
    /// (false when trimming or a Redis restart lost some of them).
    pub async fn range(
        &self,
        after: EventId,
        before: EventId,
        max: usize,
    ) -> Result<(Vec<(EventId, EventDraft)>, bool), ClusterError> {
        // Complete only if the client's last event (or an older one) is
        // still in the stream: otherwise trimming, or a Redis that came back
        // empty, may have lost events after it.
        let mut complete = self.holds_after(after).await?;
        let mut conn = self.commands.clone();
        let mut out = Vec::new();
        let mut cursor = format!("({}", wire::stream_id(after));
        while out.len() < max {
            let started = Instant::now();
            let page: redis::Value = self.observe(
                started,
                redis::cmd("XRANGE")
                    .arg(&self.stream)
                    .arg(&cursor)
                    .arg("+")
                    .arg("COUNT")
                    .arg(READ_BATCH.min(max - out.len()))
                    .query_async(&mut conn)
                    .await,
            )?;
            let page = self.entries(page)?;
            if page.is_empty() {
                return Ok((out, complete));
            }
            for e in page {
                cursor = format!("({}", e.stream_id());
                match self.read_back(e) {
                    Some((id, _)) if id >= before => return Ok((out, complete)),
                    Some(entry) => out.push(entry),
                    None => {}
                }
            }
        }
        // Stopped at `max` before reaching `before`: the rest is not sent.
        complete = false;
        Ok((out, complete))
    }

    /// Sets the reader's lag gauges from the stream's head (once a second,
    /// from the sweeper): milliseconds between the newest entry and the
    /// last one read, and entries behind. Entries are counted from Redis's
    /// `entries-added` (Redis 7), relative to the first measurement, which
    /// assumes the reader was caught up then; a count that goes below what
    /// was read (a Redis that came back empty) starts over.
    pub async fn measure_lag(&self) {
        let info: redis::RedisResult<redis::Value> = self
            .stream_info()
            .query_async(&mut self.commands.clone())
            .await;
        let Ok(info) = info else {
            return; // no stream yet, or Redis away (said elsewhere)
        };
        let read_ms = EventId::from_u64(self.progress.last.load(Ordering::Relaxed)).unix_ms();
        if let Some(head) =
            wire::info_field(&info, "last-generated-id").and_then(|h| wire::event_id(&h).ok())
        {
            let behind = head.unix_ms().saturating_sub(read_ms);
            self.metrics.reader_lag_ms.set(behind as i64);
        }
        let Some(added) =
            wire::info_field(&info, "entries-added").and_then(|a| a.parse::<u64>().ok())
        else {
            return;
        };
        let read = self.progress.read.load(Ordering::Relaxed);
        let base = self.progress.base.load(Ordering::Relaxed);
        let behind = match added.checked_sub(read) {
            Some(unread_since_start) if base != u64::MAX && unread_since_start >= base => {
                unread_since_start - base
            }
            _ => {
                self.progress
                    .base
                    .store(added.saturating_sub(read), Ordering::Relaxed);
                0
            }
        };
        self.metrics.reader_lag_entries.set(behind as i64);
    }

    /// `XINFO STREAM` on the events stream (read with [`wire::info_field`]).
    fn stream_info(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("STREAM").arg(&self.stream);
        cmd
    }

    /// Trims entries older than the maximum age (approximately).
    pub async fn trim(&self) {
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let oldest_ms = trim_floor(now_ms, self.config.max_age);
        let started = Instant::now();
        let r: redis::RedisResult<i64> = redis::cmd("XTRIM")
            .arg(&self.stream)
            .arg("MINID")
            .arg("~")
            .arg(format!("{oldest_ms}-0"))
            .query_async(&mut self.commands.clone())
            .await;
        let _ = self.observe(started, r);
    }

    fn idempotency_key(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.config.prefix)
    }

    /// Claims an `Idempotency-Key` (already in its credential's namespace,
    /// see [`crate::state::idempotency::scoped_key`]) cluster-wide, for a request
    /// with `fingerprint`. The value is the fingerprint's hex while the
    /// event is in flight, then `<fingerprint>:<id>` (see
    /// [`Cluster::complete`]).
    pub async fn claim(&self, key: &str, fingerprint: &Fingerprint) -> Result<Claim, ClusterError> {
        let k = self.idempotency_key(key);
        let window = self.config.idempotency_window.as_millis().max(1) as u64;
        let mut conn = self.commands.clone();
        let started = Instant::now();
        let ours = fingerprint.hex();
        let set: Option<String> = self.observe(
            started,
            redis::cmd("SET")
                .arg(&k)
                .arg(&ours)
                .arg("NX")
                .arg("PX")
                .arg(window)
                .query_async(&mut conn)
                .await,
        )?;
        if set.is_some() {
            return Ok(Claim::New);
        }
        let started = Instant::now();
        let seen: Option<String> = self.observe(started, conn.get(&k).await)?;
        let Some(seen) = seen else {
            // Gone in between (expired or released): treat as busy.
            return Ok(Claim::InProgress);
        };
        let (stored, id) = seen.split_once(':').unwrap_or((seen.as_str(), ""));
        // A value that is not a fingerprint's hex is no match either.
        let Some(stored) = Fingerprint::from_hex(stored) else {
            return Ok(Claim::Mismatch);
        };
        Ok(Claim::of(&stored, id.parse::<EventId>().ok(), fingerprint))
    }

    /// Records the id published under a claimed key.
    pub async fn complete(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        id: EventId,
    ) -> Result<(), ClusterError> {
        let k = self.idempotency_key(key);
        let window = self.config.idempotency_window.as_millis().max(1) as u64;
        let started = Instant::now();
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg(&k)
            .arg(format!("{}:{id}", fingerprint.hex()))
            .arg("PX")
            .arg(window)
            .query_async(&mut self.commands.clone())
            .await;
        self.observe(started, r)
    }

    /// Forgets a claim whose event was not published (so a retry can).
    pub async fn release(&self, key: &str) {
        let k = self.idempotency_key(key);
        let _: redis::RedisResult<()> = self.commands.clone().del(&k).await;
    }

    /// Runs this node's reader until the process ends: every entry after
    /// the newest one now goes to `hub`, in stream order. The starting
    /// point is fixed before this returns, so that no event accepted once
    /// the node serves can fall before it.
    pub async fn start_reader(
        self: &Arc<Self>,
        hub: Arc<Hub>,
    ) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
        let started = Instant::now();
        let head: StreamRangeReply = self.observe(
            started,
            self.commands
                .clone()
                .xrevrange_count(&self.stream, "+", "-", 1)
                .await,
        )?;
        // Older entries are for resumes, from the stream.
        let last = head
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
        if let Ok(id) = wire::event_id(&last) {
            hub.resume_ids_above(id);
        }
        let me = self.clone();
        Ok(tokio::spawn(
            async move { me.read_forever(hub, last).await },
        ))
    }

    async fn read_forever(self: Arc<Self>, hub: Arc<Hub>, mut last: String) {
        let mut backoff = Duration::from_millis(100);
        let mut connected_before = false;
        loop {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(RESPONSE_TIMEOUT))
                .set_response_timeout(Some(READ_BLOCK + RESPONSE_TIMEOUT));
            let mut conn = match self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    self.disconnected(&e.to_string(), &mut backoff).await;
                    continue;
                }
            };
            if let Err(e) = self.check_history(&mut conn, &hub, &last).await {
                self.disconnected(&e.to_string(), &mut backoff).await;
                continue;
            }
            if connected_before {
                self.metrics.reader_reconnects.inc();
            }
            connected_before = true;
            self.metrics.connected.set(1);
            self.healthy.store(true, Ordering::Relaxed);
            backoff = Duration::from_millis(100);
            loop {
                let reply: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(READ_BATCH)
                    .arg("BLOCK")
                    .arg(READ_BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&self.stream)
                    .arg(&last)
                    .query_async(&mut conn)
                    .await;
                let reply = match reply {
                    Ok(r) => r,
                    Err(e) => {
                        self.disconnected(&e.to_string(), &mut backoff).await;
                        break;
                    }
                };
                let entries = match wire::read_entries(reply) {
                    Ok(entries) => entries,
                    Err(e) => {
                        // Not a stream reply: nothing to skip past, so read
                        // again from the same place after a pause.
                        tracing::error!(error = %e, "the stream reader got an unexpected reply");
                        self.disconnected(&e.to_string(), &mut backoff).await;
                        break;
                    }
                };
                let Some(newest) = entries.last() else {
                    continue;
                };
                last = newest.stream_id();
                if let Ok(id) = wire::event_id(&last) {
                    self.progress.last.store(id.as_u64(), Ordering::Relaxed);
                }
                self.progress
                    .read
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
                let busy = entries.len() > 1 && entries.len() < READ_BATCH;
                for entry in entries {
                    self.publish(&hub, entry);
                }
                if busy {
                    // More than one entry per read: the stream is busy, and
                    // reading again at once would fetch a handful. Lingering
                    // a moment reads them in one reply (one write, one
                    // parse) for at most READ_LINGER of latency; a quiet
                    // stream (one entry per read) never lingers, and one
                    // that is behind (full batches) reads on at once.
                    tokio::time::sleep(READ_LINGER).await;
                }
            }
        }
    }

    /// On (re)connecting: whether events after the last one this node read
    /// may be gone. They may when the stream no longer exists (Redis
    /// restarted empty), or when it no longer holds that entry although
    /// entries were added after it (a new stream, or one trimmed past a node
    /// that was away). Every live subscriber is then told so (`gap`)
    /// instead of waiting for them. A quiet stream trimmed down to nothing
    /// by age, with nothing added since, lost nothing this node had not
    /// read, and says nothing. (Redis does not record what trimming removed
    /// — `max-deleted-entry-id` follows XDEL only — so a quiet stream that
    /// was trimmed empty *and* received entries while this node was away
    /// is reported too: a gap notice that was not needed, never a silent
    /// loss.)
    async fn check_history(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        hub: &Hub,
        last: &str,
    ) -> redis::RedisResult<()> {
        if last == "0-0" {
            return Ok(());
        }
        let (exists, held): (bool, redis::Value) = redis::pipe()
            .cmd("EXISTS")
            .arg(&self.stream)
            .cmd("XRANGE")
            .arg(&self.stream)
            .arg(last)
            .arg(last)
            .query_async(conn)
            .await?;
        let lost = if !exists {
            true
        } else if wire::range_entries(held).is_ok_and(|e| !e.is_empty()) {
            false
        } else {
            let info: redis::Value = self.stream_info().query_async(conn).await?;
            wire::info_field(&info, "last-generated-id").is_none_or(|newest| newest != last)
        };
        if lost {
            self.metrics.history_lost.inc();
            tracing::error!(
                last_read = last,
                "the shared stream lost entries this node had not read (Redis restarted empty, or trimmed past it): live subscribers are told of a gap"
            );
            hub.history_lost();
        }
        Ok(())
    }

    fn publish(&self, hub: &Hub, entry: wire::RawEntry) {
        if let Some((id, draft)) = self.read_back(entry) {
            hub.publish_at(id, draft);
        }
    }

    /// The entries of an XRANGE reply; a malformed reply is counted as
    /// skipped and answered as Redis being unavailable.
    fn entries(&self, reply: redis::Value) -> Result<Vec<wire::RawEntry>, ClusterError> {
        wire::range_entries(reply).map_err(|e| {
            self.metrics.skipped.inc();
            ClusterError::Unavailable(e.to_string())
        })
    }

    /// An entry's event id and draft; an entry that cannot be read back
    /// is counted, logged and skipped (by the reader and every resume alike).
    fn read_back(&self, entry: wire::RawEntry) -> Option<(EventId, EventDraft)> {
        entry
            .decode()
            .map_err(|e| {
                self.metrics.skipped.inc();
                tracing::error!(error = %e, "a stream entry could not be read back; skipped");
            })
            .ok()
    }

    async fn disconnected(&self, why: &str, backoff: &mut Duration) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::error!(error = %why, "lost Redis: ingest and registration changes answer 503 until it is back");
        }
        self.metrics.connected.set(0);
        // Full jitter, so that every node does not reconnect in step.
        let wait = Duration::from_millis(fastrand::u64(1..=backoff.as_millis().max(1) as u64));
        tokio::time::sleep(wait).await;
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
    }
}

/// The oldest stream time kept: `max_age` before `now_ms`, or the epoch
/// when `max_age` reaches further back (a subtraction that wrapped would
/// trim every entry instead of none).
fn trim_floor(now_ms: u64, max_age: Duration) -> u64 {
    now_ms.saturating_sub(max_age.as_millis().min(u128::from(u64::MAX)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_max_age_longer_than_the_epoch_trims_nothing() {
        assert_eq!(trim_floor(10_000, Duration::from_secs(3)), 7_000);
        assert_eq!(
            trim_floor(10_000, Duration::from_secs(3600 * 24 * 365 * 100)),
            0
        );
        assert_eq!(trim_floor(10_000, Duration::MAX), 0);
    }
}
