//! Who is in the cluster: each node announces itself every
//! [`ANNOUNCE_EVERY`] with a key that expires after [`MEMBER_TTL`]
//! (`<prefix>:member:<node>`), so a dead node drops out on its own.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::hub::Hub;

/// How often a node announces itself.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// How long an announcement lasts.
pub const MEMBER_TTL: Duration = Duration::from_secs(6);

/// One node, as it announces itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// Its id (also its name in the destination leases it holds).
    pub node: String,
    /// The address it listens on.
    pub address: String,
    /// Its version.
    pub version: String,
    /// SSE subscribers connected to it.
    pub subscribers: usize,
    /// Whether it forwards to any destination.
    pub forwarding: bool,
    /// Destinations it forwards to (whose lease it holds).
    pub destinations: usize,
}

impl Cluster {
    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    fn member_key(&self, node: &str) -> String {
        self.link.key(&format!("member:{node}"))
    }

    /// Announces this node until the process ends.
    pub fn start_announcing(
        self: &Arc<Self>,
        address: String,
        hub: Arc<Hub>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let owned = me.metrics.destinations_owned.get().max(0) as usize;
                let member = Member {
                    node: me.node_id.clone(),
                    address: address.clone(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    subscribers: hub.subscriber_count(),
                    forwarding: owned > 0,
                    destinations: owned,
                };
                let doc = serde_json::to_string(&member).unwrap_or_default();
                let _: redis::RedisResult<()> = me
                    .link
                    .commands()
                    .pset_ex(
                        me.member_key(&me.node_id),
                        doc,
                        MEMBER_TTL.as_millis() as u64,
                    )
                    .await;
                tokio::time::sleep(ANNOUNCE_EVERY).await;
            }
        })
    }

    /// The live members, by node id.
    pub async fn members(&self) -> Result<Vec<Member>, super::ClusterError> {
        let mut conn = self.link.commands();
        let pattern = self.member_key("*");
        let keys = conn.scan_keys(&pattern, &pattern).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let docs: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let mut members: Vec<Member> = docs
            .into_iter()
            .flatten()
            .filter_map(|d| serde_json::from_str(&d).ok())
            .collect();
        members.sort_by(|a, b| a.address.cmp(&b.address).then(a.node.cmp(&b.node)));
        Ok(members)
    }
}
