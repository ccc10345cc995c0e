//! Keeping every node's registrations and event types in step, and
//! electing the one node that forwards.
//!
//! - **Changes.** A write to the shared store is announced on
//!   `<prefix>:changes` with the collection's name; every node reloads that
//!   collection. A full resync runs at start, after every reconnect, and
//!   every [`RESYNC_EVERY`] as a safety net, so a node applies a change
//!   within a second while Redis is up, and catches up after a partition.
//! - **Forwarding.** Every node sees every event (its stream reader), so
//!   exactly one node may forward, or each destination would get each event
//!   once per node. That node holds a lease (`<prefix>:forwarder`, SET NX
//!   PX, renewed by compare-and-set); when it dies, another takes the lease
//!   within [`LEASE_TTL`] and forwards from then on.
//! - **Checkpoints.** The forwarder writes, every [`CHECKPOINT_EVERY`], how
//!   far each destination is finished (`<prefix>:checkpoints`, one field per
//!   destination). A node that takes the lease first replays, to each
//!   destination, the stream's events between its checkpoint and the
//!   moment it took over, then carries on live: nothing accepted is lost
//!   while the stream still holds it (at least once across a failover; the
//!   events the dead node delivered after its last checkpoint go again).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::Digest;

use super::Cluster;
use crate::catalog::Catalog;
use crate::event::{Event, EventId};
use crate::forward::destination::Destination;
use crate::forward::Forwarding;
use crate::hub::{Hub, Published};
use crate::registry::Registry;
use crate::store::{Collection, StoredDisabled};

/// Full resync of registrations and event types, whatever was announced.
pub const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// How long a forwarding lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(6);

/// How often the forwarder records its destinations' progress.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Renews the lease only for its holder.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1
end
return 0";

/// What a node reloads when told of a change.
pub struct Followers {
    /// Registrations.
    pub registry: Arc<Registry>,
    /// Event types.
    pub catalog: Arc<Catalog>,
    /// Counts definitions loaded disabled.
    pub disabled: StoredDisabled,
}

impl Followers {
    async fn reload(&self, which: Option<Collection>) {
        let (r, c, d) = (
            self.registry.clone(),
            self.catalog.clone(),
            self.disabled.clone(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            if which.is_none_or(|w| w == Collection::Registrations) {
                if let Err(e) = r.reload() {
                    tracing::warn!(error = %e, "registrations not reloaded");
                }
            }
            if which.is_none_or(|w| w == Collection::EventTypes) {
                if let Err(e) = c.reload(&d) {
                    tracing::warn!(error = %e, "event types not reloaded");
                }
            }
        })
        .await;
    }
}

impl Cluster {
    /// Follows changes made on other nodes, until the process ends.
    pub fn start_following(self: &Arc<Self>, followers: Followers) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let channel = super::documents::RedisDocuments::changes_channel(&me.config.prefix);
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut pubsub = match me.client.get_async_pubsub().await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(error = %e, "change channel: reconnecting");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                if pubsub.subscribe(&channel).await.is_err() {
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                backoff = Duration::from_millis(100);
                // Whatever changed while this node was not listening.
                followers.reload(None).await;
                let mut messages = pubsub.on_message();
                let mut resync = tokio::time::interval(RESYNC_EVERY);
                resync.tick().await;
                loop {
                    tokio::select! {
                        m = messages.next() => match m {
                            Some(m) => {
                                let name: String = m.get_payload().unwrap_or_default();
                                followers.reload(Collection::named(&name)).await;
                            }
                            None => break,
                        },
                        _ = resync.tick() => followers.reload(None).await,
                    }
                }
            }
        })
    }

    fn checkpoints_key(&self) -> String {
        format!("{}:checkpoints", self.config.prefix)
    }

    /// A destination's field in the checkpoints hash: a digest, so that no
    /// secret appears in Redis key space.
    fn checkpoint_field(d: &Destination) -> String {
        let doc = serde_json::to_vec(d).unwrap_or_default();
        hex::encode(&sha2::Sha256::digest(&doc)[..16])
    }

    async fn load_checkpoints(&self) -> HashMap<String, EventId> {
        let mut conn = self.commands.clone();
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.checkpoints_key())
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        all.into_iter()
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect()
    }

    /// After taking the lease at `from`: replays to each destination the
    /// stream's events after its `checkpoints` entry and up to `from`.
    async fn catch_up(
        &self,
        forwarding: &Forwarding,
        from: EventId,
        checkpoints: HashMap<String, EventId>,
        done: &AtomicBool,
    ) {
        for d in forwarding.destinations().live() {
            let Some(&since) = checkpoints.get(&Self::checkpoint_field(&d)) else {
                continue;
            };
            if since >= from {
                continue;
            }
            let before = EventId::from_u64(from.as_u64() + 1);
            match self.range(since, before, 1_000_000).await {
                Ok((entries, complete)) => {
                    let events: Vec<Arc<Published>> = entries
                        .into_iter()
                        .map(|(id, draft)| Arc::new(Published::new(Event { id, draft })))
                        .collect();
                    let sent = forwarding.replay_to(&d, &events);
                    tracing::info!(destination = %d.label(), sent, "takeover: replayed events after the last checkpoint");
                    if !complete {
                        tracing::warn!(destination = %d.label(), "takeover: the stream no longer holds every event after the checkpoint; some were not forwarded");
                    }
                }
                Err(e) => {
                    tracing::warn!(destination = %d.label(), error = %e, "takeover: replay failed; events after the checkpoint were not forwarded")
                }
            }
        }
        done.store(true, Ordering::Release);
    }

    /// Records how far each destination is finished (only forward: a
    /// checkpoint never moves back).
    async fn write_checkpoints(
        &self,
        forwarding: &Forwarding,
        written: &mut HashMap<String, EventId>,
    ) {
        let mut pipe = redis::pipe();
        let mut any = false;
        for (d, id) in forwarding.checkpoints() {
            let field = Self::checkpoint_field(&d);
            if written.get(&field).is_some_and(|w| *w >= id) {
                continue;
            }
            pipe.cmd("HSET")
                .arg(self.checkpoints_key())
                .arg(&field)
                .arg(id.to_string())
                .ignore();
            written.insert(field, id);
            any = true;
        }
        if any {
            let _: redis::RedisResult<()> = pipe.query_async(&mut self.commands.clone()).await;
        }
    }

    /// Competes for the forwarding lease, until the process ends;
    /// `forwarding` is active exactly while this node holds it.
    pub fn start_leasing(
        self: &Arc<Self>,
        forwarding: Arc<Forwarding>,
        hub: Arc<Hub>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let key = format!("{}:forwarder", me.config.prefix);
            let caught_up = Arc::new(AtomicBool::new(false));
            let mut written: HashMap<String, EventId> = HashMap::new();
            let mut next_renewal = Instant::now();
            let ttl = LEASE_TTL.as_millis() as u64;
            let mut held_since: Option<Instant> = None;
            let mut last_renewed = Instant::now();
            loop {
                if held_since.is_some() && caught_up.load(Ordering::Acquire) {
                    me.write_checkpoints(&forwarding, &mut written).await;
                }
                if Instant::now() < next_renewal {
                    tokio::time::sleep(CHECKPOINT_EVERY).await;
                    continue;
                }
                next_renewal = Instant::now() + LEASE_TTL / 3;
                let mut conn = me.commands.clone();
                let outcome: redis::RedisResult<bool> = if held_since.is_some() {
                    redis::Script::new(RENEW)
                        .key(&key)
                        .arg(&me.node_id)
                        .arg(ttl)
                        .invoke_async::<i64>(&mut conn)
                        .await
                        .map(|n| n == 1)
                } else {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&me.node_id)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl)
                        .query_async::<Option<String>>(&mut conn)
                        .await
                        .map(|r| r.is_some())
                };
                match outcome {
                    Ok(true) => {
                        last_renewed = Instant::now();
                        if held_since.is_none() {
                            held_since = Some(Instant::now());
                            me.metrics.lease_takeovers.inc();
                            tracing::info!(node = %me.node_id, "this node now forwards for the cluster");
                            // Live from exactly here; older events come
                            // from the stream, after each checkpoint.
                            let from = hub.at_last_id(|last| {
                                forwarding.set_active(true);
                                last
                            });
                            caught_up.store(false, Ordering::Release);
                            written = me.load_checkpoints().await;
                            let (c, f, done) = (me.clone(), forwarding.clone(), caught_up.clone());
                            let since = written.clone();
                            tokio::spawn(async move { c.catch_up(&f, from, since, &done).await });
                        }
                    }
                    Ok(false) => {
                        if held_since.take().is_some() {
                            tracing::warn!(node = %me.node_id, "forwarding lease lost to another node");
                            forwarding.set_active(false);
                        }
                    }
                    // Unreachable Redis: keep forwarding only while the
                    // lease cannot yet have passed to another node.
                    Err(_) => {
                        if held_since.is_some() && last_renewed.elapsed() >= LEASE_TTL / 2 {
                            held_since = None;
                            tracing::warn!("forwarding paused: the lease cannot be renewed");
                            forwarding.set_active(false);
                        }
                    }
                }
                me.metrics.forwarding.set(i64::from(held_since.is_some()));
                let owned = if held_since.is_some() {
                    forwarding.destinations().len()
                } else {
                    0
                };
                me.metrics.destinations_owned.set(owned as i64);
            }
        })
    }
}
