//! Keeping every node's registrations, event types and accounts in step.
//!
//! A write to the shared store is announced on
//! `<prefix>:changes` with the collection's name; every node reloads that
//! collection. A full resync runs at start, after every reconnect, and
//! every [`RESYNC_EVERY`] as a safety net, so a node applies a change
//! within a second while Redis is up, and catches up after a partition.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::Cluster;
use crate::state::catalog::Catalog;
use crate::state::registry::Registry;
use crate::state::store::Collection;

/// Full resync of registrations and event types, whatever was announced.
pub const RESYNC_EVERY: Duration = Duration::from_secs(10);

/// What a node reloads when told of a change.
pub struct Followers {
    /// Registrations.
    pub registry: Arc<Registry>,
    /// Event types.
    pub catalog: Arc<Catalog>,
    /// Accounts and their devices.
    pub accounts: Arc<crate::state::accounts::Accounts>,
}

impl Followers {
    async fn reload(&self, which: Option<Collection>) {
        let (r, c, a) = (
            self.registry.clone(),
            self.catalog.clone(),
            self.accounts.clone(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            if which.is_none_or(|w| w == Collection::Registrations) {
                if let Err(e) = r.reload() {
                    tracing::warn!(error = %e, "registrations not reloaded");
                }
            }
            if which.is_none_or(|w| w == Collection::EventTypes) {
                if let Err(e) = c.reload() {
                    tracing::warn!(error = %e, "event types not reloaded");
                }
            }
            if which.is_none_or(|w| w == Collection::Accounts) {
                if let Err(e) = a.reload() {
                    tracing::warn!(error = %e, "accounts not reloaded");
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
            let channel = me.link.key(crate::state::store::redis::CHANGES);
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut pubsub = match me.link.pubsub().await {
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
}
