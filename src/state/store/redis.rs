//! Cluster mode's store: registrations, event types and the like as Redis
//! keys, one per document (`<prefix>:doc:<collection>:<key>`, hash-tagged
//! on a Redis Cluster, so all of them share a slot), so that every node
//! reads and writes the same ones. A registration's key expires with it
//! (PXAT). Every change is announced on `<prefix>:changes`, and each node
//! reloads the collection named there.
//!
//! The API is synchronous: the store is only ever called on blocking
//! threads (`http::store_write`, the sweeper) or at start.

use std::sync::Mutex;
use std::time::Duration;

use redis::Commands;

use crate::redis_target::{BlockingConnection, RedisMode, RedisTarget};

/// How long one store command may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Compare-and-set: writes ARGV[1] only if the key holds ARGV[2]; PXAT
/// ARGV[3] when it is not 0. Returns 1 when written.
const PUT_IF: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
if ARGV[3] ~= '0' then redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[3])
else redis.call('SET', KEYS[1], ARGV[1]) end
return 1";

/// Compare-and-delete. Returns 1 when deleted.
const DELETE_IF: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1";

/// The name of the channel changes are announced on (a key name, see
/// [`RedisTarget::key`]).
pub const CHANGES: &str = "changes";

/// Documents in Redis.
pub struct RedisDocuments {
    target: RedisTarget,
    conn: Mutex<Option<BlockingConnection>>,
}

impl std::fmt::Debug for RedisDocuments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDocuments")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Whether the Redis on `c` is what `mode` expects, and can hold a
/// cluster's data: in single and sentinel mode not a Redis Cluster node
/// (it answers MOVED for most keys), a replica (it refuses writes) or a
/// Sentinel (it stores nothing), each of which would fail later with a
/// less helpful error; in cluster mode, a cluster whose slots are served.
/// `Err` says what it is instead.
fn role_of(c: &mut BlockingConnection, mode: RedisMode) -> redis::RedisResult<Result<(), String>> {
    if mode == RedisMode::Cluster {
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(c)?;
        return Ok(match info_value(&info, "cluster_state") {
            Some("ok") => Ok(()),
            state => Err(format!(
                "answers cluster_state:{}: not every slot is served yet",
                state.unwrap_or("?")
            )),
        });
    }
    let info: String = redis::cmd("INFO").arg("server").query(c)?;
    match info_value(&info, "redis_mode") {
        Some("cluster") => {
            return Ok(Err(
                "is a node of a Redis Cluster (redis_mode:cluster): give --redis-mode cluster".into(),
            ))
        }
        Some("sentinel") => {
            return Ok(Err(
                "is a Sentinel, which stores no data: give --redis-mode sentinel and --redis-sentinel-master".into(),
            ))
        }
        _ => {}
    }
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(c)?;
    let replica = match role.first() {
        Some(redis::Value::BulkString(b)) => b == b"slave",
        Some(redis::Value::SimpleString(s)) => s == "slave",
        _ => false,
    };
    Ok(if replica {
        Err("is a replica, which refuses writes: give its primary's address".into())
    } else {
        Ok(())
    })
}

/// The value of `name` in an INFO reply (`name:value` lines).
fn info_value<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// A Redis command failed (the store answers 503).
pub type DocError = String;

impl RedisDocuments {
    /// Connects now, so that an unreachable Redis, or one that is not what
    /// `--redis-mode` says, stops the start.
    pub fn connect(target: RedisTarget) -> Result<Self, DocError> {
        let docs = Self {
            target,
            conn: Mutex::new(None),
        };
        let at = docs.target.describe();
        docs.with(|c| redis::cmd("PING").query::<String>(c).map(|_| ()))
            .map_err(|e| {
                format!(
                    "cannot reach Redis at {at} (--redis-url): {e}; start it, or leave --redis-url out to run one embedded node"
                )
            })?;
        let mode = docs.target.mode();
        docs.with(|c| role_of(c, mode))?.map_err(|why| {
            format!(
                "--redis-url: Redis at {at} {why} (--redis-mode {})",
                mode.name()
            )
        })?;
        Ok(docs)
    }

    fn key(&self, collection: &str, key: &str) -> String {
        self.target.key(&format!("doc:{collection}:{key}"))
    }

    /// Runs `f` on the connection, opening it if needed; a failed command
    /// drops it, so the next call reconnects.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut BlockingConnection) -> redis::RedisResult<T>,
    ) -> Result<T, DocError> {
        let mut slot = crate::sync::lock(&self.conn);
        if slot.is_none() {
            let c = self
                .target
                .blocking(TIMEOUT)
                .map_err(|e| format!("Redis: {e}"))?;
            *slot = Some(c);
        }
        let conn = slot.as_mut().expect("just opened");
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                *slot = None;
                Err(format!("Redis: {e}"))
            }
        }
    }

    fn announce(&self, collection: &str) {
        let channel = self.target.key(CHANGES);
        let _ = self.with(|c| c.publish::<_, _, i64>(&channel, collection).map(|_| ()));
    }

    /// Writes a document, expiring at `expires_at_ms` (Unix ms) when given;
    /// with `expected`, only if the key still holds exactly that. Returns
    /// whether it was written.
    pub fn put(
        &self,
        collection: &str,
        key: &str,
        value: &[u8],
        expected: Option<&[u8]>,
        expires_at_ms: Option<i64>,
    ) -> Result<bool, DocError> {
        let k = self.key(collection, key);
        let written = match expected {
            Some(old) => self.with(|c| {
                redis::Script::new(PUT_IF)
                    .key(&k)
                    .arg(value)
                    .arg(old)
                    .arg(expires_at_ms.unwrap_or(0))
                    .invoke::<i64>(c)
                    .map(|n| n == 1)
            })?,
            None => self.with(|c| {
                let mut cmd = redis::cmd("SET");
                cmd.arg(&k).arg(value);
                if let Some(at) = expires_at_ms {
                    cmd.arg("PXAT").arg(at);
                }
                cmd.query::<()>(c).map(|()| true)
            })?,
        };
        if written {
            self.announce(collection);
        }
        Ok(written)
    }

    /// Writes a document only if its key holds nothing (SET NX): a create
    /// that two nodes race for is won by one. Returns whether it was.
    pub fn put_new(&self, collection: &str, key: &str, value: &[u8]) -> Result<bool, DocError> {
        let k = self.key(collection, key);
        let written = self.with(|c| {
            redis::cmd("SET")
                .arg(&k)
                .arg(value)
                .arg("NX")
                .query::<Option<String>>(c)
                .map(|r| r.is_some())
        })?;
        if written {
            self.announce(collection);
        }
        Ok(written)
    }

    /// Deletes documents; with `expected` (one key only), only if it still
    /// holds exactly that. Returns whether the condition held.
    pub fn delete(
        &self,
        collection: &str,
        keys: &[&str],
        expected: Option<&[u8]>,
    ) -> Result<bool, DocError> {
        if keys.is_empty() {
            return Ok(true);
        }
        let full: Vec<String> = keys.iter().map(|k| self.key(collection, k)).collect();
        let done = match (expected, full.as_slice()) {
            (Some(old), [one]) => self.with(|c| {
                redis::Script::new(DELETE_IF)
                    .key(one)
                    .arg(old)
                    .invoke::<i64>(c)
                    .map(|n| n == 1)
            })?,
            _ => self.with(|c| c.del::<_, i64>(&full).map(|_| true))?,
        };
        if done {
            self.announce(collection);
        }
        Ok(done)
    }

    /// Every document of a collection, by key order.
    pub fn load(&self, collection: &str) -> Result<Vec<(String, Vec<u8>)>, DocError> {
        let pattern = self.key(collection, "*");
        let strip = self.key(collection, "");
        self.with(|c| {
            let keys = c.scan_keys(&pattern, &pattern)?;
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(500) {
                let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(chunk).query(c)?;
                for (k, v) in chunk.iter().zip(values) {
                    if let Some(v) = v {
                        out.push((k[strip.len()..].to_owned(), v));
                    }
                }
            }
            out.sort();
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn info_values_are_read_by_name() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:cluster\r\n";
        assert_eq!(super::info_value(info, "redis_mode"), Some("cluster"));
        assert_eq!(super::info_value(info, "redis"), None);
        assert_eq!(super::info_value(info, "tcp_port"), None);
    }
}
