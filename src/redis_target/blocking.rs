//! The synchronous connection of the shared documents (whose API is
//! synchronous: it is only called on blocking threads and at start).

use std::time::Duration;

use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{ConnectionLike, RedisResult, Value};

use super::{RedisMode, RedisTarget, CONNECT_TIMEOUT};

/// A blocking connection to the shared Redis, whatever its mode.
pub enum BlockingConnection {
    /// To one primary (single mode, or the one the sentinels named).
    Plain(redis::Connection),
    /// To a Redis Cluster.
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl ConnectionLike for BlockingConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            Self::Plain(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match self {
            Self::Plain(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> RedisResult<Value> {
        match self {
            Self::Plain(c) => c.req_command(cmd),
            Self::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Plain(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            Self::Plain(c) => c.check_connection(),
            Self::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Self::Plain(c) => c.is_open(),
            Self::Cluster(c) => c.is_open(),
        }
    }
}

impl BlockingConnection {
    /// The keys matching `pattern`, all of which hash to the slot of
    /// `same_slot_as` in cluster mode (see `Commands::scan_keys`).
    pub fn scan_keys(&mut self, pattern: &str, same_slot_as: &str) -> RedisResult<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, page): (u64, Vec<String>) = match self {
                Self::Cluster(c) => redis::from_redis_value(c.route_command(
                    &cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                        same_slot_as,
                        SlotAddr::Master,
                    ))),
                )?)?,
                Self::Plain(c) => cmd.query(c)?,
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
    /// A blocking connection whose commands time out after `timeout`; in
    /// sentinel mode, to the primary the sentinels name now.
    pub fn blocking(&self, timeout: Duration) -> RedisResult<BlockingConnection> {
        let plain = |client: redis::Client| -> RedisResult<BlockingConnection> {
            let c = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
            c.set_read_timeout(Some(timeout))?;
            c.set_write_timeout(Some(timeout))?;
            Ok(BlockingConnection::Plain(c))
        };
        match self.mode {
            RedisMode::Single => plain(self.single_client()?),
            RedisMode::Sentinel => plain(self.sentinel_client()?.get_client()?),
            RedisMode::Cluster => {
                // Reads time out by the client's response timeout; writes too.
                let c = self.cluster_client(timeout)?.get_connection()?;
                c.set_write_timeout(Some(timeout))?;
                Ok(BlockingConnection::Cluster(Box::new(c)))
            }
        }
    }
}
