//! The asynchronous connections a node opens to its Redis, whatever the
//! mode: one [`Commands`] type that every role sends its commands,
//! pipelines and scripts through.

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::sentinel::Followed;
use super::{RedisMode, RedisTarget, CONNECT_TIMEOUT};

/// A connection to the shared Redis (cheap to clone: every clone shares
/// the one multiplexed connection).
#[derive(Clone)]
pub enum Commands {
    /// One primary, reconnected when lost.
    Managed(ConnectionManager),
    /// A connection of its own to one primary (a reader's).
    Plain(MultiplexedConnection),
    /// A Redis Cluster: each command goes to the node of its keys' slot.
    Cluster(ClusterConnection),
    /// The primary the sentinels name, followed through failovers.
    Sentinel(Followed),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Managed(c) => c.req_packed_command(cmd),
            Self::Plain(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(f) => {
                let mut c = f.current();
                Box::pin(async move { c.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(f) => {
                let mut c = f.current();
                Box::pin(async move { c.req_packed_commands(pipeline, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(c) => c.get_db(),
            Self::Plain(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(f) => f.current().get_db(),
        }
    }
}

impl Commands {
    /// Runs `cmd` on the primary that holds `key` (in cluster mode; on the
    /// one primary otherwise): for keyless commands about that primary,
    /// such as `INFO replication`.
    pub async fn query_at<T: redis::FromRedisValue>(
        &mut self,
        cmd: Cmd,
        key: &str,
    ) -> RedisResult<T> {
        match self {
            Self::Cluster(c) => Ok(redis::from_redis_value(
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                        key,
                        SlotAddr::Master,
                    ))),
                )
                .await?,
            )?),
            _ => cmd.query_async(self).await,
        }
    }

    /// The keys matching `pattern`, all of which hash to the slot of
    /// `same_slot_as` in cluster mode (SCAN goes to that slot's primary:
    /// a cluster has no keyspace-wide SCAN).
    pub async fn scan_keys(
        &mut self,
        pattern: &str,
        same_slot_as: &str,
    ) -> RedisResult<Vec<String>> {
        let route = match self {
            Self::Cluster(_) => Some(RoutingInfo::SingleNode(
                SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                    same_slot_as,
                    SlotAddr::Master,
                )),
            )),
            _ => None,
        };
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, page): (u64, Vec<String>) = match (&route, &mut *self) {
                (Some(route), Self::Cluster(c)) => {
                    redis::from_redis_value(c.route_command(cmd, route.clone()).await?)?
                }
                _ => cmd.query_async(self).await?,
            };
            keys.extend(page);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }
}

impl RedisTarget {
    /// The shared command connection, answering within `response`.
    pub async fn commands(&self, response: Duration) -> RedisResult<Commands> {
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        Ok(match self.mode {
            RedisMode::Single => Commands::Managed(
                ConnectionManager::new_with_config(self.single_client()?, manager).await?,
            ),
            RedisMode::Cluster => Commands::Cluster(
                self.cluster_client(response)?
                    .get_async_connection()
                    .await?,
            ),
            RedisMode::Sentinel => Commands::Sentinel(Followed::connect(self, manager).await?),
        })
    }

    /// A connection of its own (for blocking reads, which would hold up the
    /// shared one), answering within `response`; `shared` is the shared
    /// connection, which in sentinel mode knows how to find the primary.
    pub async fn own_connection(
        &self,
        shared: &Commands,
        response: Duration,
    ) -> RedisResult<Commands> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response));
        Ok(match self.mode {
            RedisMode::Cluster => Commands::Cluster(
                self.cluster_client(response)?
                    .get_async_connection()
                    .await?,
            ),
            _ => Commands::Plain(
                self.primary_client(shared)
                    .await?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ),
        })
    }

    /// A pub/sub connection. Redis Cluster delivers a PUBLISH to the
    /// subscribers of every node, so in cluster mode any seed node that
    /// answers serves.
    pub async fn pubsub(&self, shared: &Commands) -> RedisResult<redis::aio::PubSub> {
        match self.mode {
            RedisMode::Cluster => {
                let mut last = None;
                for url in &self.urls {
                    match super::open_client(url) {
                        Ok(c) => match c.get_async_pubsub().await {
                            Ok(p) => return Ok(p),
                            Err(e) => last = Some(e),
                        },
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Io, "no seed node"))
                }))
            }
            _ => self.primary_client(shared).await?.get_async_pubsub().await,
        }
    }

    /// The client of the primary now (single and sentinel modes).
    async fn primary_client(&self, shared: &Commands) -> RedisResult<redis::Client> {
        match shared {
            Commands::Sentinel(f) => f.primary_client().await,
            _ => self.single_client(),
        }
    }
}
