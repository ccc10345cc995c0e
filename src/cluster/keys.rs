//! `Idempotency-Key` memory shared by every node: a Redis key per
//! idempotency key (SET NX PX), so a retry that reaches another node is
//! still answered with the first event's id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use super::{ClusterError, Link};
use crate::event::EventId;
use crate::state::idempotency::{Claim, Fingerprint};

/// The cluster's idempotency keys.
#[derive(Debug)]
pub struct SharedKeys {
    link: Arc<Link>,
    /// How long a key is remembered.
    window: Duration,
}

impl SharedKeys {
    /// Keys on `link`, remembered for `window`.
    pub fn new(link: Arc<Link>, window: Duration) -> Self {
        Self { link, window }
    }

    fn idempotency_key(&self, key: &str) -> String {
        self.link.key(&format!("idem:{key}"))
    }

    /// Claims an `Idempotency-Key` (already in its credential's namespace,
    /// see [`crate::state::idempotency::scoped_key`]) cluster-wide, for a request
    /// with `fingerprint`. The value is the fingerprint's hex while the
    /// event is in flight, then `<fingerprint>:<id>` (see
    /// [`SharedKeys::complete`]).
    pub async fn claim(&self, key: &str, fingerprint: &Fingerprint) -> Result<Claim, ClusterError> {
        let k = self.idempotency_key(key);
        let window = self.window.as_millis().max(1) as u64;
        let mut conn = self.link.commands();
        let started = Instant::now();
        let ours = fingerprint.hex();
        let set: Option<String> = self.link.observe(
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
        let seen: Option<String> = self.link.observe(started, conn.get(&k).await)?;
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
        let window = self.window.as_millis().max(1) as u64;
        let started = Instant::now();
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg(&k)
            .arg(format!("{}:{id}", fingerprint.hex()))
            .arg("PX")
            .arg(window)
            .query_async(&mut self.link.commands())
            .await;
        self.link.observe(started, r)
    }

    /// Forgets a claim whose event was not published (so a retry can).
    pub async fn release(&self, key: &str) {
        let k = self.idempotency_key(key);
        let _: redis::RedisResult<()> = self.link.commands().del(&k).await;
    }
}
