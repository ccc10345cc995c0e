//! Group commit of appends, fenced: concurrent ingest requests share one
//! script call, and a 503 means the events are not, and never will be,
//! in the stream.
//!
//! Every request hands its encoded entries to one appender task, which
//! takes everything waiting (up to [`MAX_REQUESTS_PER_BATCH`]) and writes it
//! to Redis as one call of [`APPEND`]: one write, one wake-up of Redis and
//! one reply per batch instead of per request. Batches do not wait for
//! each other (the connection pipelines them, in order), so a batch adds
//! no latency beyond one turn of the scheduler.
//!
//! The fence. A request waits for Redis's reply at most [`BUDGET`]. The
//! script carries the server time by which it must run (see
//! [`super::clock::ServerClock::fence`]) and writes nothing if it runs
//! later, so a write that Redis only gets to after a stall cannot land
//! behind a 503. When the reply does not come in time, the node cannot
//! tell "not run yet" from "run, reply not sent yet" (Redis stopped
//! between running the script and writing its reply, which under load is
//! a real share of its time): it asks, once the fence has passed in
//! Redis's time, whether the batch's token (written by the script with
//! the entries) is there, and goes on asking (over a new connection if
//! need be) until Redis answers or [`OUTCOME_WAIT`] is over. There: the
//! events are stored, and answered 202 with their ids. Absent: they are
//! not, and never will be (503). Still no answer: the outcome is unknown,
//! and said so (504); an `Idempotency-Key` retry then gets the first id
//! if the events were stored, because the script records it with them.
//!
//! While a batch's outcome is unknown, later batches are not sent at all
//! and are answered 503 at once: Redis is not answering, and a write that
//! was never sent is one whose 503 is certainly true.

use std::sync::atomic::Ordering;
use std::sync::{LazyLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::keys::KeyRecord;
use super::link::within;
use super::partition::Partition;
use super::ClusterError;
use crate::event::EventId;

/// Most requests in one batch (a request may hold many entries).
const MAX_REQUESTS_PER_BATCH: usize = 256;
/// Requests that may wait for the appender before senders wait too.
pub(super) const QUEUE: usize = 4096;
/// How long a request waits for Redis to store its events.
pub const BUDGET: Duration = Duration::from_millis(1500);
/// How long, past [`BUDGET`], the node goes on asking whether a write
/// whose reply did not come was run, before it answers that the outcome
/// is unknown: long enough to outlast a stall of Redis of several seconds
/// (a fork, a full disk, a paused VM) with a true answer.
pub const OUTCOME_WAIT: Duration = Duration::from_secs(20);
/// Between two attempts at learning a batch's outcome when Redis refused
/// or dropped the connection.
const CHECK_RETRY: Duration = Duration::from_millis(100);
/// How long a check that found the batch waits for replicas to hold it.
const CHECK_WAIT: Duration = Duration::from_millis(1000);
/// Of a request's time, what is kept for taking back a batch that too few
/// replicas confirmed.
const TAKE_BACK_RESERVE: Duration = Duration::from_millis(300);
/// How long a batch's token stays in Redis (its last check comes within
/// [`BUDGET`] and [`OUTCOME_WAIT`], in Redis's time too: a stalled Redis
/// does not expire keys either).
const TOKEN_TTL: Duration = Duration::from_secs(60);

/// Appends a batch if Redis runs it by the fence.
///
/// KEYS: the stream, the batch's token, the partition's mark, then the
/// Idempotency-Keys of its requests. ARGV: the fence (server Unix ms),
/// MAXLEN, the token's TTL (ms), the number of entries, the first sequence
/// number an id cannot hold (65,536 for the one stream, which has no
/// mark); then per entry its number of fields, the KEYS index of its
/// Idempotency-Key (0 for none), the key's value prefix (the request's
/// fingerprint) and TTL (ms), and its fields. Returns the stream ids, or
/// nil (and writes nothing) past the fence. The token holds the first and
/// last id (the entries of one script are consecutive in the stream).
///
/// A partition of a split stream keeps two promises that the merge of
/// its node builds on (`merge.rs`). Its entries' milliseconds are above
/// its mark (which a watermark raises): `<mark + 1>-*` when Redis's clock
/// has not passed it. And a sequence number stays below the limit: the
/// entry after one that reaches its last value starts the next
/// millisecond, and a script that ends there raises the mark to it, so the
/// next script does too. An explicit id below the stream's top (a top
/// that had already moved past the mark) is refused by Redis; `*` is
/// above both then.
const APPEND_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[1]) then
  return false
end
local limit = tonumber(ARGV[5])
local split = limit < 65536
local spec = '*'
if split then
  local mark = tonumber(redis.call('GET', KEYS[3]) or '0')
  if now <= mark then spec = string.format('%d-*', mark + 1) end
end
local ids = {}
local i = 6
for e = 1, tonumber(ARGV[4]) do
  local n = tonumber(ARGV[i])
  local k = tonumber(ARGV[i + 1])
  local id
  if spec == '*' then
    id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, i + 4, i + 3 + 2 * n))
  else
    id = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], spec, unpack(ARGV, i + 4, i + 3 + 2 * n))
    if type(id) == 'table' and id.err then
      id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, i + 4, i + 3 + 2 * n))
    end
    spec = '*'
  end
  if split then
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    if tonumber(seq) >= limit - 1 then spec = string.format('%d-*', tonumber(ms) + 1) end
  end
  ids[e] = id
  if k > 0 then
    redis.call('SET', KEYS[k], ARGV[i + 2] .. ':' .. id, 'PX', ARGV[i + 3])
  end
  i = i + 4 + 2 * n
end
if spec ~= '*' then
  local ms = tonumber(string.match(ids[#ids], '^(%d+)-'))
  if ms > tonumber(redis.call('GET', KEYS[3]) or '0') then
    redis.call('SET', KEYS[3], string.format('%d', ms))
  end
end
redis.call('SET', KEYS[2], ids[1] .. ' ' .. ids[#ids], 'PX', ARGV[3])
return ids
";

/// Whether a batch whose reply did not come was run. KEYS: the stream and
/// the token; ARGV: the fence, the token's TTL (ms). -1 while the fence has
/// not passed (the script may still run), 0 if it was not run (and never
/// will be), else the stream ids it wrote. A token found is written again
/// (its TTL renewed): a write of this connection, so that a `WAIT` after it
/// waits for the replicas to hold the batch too, whichever connection
/// wrote it.
const CHECK_SCRIPT: &str = r"
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) <= tonumber(ARGV[1]) then
  return -1
end
local v = redis.call('GET', KEYS[2])
if not v then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local first, last = string.match(v, '^(%S+) (%S+)')
local ids = {}
for j, e in ipairs(redis.call('XRANGE', KEYS[1], first, last)) do ids[j] = e[1] end
return ids
";

/// Takes back a batch that too few replicas confirmed. KEYS: the stream,
/// the token, then the Idempotency-Keys the batch recorded; ARGV: the
/// number of ids, the ids, then each key's value as recorded (a key that
/// holds anything else is another request's, and stays).
const TAKE_BACK_SCRIPT: &str = r"
local n = tonumber(ARGV[1])
for i = 1, n do redis.call('XDEL', KEYS[1], ARGV[1 + i]) end
redis.call('DEL', KEYS[2])
for k = 3, #KEYS do
  if redis.call('GET', KEYS[k]) == ARGV[n + k - 1] then redis.call('DEL', KEYS[k]) end
end
return n
";

static APPEND: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(APPEND_SCRIPT));
static TAKE_BACK: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(TAKE_BACK_SCRIPT));
static CHECK: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CHECK_SCRIPT));

/// One request's entries, and where its ids go.
pub(super) struct Append {
    pub entries: Vec<Vec<(&'static str, Bytes)>>,
    /// Its Idempotency-Key, recorded with its first entry's id.
    pub key: Option<KeyRecord>,
    /// When the request stops waiting (its 503).
    pub gives_up: Instant,
    pub reply: oneshot::Sender<Result<Vec<EventId>, ClusterError>>,
}

/// Runs until the stream is dropped or every sender is gone.
pub(super) async fn run(stream: Weak<Partition>, mut queue: mpsc::Receiver<Append>) {
    let mut batch = Vec::with_capacity(MAX_REQUESTS_PER_BATCH);
    while queue.recv_many(&mut batch, MAX_REQUESTS_PER_BATCH).await > 0 {
        if batch.len() < MAX_REQUESTS_PER_BATCH {
            // Requests that are ready to run now join this batch: the task
            // that woke the appender is often the first of several.
            tokio::task::yield_now().await;
            while batch.len() < MAX_REQUESTS_PER_BATCH {
                match queue.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
        }
        let Some(stream) = stream.upgrade() else {
            return;
        };
        let requests = std::mem::replace(&mut batch, Vec::with_capacity(MAX_REQUESTS_PER_BATCH));
        tokio::spawn(async move { stream.write_batch(requests).await });
    }
}

/// What became of one batch.
enum Written {
    /// Stored, with these stream ids (as Redis answered them).
    Stored(Vec<redis::Value>),
    /// Not stored, and never will be.
    NotStored(String),
    /// Redis did not say, in [`OUTCOME_WAIT`], whether it stored them.
    Unknown(String),
}

impl Partition {
    /// Writes one batch in one script call and answers each request.
    async fn write_batch(&self, requests: Vec<Append>) {
        let gives_up = requests
            .iter()
            .map(|r| r.gives_up)
            .min()
            .unwrap_or_else(|| Instant::now() + BUDGET);
        let unsettled = self.unsettled.load(Ordering::Acquire);
        let written = match self.link().clock().fence(gives_up) {
            _ if unsettled > 0 => Written::NotStored(format!(
                "Redis has not answered whether it stored {unsettled} earlier writes, so this one was not sent"
            )),
            Some(fence) => self.write_fenced(&requests, fence, gives_up).await,
            None => Written::NotStored("Redis's clock has not been read yet".into()),
        };
        let replies = match written {
            Written::Stored(ids) => ids,
            Written::NotStored(why) => {
                for r in requests {
                    let _ = r.reply.send(Err(ClusterError::NotStored(why.clone())));
                }
                return;
            }
            Written::Unknown(why) => {
                for r in requests {
                    let _ = r.reply.send(Err(ClusterError::OutcomeUnknown(why.clone())));
                }
                return;
            }
        };
        let mut replies = replies.into_iter();
        for r in requests {
            let ids = (&mut replies)
                .take(r.entries.len())
                .map(|v| self.added_id(&v))
                .collect::<Result<Vec<_>, _>>()
                .and_then(|ids| {
                    if ids.len() == r.entries.len() {
                        Ok(ids)
                    } else {
                        Err(ClusterError::Unavailable(
                            "Redis answered fewer appends than sent".into(),
                        ))
                    }
                });
            // The request may have given up (client gone): its events are
            // in the stream all the same, as with any accepted write.
            let _ = r.reply.send(ids);
        }
    }

    /// Runs [`APPEND`] for `requests`, then, if its reply does not come by
    /// `gives_up`, [`CHECK`]s what became of it.
    async fn write_fenced(&self, requests: &[Append], fence: u64, gives_up: Instant) -> Written {
        let token = self.next_token();
        let mut call = APPEND.prepare_invoke();
        call.key(self.name()).key(&token).key(self.mark());
        let mut key_index = 4;
        let entries: usize = requests.iter().map(|r| r.entries.len()).sum();
        call.arg(fence)
            .arg(self.max_len)
            .arg(TOKEN_TTL.as_millis() as u64)
            .arg(entries)
            .arg(self.layout().seq_limit());
        for r in requests {
            for (n, entry) in r.entries.iter().enumerate() {
                call.arg(entry.len());
                match r.key.as_ref().filter(|_| n == 0) {
                    Some(k) => {
                        call.key(&k.key);
                        call.arg(key_index).arg(&k.value).arg(k.ttl_ms);
                        key_index += 1;
                    }
                    None => {
                        call.arg(0).arg("").arg(0);
                    }
                }
                for (field, value) in entry {
                    call.arg(*field).arg(&value[..]);
                }
            }
        }
        let started = Instant::now();
        let mut conn = self.link().commands();
        let wanted = self.replicas_to_wait_for();
        let (reply, replicas) = if wanted == 0 {
            (within(gives_up, call.invoke_async(&mut conn)).await, None)
        } else {
            let wait = gives_up
                .saturating_duration_since(Instant::now())
                .saturating_sub(TAKE_BACK_RESERVE);
            match within(gives_up, invoke_then_wait(&call, wanted, wait, &mut conn)).await {
                Ok((ids, replicas)) => (Ok(ids), Some(replicas)),
                Err(e) => (Err(e), None),
            }
        };
        let why = match self.link().observe(started, reply) {
            Ok(redis::Value::Array(ids)) => match replicas {
                Some(confirmed) if confirmed < i64::from(wanted) => {
                    self.metrics().appends_unreplicated.inc();
                    return self
                        .take_back(requests, &token, &ids, confirmed, wanted)
                        .await;
                }
                _ => return Written::Stored(ids),
            },
            Ok(redis::Value::Nil) => {
                self.metrics().appends_late.inc();
                return Written::NotStored(format!(
                    "Redis ran the write after its {} ms deadline, and so did not store it",
                    BUDGET.as_millis()
                ));
            }
            Ok(other) => format!("unexpected reply {other:?}"),
            Err(e) => e.to_string(),
        };
        self.metrics().appends_unanswered.inc();
        self.unsettled.fetch_add(1, Ordering::AcqRel);
        let outcome = self.check(requests, &token, fence, gives_up, &why).await;
        self.unsettled.fetch_sub(1, Ordering::AcqRel);
        outcome
    }

    /// Takes back a batch that `confirmed` replicas, fewer than asked,
    /// held in time: not acknowledged, so not left in the stream either.
    /// If even that fails, the primary is gone, and the batch may or may
    /// not survive on the replica it fails over to: a retry with the same
    /// `Idempotency-Key` is then answered with the first id if it did.
    async fn take_back(
        &self,
        requests: &[Append],
        token: &str,
        ids: &[redis::Value],
        confirmed: i64,
        wanted: u32,
    ) -> Written {
        let short = format!(
            "{confirmed} of the {wanted} replicas the write waited for confirmed it in time"
        );
        let texts: Vec<String> = ids
            .iter()
            .filter_map(|v| redis::from_redis_value_ref::<String>(v).ok())
            .collect();
        let mut call = TAKE_BACK.prepare_invoke();
        call.key(self.name()).key(token).arg(texts.len());
        for id in &texts {
            call.arg(id);
        }
        let mut next = 0;
        for r in requests {
            if let (Some(k), Some(first)) = (&r.key, texts.get(next)) {
                call.key(&k.key);
                call.arg(format!("{}:{first}", k.value));
            }
            next += r.entries.len();
        }
        let started = Instant::now();
        let until = Instant::now() + TAKE_BACK_RESERVE;
        let mut conn = self.link().commands();
        match self
            .link()
            .observe(started, within(until, call.invoke_async::<i64>(&mut conn)).await)
        {
            Ok(_) => Written::NotStored(format!("{short}, and it was taken back")),
            Err(e) => Written::NotStored(format!(
                "{short}, and it could not be taken back ({e}): it may survive the failover; retry with the same Idempotency-Key"
            )),
        }
    }

    /// Learns whether the batch of `token` was stored, once the fence has
    /// passed in Redis's time; asks again while Redis refuses or drops
    /// the connection, until [`OUTCOME_WAIT`] is over. A batch found is
    /// stored only once the replicas the appends wait for hold it (else
    /// it is taken back), as if its reply had come.
    async fn check(
        &self,
        requests: &[Append],
        token: &str,
        fence: u64,
        gives_up: Instant,
        why: &str,
    ) -> Written {
        tokio::time::sleep_until(gives_up.into()).await;
        let deadline = gives_up + OUTCOME_WAIT;
        loop {
            let mut call = CHECK.prepare_invoke();
            call.key(self.name())
                .key(token)
                .arg(fence)
                .arg(TOKEN_TTL.as_millis() as u64);
            let mut conn = self.link().commands();
            let started = Instant::now();
            let wanted = self.replicas_to_wait_for();
            let reply = if wanted == 0 {
                within(deadline, call.invoke_async(&mut conn))
                    .await
                    .map(|ids| (ids, None))
            } else {
                within(
                    deadline,
                    invoke_then_wait(&call, wanted, CHECK_WAIT, &mut conn),
                )
                .await
                .map(|(ids, confirmed)| (ids, Some(confirmed)))
            };
            // Nothing listens where the one Redis was: it died, and what it
            // ran before its death is gone with it (unless it kept it on
            // disk and comes back with it; see docs/cluster.md).
            let dead =
                self.link().is_single() && matches!(&reply, Err(e) if e.is_connection_refusal());
            let pause = match self.link().observe(started, reply) {
                Ok((redis::Value::Array(ids), Some(confirmed)))
                    if confirmed < i64::from(wanted) =>
                {
                    self.metrics().appends_unreplicated.inc();
                    return self
                        .take_back(requests, token, &ids, confirmed, wanted)
                        .await;
                }
                Ok((redis::Value::Array(ids), _)) => return Written::Stored(ids),
                Ok((redis::Value::Int(0), _)) => return Written::NotStored(format!(
                    "{why}; Redis says it did not run it: the write was not stored and will not be"
                )),
                // Redis's clock has not passed the fence yet.
                Ok(_) => Duration::from_millis(50),
                Err(_) if dead => {
                    return Written::NotStored(format!(
                        "{why}; Redis is not running (it refuses connections): the write is lost with it"
                    ))
                }
                Err(_) => CHECK_RETRY,
            };
            if Instant::now() + pause >= deadline {
                return Written::Unknown(format!(
                    "{why}; Redis did not say within {} s whether it stored the write: retry with the same Idempotency-Key to learn it",
                    OUTCOME_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// A name for one batch's token, unique to this node and batch.
    fn next_token(&self) -> String {
        let n = self
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.key(&format!("append:{}:{n}", self.writer))
    }

    /// The event id in an XADD reply.
    fn added_id(&self, reply: &redis::Value) -> Result<EventId, ClusterError> {
        let bad = |e: String| ClusterError::Unavailable(e);
        match reply {
            redis::Value::BulkString(b) => self.id_of(&String::from_utf8_lossy(b)),
            redis::Value::SimpleString(s) => self.id_of(s),
            other => return Err(bad(format!("XADD answered {other:?}"))),
        }
        .map_err(|e| bad(e.to_string()))
    }
}

/// Runs `call` and then WAITs, in one pipeline to the key's primary, for
/// `wanted` replicas to hold what this connection wrote, at most `wait`:
/// the script's reply (nil past the fence) and how many confirmed.
async fn invoke_then_wait(
    call: &redis::ScriptInvocation<'_>,
    wanted: u32,
    wait: Duration,
    conn: &mut crate::redis_target::Commands,
) -> redis::RedisResult<(redis::Value, i64)> {
    let mut pipe = redis::pipe();
    pipe.invoke_script(call)
        .cmd("WAIT")
        .arg(wanted)
        .arg(wait.as_millis().max(1) as u64);
    match pipe.query_async(conn).await {
        // A primary that has not run it yet (a promoted replica: the
        // script cache is not replicated) refuses the script, and its
        // WAIT, with no new write to wait for, answers at once; so
        // loading it and sending the pipeline again is safe.
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            call.load_async(conn).await?;
            pipe.query_async(conn).await
        }
        r => r,
    }
}
