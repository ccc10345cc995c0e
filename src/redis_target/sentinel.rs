//! Sentinel mode: the primary is whichever server the sentinels name, and
//! a failover names another. redis-rs finds and checks the primary
//! ([`SentinelClient`]); this keeps the shared command connection on it:
//! a watcher asks the sentinels every [`WATCH_EVERY`] which server is the
//! primary, and when the answer changes, moves the connection there. Until
//! it has, commands fail (ingest answers 503 with `Retry-After`), which is
//! what a client of one primary sees while it restarts.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisResult};

use super::{install_tls_provider, RedisTarget, CONNECT_TIMEOUT};

/// How often the watcher asks the sentinels for the primary.
const WATCH_EVERY: Duration = Duration::from_millis(500);

impl RedisTarget {
    /// A client that asks the sentinels for the primary.
    pub(super) fn sentinel_client(&self) -> RedisResult<SentinelClient> {
        install_tls_provider();
        // The URLs' user, password and database are the primary's; the
        // sentinels get `--redis-sentinel-password` (or none).
        let primary = self.urls[0].as_str().into_connection_info()?;
        let tls = matches!(primary.addr(), ConnectionAddr::TcpTls { .. });
        let mut node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(primary.redis_settings().clone());
        if tls {
            node = node.set_tls_mode(redis::TlsMode::Secure);
        }
        let mut own = RedisConnectionInfo::default();
        if let Some(p) = &self.sentinel_password {
            own = own.set_password(p);
        }
        let sentinels = self
            .urls
            .iter()
            .map(|u| {
                Ok(u.as_str()
                    .into_connection_info()?
                    .set_redis_settings(own.clone()))
            })
            .collect::<RedisResult<Vec<_>>>()?;
        SentinelClient::build(
            sentinels,
            self.sentinel_master.clone().unwrap_or_default(),
            Some(node),
            SentinelServerType::Master,
        )
    }
}

/// The shared command connection in sentinel mode: on the primary the
/// sentinels name, moved when they name another.
#[derive(Clone)]
pub struct Followed {
    inner: Arc<Shared>,
}

struct Shared {
    current: ArcSwap<Primary>,
    finder: tokio::sync::Mutex<SentinelClient>,
    manager: ConnectionManagerConfig,
}

struct Primary {
    addr: String,
    commands: ConnectionManager,
}

impl Followed {
    /// Connects to the primary the sentinels name now, and follows it.
    pub async fn connect(
        target: &RedisTarget,
        manager: ConnectionManagerConfig,
    ) -> RedisResult<Self> {
        let mut finder = target.sentinel_client()?;
        let primary = Self::open(&mut finder, &manager).await?;
        let inner = Arc::new(Shared {
            current: ArcSwap::from_pointee(primary),
            finder: tokio::sync::Mutex::new(finder),
            manager,
        });
        tokio::spawn(watch(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    async fn open(
        finder: &mut SentinelClient,
        manager: &ConnectionManagerConfig,
    ) -> RedisResult<Primary> {
        let client = tokio::time::timeout(CONNECT_TIMEOUT * 2, finder.async_get_client())
            .await
            .map_err(|_| timed_out("asking the sentinels for the primary"))??;
        let addr = client.get_connection_info().addr().to_string();
        let commands = ConnectionManager::new_with_config(client, manager.clone()).await?;
        Ok(Primary { addr, commands })
    }

    /// The connection to the current primary (a cheap handle).
    pub fn current(&self) -> ConnectionManager {
        self.inner.current.load().commands.clone()
    }

    /// A client of the current primary, for a connection of its own (a
    /// reader, pub/sub), found by asking the sentinels now.
    pub async fn primary_client(&self) -> RedisResult<redis::Client> {
        let mut finder = self.inner.finder.lock().await;
        tokio::time::timeout(CONNECT_TIMEOUT * 2, finder.async_get_client())
            .await
            .map_err(|_| timed_out("asking the sentinels for the primary"))?
    }
}

fn timed_out(what: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("timed out {what}"),
    ))
}

/// Moves the shared connection to the primary the sentinels name, until
/// the connection is dropped.
async fn watch(shared: Weak<Shared>) {
    let mut announced_failure = false;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let found = {
            let mut finder = shared.finder.lock().await;
            tokio::time::timeout(CONNECT_TIMEOUT * 2, finder.async_get_client()).await
        };
        let client = match found {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                if !announced_failure {
                    tracing::warn!(error = %e, "the sentinels name no reachable primary (a failover may be under way)");
                    announced_failure = true;
                }
                continue;
            }
            Err(_) => continue,
        };
        announced_failure = false;
        let addr = client.get_connection_info().addr().to_string();
        if addr == shared.current.load().addr {
            continue;
        }
        match ConnectionManager::new_with_config(client, shared.manager.clone()).await {
            Ok(commands) => {
                tracing::warn!(primary = %addr, "the sentinels name a new primary: commands go there now");
                shared.current.store(Arc::new(Primary { addr, commands }));
            }
            Err(e) => {
                tracing::warn!(primary = %addr, error = %e, "cannot reach the new primary yet")
            }
        }
    }
}
