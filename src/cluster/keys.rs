//! `Idempotency-Key` memory shared by every node: a Redis key per
//! idempotency key (SET NX PX), so a retry that reaches another node is
//! still answered with the first event's id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use super::layout::Layout;
use super::link::within;
use super::{ClusterError, Link};
use crate::event::EventId;
use crate::state::idempotency::{Claim, Fingerprint};

/// The cluster's idempotency keys.
#[derive(Debug)]
pub struct SharedKeys {
    link: Arc<Link>,
    /// How the stream is split: a key lives in the partition of its event
    /// (the append records it there, in the same script).
    layout: Layout,
    /// How long a key is remembered.
    window: Duration,
}

/// An Idempotency-Key as the append records it, with the event's id, in
/// the same script call as the event (so no answer can be lost between
/// storing the event and remembering its key).
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// The Redis key.
    pub key: String,
    /// The request's fingerprint (hex); the id follows after `:`.
    pub value: String,
    /// How long it is remembered (ms).
    pub ttl_ms: u64,
}

impl SharedKeys {
    /// Keys on `link`, remembered for `window`.
    pub fn new(link: Arc<Link>, layout: Layout, window: Duration) -> Self {
        Self {
            link,
            layout,
            window,
        }
    }

    fn idempotency_key(&self, partition: usize, key: &str) -> String {
        self.layout
            .key(self.link.target(), partition, &format!("idem:{key}"))
    }

    /// Claims an `Idempotency-Key` (already in its credential's namespace,
    /// see [`crate::state::idempotency::scoped_key`]) cluster-wide, for a
    /// request with `fingerprint` whose event goes to `partition` (the
    /// fingerprint covers the event, so a retry goes there too), and that
    /// gives up at `gives_up`. The value is
    /// the fingerprint's hex while the event is in flight (for a little
    /// longer than the append may take: a request that died meanwhile
    /// blocks its retries no longer), then `<fingerprint>:<stream id>`,
    /// written by the append itself ([`SharedKeys::record`]).
    pub async fn claim(
        &self,
        partition: usize,
        key: &str,
        fingerprint: &Fingerprint,
        gives_up: Instant,
    ) -> Result<Claim, ClusterError> {
        let k = self.idempotency_key(partition, key);
        let in_flight = (super::append::BUDGET + IN_FLIGHT_SLACK).as_millis() as u64;
        let mut conn = self.link.commands();
        let started = Instant::now();
        let ours = fingerprint.hex();
        let set: Option<String> = self.link.observe(
            started,
            within(
                gives_up,
                redis::cmd("SET")
                    .arg(&k)
                    .arg(&ours)
                    .arg("NX")
                    .arg("PX")
                    .arg(in_flight)
                    .query_async(&mut conn),
            )
            .await,
        )?;
        if set.is_some() {
            return Ok(Claim::New);
        }
        let started = Instant::now();
        let seen: Option<String> = self
            .link
            .observe(started, within(gives_up, conn.get(&k)).await)?;
        let Some(seen) = seen else {
            // Gone in between (expired or released): treat as busy.
            return Ok(Claim::InProgress);
        };
        let (stored, id) = seen.split_once(':').unwrap_or((seen.as_str(), ""));
        // A value that is not a fingerprint's hex is no match either.
        let Some(stored) = Fingerprint::from_hex(stored) else {
            return Ok(Claim::Mismatch);
        };
        // A stream id (as the append writes it), or an event id (as
        // nodes of earlier releases wrote).
        let id = self
            .layout
            .event_id(partition, id)
            .ok()
            .or_else(|| id.parse::<EventId>().ok());
        Ok(Claim::of(&stored, id, fingerprint))
    }

    /// How the append records `key` with its event's id.
    pub fn record(&self, partition: usize, key: &str, fingerprint: &Fingerprint) -> KeyRecord {
        KeyRecord {
            key: self.idempotency_key(partition, key),
            value: fingerprint.hex(),
            ttl_ms: self.window.as_millis().max(1) as u64,
        }
    }

    /// Forgets a claim whose event was not stored (so a retry can), if it
    /// is still in flight: a key the append recorded with an id stays
    /// (the one case where a write ran but neither its reply nor its
    /// check came back).
    pub async fn release(&self, partition: usize, key: &str, fingerprint: &Fingerprint) {
        let _: redis::RedisResult<i64> = RELEASE_IN_FLIGHT
            .key(self.idempotency_key(partition, key))
            .arg(fingerprint.hex())
            .invoke_async(&mut self.link.commands())
            .await;
    }
}

/// Deletes `KEYS[1]` if it holds `ARGV[1]` (an in-flight claim).
static RELEASE_IN_FLIGHT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

/// How much longer than the append's budget a claim is held in flight.
const IN_FLIGHT_SLACK: Duration = Duration::from_secs(1);
