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

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::Cluster;
use crate::catalog::Catalog;
use crate::forward::Forwarding;
use crate::registry::Registry;
use crate::store::{Collection, StoredDisabled};

/// Full resync of registrations and event types, whatever was announced.
pub const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// How long a forwarding lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(6);

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

    /// Competes for the forwarding lease, until the process ends;
    /// `forwarding` is active exactly while this node holds it.
    pub fn start_leasing(
        self: &Arc<Self>,
        forwarding: Arc<Forwarding>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let key = format!("{}:forwarder", me.config.prefix);
            let ttl = LEASE_TTL.as_millis() as u64;
            let mut held_since: Option<Instant> = None;
            let mut last_renewed = Instant::now();
            loop {
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
                            forwarding.set_active(true);
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
                tokio::time::sleep(LEASE_TTL / 3).await;
            }
        })
    }
}
