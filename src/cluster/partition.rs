//! One partition of the shared event stream (`<prefix>:events`, or one
//! of `--redis-partitions` streams: see [`super::layout`]): its appender
//! ([`super::append`]), its reader (which hands what it reads to the
//! node's merge, [`super::merge`]), and the ranges that resumes, replays
//! and takeovers read of it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::streams::StreamRangeReply;
use redis::AsyncCommands;

use super::append;
use super::keys::KeyRecord;
use super::layout::Layout;
use super::link::RESPONSE_TIMEOUT;
use super::{ClusterError, ClusterMetrics, Link};
use crate::event::{wire, EventDraft, EventId};
use crate::hub::Hub;

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

/// One partition of the shared stream, as one node appends to and reads it.
pub struct Partition {
    link: Arc<Link>,
    /// Its number.
    index: usize,
    /// How the stream is split (and so how its ids map).
    layout: Layout,
    /// Its key.
    name: String,
    /// Its mark's key: the millisecond its next entries must be above
    /// (see the append script and [`Partition::watermark`]).
    mark: String,
    /// Most entries it keeps (approximate trimming).
    pub(super) max_len: usize,
    /// Oldest entry it keeps (approximate trimming, once a second).
    max_age: Duration,
    /// Replicas that must hold an append before it is acknowledged (of
    /// those connected: see [`Partition::replicas_to_wait_for`]).
    ack_replicas: u32,
    /// Replicas connected to the stream's primary, as last counted.
    replicas_connected: std::sync::atomic::AtomicU32,
    /// How far the reader got, for [`Partition::measure_lag`].
    progress: ReaderProgress,
    /// To the appender task ([`append`]).
    appends: tokio::sync::mpsc::Sender<append::Append>,
    /// This node's name in its batches' tokens ([`append`]).
    pub(super) writer: String,
    /// Batches appended so far (the tokens' sequence).
    pub(super) batches: AtomicU64,
    /// Batches whose reply did not come and whose outcome the appender is
    /// still asking Redis for: while there are any, nothing new is sent.
    pub(super) unsettled: AtomicUsize,
    metrics: ClusterMetrics,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How long the reader blocks in one XREAD.
const READ_BLOCK: Duration = Duration::from_millis(1000);
/// How long the reader waits before reading a busy stream again.
const READ_LINGER: Duration = Duration::from_millis(1);
/// Most entries per XREAD or XRANGE.
const READ_BATCH: usize = 1000;
/// A resume's page ([`Partition::resume_page`]): XRANGE's entries, cut at
/// ARGV[4] bytes of ids and fields (the first entry always goes, so a page
/// is never empty while entries remain); and 1 if it stopped before the
/// end (cut, or as many as asked for), else 0.
const RESUME_PAGE: &str = r"
local count = tonumber(ARGV[3])
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', count)
local budget = tonumber(ARGV[4])
local out = {}
local used = 0
local more = #entries == count and 1 or 0
for i, e in ipairs(entries) do
  local size = #e[1]
  local fields = e[2]
  for j = 1, #fields do size = size + #fields[j] end
  if i > 1 and used + size > budget then more = 1; break end
  used = used + size
  out[i] = e
end
return {more, out}
";

/// A partition's watermark ([`Partition::watermark`],
/// [`Partition::promise`]). KEYS: the stream, its mark. ARGV: the
/// exclusive start of the entries to return, their most (0: none, the
/// newest entry's id instead), and a millisecond to raise the mark to
/// (when Redis's clock has not passed it; at most 10 s ahead): every
/// later entry then has a later millisecond. Read-only
/// unless it raises the mark. Returns Redis's time, the mark, and the
/// entries after the start (or the newest id, "" for none): every later
/// entry has a millisecond of at least that time and above the mark
/// (`*` ids follow Redis's clock, and the append script keeps above the
/// mark).
const WATERMARK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = tonumber(redis.call('GET', KEYS[2]) or '0')
local push = math.min(tonumber(ARGV[3]), now + 10000)
if push >= now and push > m then
  m = push
  redis.call('SET', KEYS[2], string.format('%d', m))
end
local head = {string.format('%d', now), string.format('%d', m)}
local count = tonumber(ARGV[2])
if count == 0 then
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  head[3] = top[1] and top[1][1] or ''
  return head
end
head[3] = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', count)
return head
";

/// What [`Partition::holds_after`] needs. KEYS: the stream, its mark.
/// Returns the oldest entry's id ("" for none), whether the mark is there,
/// and, if it is, whether no entry was ever removed (`entries-added` is
/// the length).
const HISTORY_SCRIPT: &str = r"
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local mark = redis.call('EXISTS', KEYS[2])
if #first == 0 then return {'', mark, 0} end
if mark == 0 then return {first[1][1], 0, 0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local added, length
for i = 1, #info, 2 do
  if info[i] == 'entries-added' then added = info[i + 1] end
  if info[i] == 'length' then length = info[i + 1] end
end
return {first[1][1], mark, (added ~= nil and added == length) and 1 or 0}
";

static HISTORY: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(HISTORY_SCRIPT));
static RESUME: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RESUME_PAGE));
static MARK: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(WATERMARK));

/// What a partition's reader read, in stream order.
#[derive(Debug)]
pub(super) struct Read {
    /// Whose.
    pub partition: usize,
    /// The entries that decoded.
    pub entries: Vec<(EventId, EventDraft)>,
}

/// One page of a resume, from [`Partition::resume_page`].
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
    /// Whether it stopped before the bound (more may follow).
    pub more: bool,
}

/// A partition's promise, from [`Partition::watermark`]: its entries after
/// a point, and the id every later one will be above.
#[derive(Debug)]
pub(super) struct Watermark {
    /// The entries after the point asked for (at most as many as asked).
    pub entries: Vec<(EventId, EventDraft)>,
    /// The stream id of the last entry read, if any.
    pub cursor: Option<String>,
    /// Every entry not in `entries` is above this.
    pub floor: EventId,
    /// Redis's time then (Unix ms).
    pub clock_ms: u64,
}

/// A partition's promise, from [`Partition::promise`].
#[derive(Debug)]
pub(super) struct Promise {
    /// Its newest entry then.
    pub newest: Option<EventId>,
    /// Every entry after `newest` is above this.
    pub floor: EventId,
    /// Redis's time then (Unix ms).
    pub clock_ms: u64,
}

impl Partition {
    /// Partition `index` of `layout` on `link`, with its appender running.
    pub(super) fn open(
        link: Arc<Link>,
        index: usize,
        layout: Layout,
        max_len: usize,
        max_age: Duration,
        ack_replicas: u32,
        metrics: ClusterMetrics,
    ) -> Arc<Self> {
        let (appends, queue) = tokio::sync::mpsc::channel(append::QUEUE);
        let stream = Arc::new(Self {
            name: layout.key(link.target(), index, "events"),
            mark: layout.key(link.target(), index, "mark"),
            index,
            layout,
            link,
            max_len,
            max_age,
            ack_replicas,
            replicas_connected: std::sync::atomic::AtomicU32::new(0),
            progress: ReaderProgress {
                last: AtomicU64::new(0),
                read: AtomicU64::new(0),
                base: AtomicU64::new(u64::MAX),
            },
            appends,
            writer: uuid::Uuid::new_v4().simple().to_string(),
            batches: AtomicU64::new(0),
            unsettled: AtomicUsize::new(0),
            metrics,
        });
        tokio::spawn(append::run(Arc::downgrade(&stream), queue));
        stream
    }

    /// Its key.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Its mark's key.
    pub(super) fn mark(&self) -> &str {
        &self.mark
    }

    /// Its number.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How the stream is split.
    pub(super) fn layout(&self) -> Layout {
        self.layout
    }

    /// A key of this partition (in its hash tag, in a Redis Cluster).
    pub(super) fn key(&self, name: &str) -> String {
        self.layout.key(self.link.target(), self.index, name)
    }

    /// The event id of one of its stream ids.
    pub(super) fn id_of(&self, stream_id: &str) -> Result<EventId, wire::WireError> {
        self.layout.event_id(self.index, stream_id)
    }

    /// The connection it uses.
    pub(super) fn link(&self) -> &Link {
        &self.link
    }

    /// The cluster's series.
    pub(super) fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    /// Appends events to the stream, in one script call shared with the
    /// other requests appending now; their ids, in order. `key`, when
    /// given, records the first id under its Idempotency-Key in the same
    /// call. An error means the events are not stored and will not be
    /// (see the fence in `append.rs`); Redis is given until `gives_up`.
    pub async fn append(
        &self,
        drafts: &[EventDraft],
        key: Option<KeyRecord>,
        gives_up: Instant,
    ) -> Result<Vec<EventId>, ClusterError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let entries = drafts.iter().map(wire::encode).collect();
        let stopped = || ClusterError::NotStored("the appender stopped".into());
        self.appends
            .send(append::Append {
                entries,
                key,
                gives_up,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Whether it still holds everything after `after`: true when its
    /// oldest entry is the client's last event or an older one (else
    /// trimming or a Redis restart may have lost some). A partition of a
    /// split stream may have received its first entry after `after`: it
    /// has lost nothing either if no entry was ever removed from it (Redis
    /// 7's `entries-added` is its length), or if it has no entry and its
    /// mark is there (nothing was added, or what was expired by age).
    /// Either needs the mark, which only a split stream writes: a Redis
    /// that came back empty has none until a node starts.
    pub async fn holds_after(&self, after: EventId) -> Result<bool, ClusterError> {
        let started = Instant::now();
        let (oldest, mark, whole): (String, bool, bool) = self.link.observe(
            started,
            HISTORY
                .key(&self.name)
                .key(&self.mark)
                .invoke_async(&mut self.link.commands())
                .await,
        )?;
        if oldest.is_empty() {
            return Ok(mark);
        }
        Ok(self.id_of(&oldest).is_ok_and(|o| o <= after) || (mark && whole))
    }

    /// One page of a resume: the entries after the stream id `cursor` and
    /// before `before`, oldest first, at most `count` of them and, past the
    /// first, no more than `max_bytes` of fields. Redis cuts the page (a
    /// script over XRANGE), so a node never holds more than that of one
    /// resume, however large the events are.
    pub async fn resume_page(
        &self,
        cursor: &str,
        before: &str,
        count: usize,
        max_bytes: usize,
    ) -> Result<ResumePage, ClusterError> {
        let mut conn = self.link.commands();
        let started = Instant::now();
        let (more, reply): (i64, redis::Value) = self.link.observe(
            started,
            RESUME
                .key(&self.name)
                .arg(format!("({cursor}"))
                .arg(format!("({before}"))
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
            more: more == 1 && !raw.is_empty(),
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
        let mut conn = self.link.commands();
        let mut out = Vec::new();
        let mut cursor = format!("({}", self.layout.stream_id(after));
        while out.len() < max {
            let started = Instant::now();
            let page: redis::Value = self.link.observe(
                started,
                redis::cmd("XRANGE")
                    .arg(&self.name)
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

    /// How many replicas an append waits for: `--redis-ack-replicas`, or
    /// fewer while fewer are connected to the stream's primary (as counted
    /// each second). A primary that lost its replica (one just promoted
    /// by a failover) goes on acknowledging on its own write rather than
    /// refusing every event until a replica is back; while the replicas
    /// are there, nothing acknowledged can be lost by a failover.
    pub(super) fn replicas_to_wait_for(&self) -> u32 {
        self.ack_replicas
            .min(self.replicas_connected.load(Ordering::Relaxed))
    }

    /// Counts the replicas connected to the stream's primary (each
    /// second, from the sweeper), if appends wait for any.
    pub async fn count_replicas(&self) {
        if self.ack_replicas == 0 {
            return;
        }
        let mut cmd = redis::cmd("INFO");
        cmd.arg("replication");
        let started = Instant::now();
        let reply = self
            .link
            .commands()
            .query_at::<String>(cmd, &self.name)
            .await;
        let Ok(info) = self.link.observe(started, reply) else {
            return; // Redis away: said elsewhere
        };
        let connected = info
            .lines()
            .find_map(|l| l.strip_prefix("connected_slaves:"))
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(0);
        let before = self.replicas_connected.swap(connected, Ordering::Relaxed);
        if connected < self.ack_replicas && before != connected {
            tracing::warn!(
                connected,
                wanted = self.ack_replicas,
                "the stream's primary has fewer replicas than --redis-ack-replicas: events are acknowledged once the {connected} connected hold them"
            );
        }
        self.metrics
            .replicas_acking
            .set(i64::from(self.replicas_to_wait_for()));
    }

    /// The reader's lag, from the stream's head (once a second, from the
    /// sweeper): milliseconds between the newest entry and the last one
    /// read, and entries behind; `None` for what could not be read.
    /// Entries are counted from Redis's `entries-added` (Redis 7),
    /// relative to the first measurement, which assumes the reader was
    /// caught up then; a count that goes below what was read (a Redis
    /// that came back empty) starts over.
    pub async fn measure_lag(&self) -> (Option<u64>, Option<u64>) {
        let info: redis::RedisResult<redis::Value> = self
            .stream_info()
            .query_async(&mut self.link.commands())
            .await;
        let Ok(info) = info else {
            return (None, None); // no stream yet, or Redis away (said elsewhere)
        };
        let read_ms = EventId::from_u64(self.progress.last.load(Ordering::Relaxed)).unix_ms();
        let ms = wire::info_field(&info, "last-generated-id")
            .and_then(|h| self.id_of(&h).ok())
            .map(|head| head.unix_ms().saturating_sub(read_ms));
        let Some(added) =
            wire::info_field(&info, "entries-added").and_then(|a| a.parse::<u64>().ok())
        else {
            return (ms, None);
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
        (ms, Some(behind))
    }

    /// `XINFO STREAM` on the events stream (read with [`wire::info_field`]).
    fn stream_info(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("STREAM").arg(&self.name);
        cmd
    }

    /// Trims entries older than the maximum age (approximately).
    pub async fn trim(&self) {
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let oldest_ms = trim_floor(now_ms, self.max_age);
        let started = Instant::now();
        let r: redis::RedisResult<i64> = redis::cmd("XTRIM")
            .arg(&self.name)
            .arg("MINID")
            .arg("~")
            .arg(format!("{oldest_ms}-0"))
            .query_async(&mut self.link.commands())
            .await;
        let _ = self.link.observe(started, r);
    }

    /// Its newest entry's stream id now ("0-0" for none): where a reader
    /// that starts now begins.
    pub(super) async fn head(&self) -> Result<String, ClusterError> {
        let started = Instant::now();
        let head: StreamRangeReply = self.link.observe(
            started,
            self.link
                .commands()
                .xrevrange_count(&self.name, "+", "-", 1)
                .await,
        )?;
        Ok(head
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()))
    }

    /// Its entries after the stream id `after` (at most `count`), and a
    /// floor every later entry will be above (see [`WATERMARK`]); with
    /// `push_ms` ahead of Redis's clock, the mark is raised to it first.
    /// How the merge learns that a quiet partition has nothing to come
    /// before an event of another one.
    pub(super) async fn watermark(
        &self,
        after: &str,
        push_ms: u64,
        count: usize,
    ) -> Result<Watermark, ClusterError> {
        let started = Instant::now();
        let (clock_ms, mark, reply): (u64, u64, redis::Value) = self.link.observe(
            started,
            MARK.key(&self.name)
                .key(&self.mark)
                .arg(format!("({after}"))
                .arg(count.max(1))
                .arg(push_ms)
                .invoke_async(&mut self.link.commands())
                .await,
        )?;
        let raw = self.entries(reply)?;
        self.metrics
            .read_bytes
            .inc_by(raw.iter().map(|e| e.size() as u64).sum());
        let full = raw.len() >= count.max(1);
        let cursor = raw.last().map(|e| e.stream_id());
        let entries: Vec<_> = raw.into_iter().filter_map(|e| self.read_back(e)).collect();
        let last = cursor.as_deref().and_then(|c| self.id_of(c).ok());
        let floor = if full {
            last.unwrap_or_default()
        } else {
            Layout::floor_after(clock_ms, mark).max(last.unwrap_or_default())
        };
        Ok(Watermark {
            entries,
            cursor,
            floor,
            clock_ms,
        })
    }

    /// Writes its mark (0) if it has none: a partition with a mark and no
    /// entries is known to have lost none ([`Partition::holds_after`]).
    pub(super) async fn ensure_mark(&self) -> Result<(), ClusterError> {
        let started = Instant::now();
        let _: Option<String> = self.link.observe(
            started,
            redis::cmd("SET")
                .arg(&self.mark)
                .arg(0)
                .arg("NX")
                .query_async(&mut self.link.commands())
                .await,
        )?;
        Ok(())
    }

    /// A promise, lighter than [`Partition::watermark`]: no entry is read
    /// (the reader brings them); the newest entry's id now, if any, and a
    /// floor every entry after it will be above, with Redis's clock.
    pub(super) async fn promise(&self, push_ms: u64) -> Result<Promise, ClusterError> {
        let started = Instant::now();
        let (clock_ms, mark, top): (u64, u64, String) = self.link.observe(
            started,
            MARK.key(&self.name)
                .key(&self.mark)
                .arg("-")
                .arg(0)
                .arg(push_ms)
                .invoke_async(&mut self.link.commands())
                .await,
        )?;
        let newest = (!top.is_empty())
            .then(|| self.id_of(&top))
            .transpose()
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        Ok(Promise {
            newest,
            floor: Layout::floor_after(clock_ms, mark),
            clock_ms,
        })
    }

    /// Runs this partition's reader until the process ends or the merge
    /// is gone: every entry after the stream id `last` goes to `merge`,
    /// in stream order. `last` is an entry's id, or (`last_is_entry`
    /// false) a point between entries: a partition joined by the merge
    /// starts at one, and has no entry of its own to check the stream
    /// against ([`Partition::check_history`]) until it has read one.
    pub(super) fn start_reader(
        self: &Arc<Self>,
        hub: Arc<Hub>,
        merge: tokio::sync::mpsc::Sender<Read>,
        last: String,
        last_is_entry: bool,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.read_forever(hub, merge, last, last_is_entry).await })
    }

    async fn read_forever(
        self: Arc<Self>,
        hub: Arc<Hub>,
        merge: tokio::sync::mpsc::Sender<Read>,
        mut last: String,
        mut last_is_entry: bool,
    ) {
        let mut backoff = Duration::from_millis(100);
        let mut connected_before = false;
        loop {
            let mut conn = match self
                .link
                .own_connection(READ_BLOCK + RESPONSE_TIMEOUT)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    self.disconnected(&e.to_string(), &mut backoff).await;
                    continue;
                }
            };
            let checked = if last_is_entry {
                self.check_history(&mut conn, &hub, &last).await
            } else {
                Ok(())
            };
            if let Err(e) = checked {
                self.disconnected(&e.to_string(), &mut backoff).await;
                continue;
            }
            if connected_before {
                self.metrics.reader_reconnects.inc();
            }
            connected_before = true;
            self.metrics.connected.set(1);
            self.link.set_healthy(true);
            backoff = Duration::from_millis(100);
            loop {
                let reply: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(READ_BATCH)
                    .arg("BLOCK")
                    .arg(READ_BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&self.name)
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
                last_is_entry = true;
                if let Ok(id) = self.id_of(&last) {
                    self.progress.last.store(id.as_u64(), Ordering::Relaxed);
                }
                self.progress
                    .read
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
                let busy = entries.len() > 1 && entries.len() < READ_BATCH;
                self.metrics
                    .read_bytes
                    .inc_by(entries.iter().map(|e| e.size() as u64).sum());
                let read = Read {
                    partition: self.index,
                    entries: entries
                        .into_iter()
                        .filter_map(|e| self.read_back(e))
                        .collect(),
                };
                if merge.send(read).await.is_err() {
                    return; // the node is stopping
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
        conn: &mut crate::redis_target::Commands,
        hub: &Hub,
        last: &str,
    ) -> redis::RedisResult<()> {
        if last == "0-0" {
            return Ok(());
        }
        let (exists, held): (bool, redis::Value) = redis::pipe()
            .cmd("EXISTS")
            .arg(&self.name)
            .cmd("XRANGE")
            .arg(&self.name)
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
            .decode_as(|s| self.id_of(s))
            .map_err(|e| {
                self.metrics.skipped.inc();
                tracing::error!(error = %e, "a stream entry could not be read back; skipped");
            })
            .ok()
    }

    async fn disconnected(&self, why: &str, backoff: &mut Duration) {
        if self.link.set_healthy(false) {
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
