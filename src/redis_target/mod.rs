//! Which Redis the nodes of a cluster share, and how each kind of
//! connection to it is opened: one primary (`single`), a Redis Cluster
//! (`cluster`), or a primary that Sentinel names (`sentinel`, asked again
//! after a failover).
//!
//! The roles (`cluster::*`, the shared documents) see one [`RedisTarget`]
//! and the connections it opens, never the mode: a [`Commands`] handle for
//! the shared multiplexed connection, a reader's connection of its own, a
//! pub/sub connection, and a [`BlockingConnection`] for the store's
//! synchronous calls. Keys come from [`RedisTarget::key`], which in
//! cluster mode puts the prefix in a hash tag (`{prefix}:…`): every key of
//! the gateway then lives on one slot, so the multi-key scripts (appends
//! with their idempotency keys, leases, checkpoints, documents) run there
//! as they do on one primary.

mod blocking;
mod commands;
mod sentinel;

use std::time::Duration;

pub use self::blocking::BlockingConnection;
pub use self::commands::Commands;

/// How the shared Redis is deployed (`--redis-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RedisMode {
    /// One standalone primary (`--redis-url` names it).
    #[default]
    Single,
    /// A Redis Cluster (`--redis-url` names one or more of its nodes).
    Cluster,
    /// A primary found through Sentinel (`--redis-url` names the sentinels,
    /// `--redis-sentinel-master` the primary's name).
    Sentinel,
}

impl RedisMode {
    /// Its name, as `--redis-mode` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Cluster => "cluster",
            Self::Sentinel => "sentinel",
        }
    }
}

/// Why a Redis target cannot be used as given.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

/// The shared Redis: its mode, its addresses and the gateway's key prefix.
#[derive(Clone)]
pub struct RedisTarget {
    mode: RedisMode,
    /// One URL (single), the seed nodes (cluster) or the sentinels.
    urls: Vec<String>,
    /// The primary's name, in sentinel mode.
    sentinel_master: Option<String>,
    /// The sentinels' own password, in sentinel mode.
    sentinel_password: Option<String>,
    prefix: String,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may carry a password: show only where they point.
        f.debug_struct("RedisTarget")
            .field("mode", &self.mode)
            .field("at", &self.describe())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// How long connecting to one Redis node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisTarget {
    /// The target named by `--redis-url` (comma-separated in cluster and
    /// sentinel mode), checked for what each mode needs.
    pub fn new(
        mode: RedisMode,
        urls: &str,
        sentinel_master: Option<&str>,
        sentinel_password: Option<&str>,
        prefix: &str,
    ) -> Result<Self, TargetError> {
        let err = |m: String| Err(TargetError(m));
        let urls: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return err("--redis-url names no Redis".into());
        }
        for url in &urls {
            let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme));
            if !scheme_ok {
                return err(format!(
                    "--redis-url: {} must start with redis://, rediss:// (TLS) or redis+unix:// (a Unix socket)",
                    where_(url)
                ));
            }
            if mode != RedisMode::Single
                && !url.starts_with("redis://")
                && !url.starts_with("rediss://")
            {
                return err(format!(
                    "--redis-url: in --redis-mode {} every address is redis:// or rediss:// (Redis Cluster and Sentinel speak TCP)",
                    mode.name()
                ));
            }
            if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                return err(format!("--redis-url: {}: {e}", where_(url)));
            }
        }
        match mode {
            RedisMode::Single if urls.len() > 1 => {
                return err(format!(
                    "--redis-url names {} addresses: one Redis primary in --redis-mode single; give --redis-mode cluster (seed nodes) or sentinel (the sentinels)",
                    urls.len()
                ))
            }
            RedisMode::Sentinel if sentinel_master.is_none_or(str::is_empty) => {
                return err(
                    "--redis-mode sentinel needs --redis-sentinel-master, the name the sentinels monitor the primary under"
                        .into(),
                )
            }
            RedisMode::Cluster if prefix.contains(['{', '}']) => {
                return err(
                    "--redis-prefix: no braces in --redis-mode cluster (the gateway puts the prefix in a hash tag itself)"
                        .into(),
                )
            }
            _ => {}
        }
        Ok(Self {
            mode,
            urls,
            sentinel_master: sentinel_master.map(str::to_owned),
            sentinel_password: sentinel_password.map(str::to_owned),
            prefix: prefix.to_owned(),
        })
    }

    /// Its mode.
    pub fn mode(&self) -> RedisMode {
        self.mode
    }

    /// The key prefix, as given.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key `<prefix>:<name>`; in cluster mode `{<prefix>}:<name>`, so
    /// that every key of the gateway hashes to one slot.
    pub fn key(&self, name: &str) -> String {
        match self.mode {
            RedisMode::Cluster => format!("{{{}}}:{name}", self.prefix),
            _ => format!("{}:{name}", self.prefix),
        }
    }

    /// Where it points, for messages: hosts and ports, never a password.
    pub fn describe(&self) -> String {
        let at: Vec<String> = self.urls.iter().map(|u| where_(u)).collect();
        match self.mode {
            RedisMode::Single => at.join(", "),
            RedisMode::Cluster => format!("the Redis Cluster at {}", at.join(", ")),
            RedisMode::Sentinel => format!(
                "the primary '{}' of the sentinels at {}",
                self.sentinel_master.as_deref().unwrap_or_default(),
                at.join(", ")
            ),
        }
    }

    /// The client of the one primary (single mode).
    fn single_client(&self) -> redis::RedisResult<redis::Client> {
        open_client(&self.urls[0])
    }

    /// The cluster client for the seed nodes, answering within `response`.
    fn cluster_client(
        &self,
        response: Duration,
    ) -> redis::RedisResult<redis::cluster::ClusterClient> {
        install_tls_provider();
        redis::cluster::ClusterClient::builder(self.urls.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response)
            .retries(2)
            .max_retry_wait(500)
            // A node that stays unreachable (a dead primary) is dropped
            // after these (about 1.5 s of backoff), so that the next
            // command reads the topology again and finds the replica
            // promoted in its place; without it the client would try the
            // dead node for ever.
            .max_connection_attempts(std::num::NonZeroUsize::new(5).expect("not zero"))
            .build()
    }
}

/// Host and port (or socket path) of a Redis URL, for messages: never
/// its password.
pub fn where_(url: &str) -> String {
    url::Url::parse(url).map_or_else(
        |_| "the given address".to_owned(),
        |u| match u.scheme() {
            "redis+unix" | "unix" => u.path().to_owned(),
            _ => format!(
                "{}:{}",
                u.host_str().unwrap_or("?"),
                u.port().unwrap_or(6379)
            ),
        },
    )
}

/// For `rediss://`, rustls needs one process-wide crypto provider, and
/// cannot choose by itself because the dependency tree enables two (ring
/// through reqwest, aws-lc-rs through the AWS SDK): without this, the
/// first TLS connection panics. aws-lc-rs, as the AWS SDK uses. The
/// server's certificate is checked against the system's roots
/// (`SSL_CERT_FILE` selects another bundle).
fn install_tls_provider() {
    // Fails only if a provider is installed already: then that one serves.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A Redis client for one `url`.
pub fn open_client(url: &str) -> redis::RedisResult<redis::Client> {
    install_tls_provider();
    redis::Client::open(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(mode: RedisMode, urls: &str) -> Result<RedisTarget, TargetError> {
        RedisTarget::new(mode, urls, Some("mymaster"), None, "rt")
    }

    #[test]
    fn cluster_keys_share_one_hash_tag_and_single_keys_are_as_before() {
        let c = target(RedisMode::Cluster, "redis://a:7001,redis://b:7002").unwrap();
        assert_eq!(c.key("events"), "{rt}:events");
        let s = target(RedisMode::Single, "redis://a:6379").unwrap();
        assert_eq!(s.key("events"), "rt:events");
        let s = target(RedisMode::Sentinel, "redis://a:26379").unwrap();
        assert_eq!(s.key("doc:x:y"), "rt:doc:x:y");
    }

    #[test]
    fn each_mode_refuses_what_it_cannot_use_and_says_why() {
        let e = target(RedisMode::Single, "redis://a:1,redis://b:2").unwrap_err();
        assert!(e.0.contains("--redis-mode cluster"), "{e}");
        let e = target(RedisMode::Cluster, "redis+unix:///tmp/r.sock").unwrap_err();
        assert!(e.0.contains("redis:// or rediss://"), "{e}");
        let e =
            RedisTarget::new(RedisMode::Sentinel, "redis://a:26379", None, None, "rt").unwrap_err();
        assert!(e.0.contains("--redis-sentinel-master"), "{e}");
        let e =
            RedisTarget::new(RedisMode::Cluster, "redis://a:1", None, None, "{rt}").unwrap_err();
        assert!(e.0.contains("braces"), "{e}");
        let e = target(RedisMode::Single, "http://a:1").unwrap_err();
        assert!(e.0.contains("redis://"), "{e}");
        assert!(target(RedisMode::Single, " , ").is_err());
        assert!(target(RedisMode::Cluster, "redis://a:7001, redis://b:7002,").is_ok());
    }

    #[test]
    fn descriptions_name_hosts_never_passwords() {
        let c = target(
            RedisMode::Cluster,
            "redis://:hunter2@a:7001,redis://u:pw@b:7002",
        )
        .unwrap();
        let d = c.describe();
        assert!(d.contains("a:7001") && d.contains("b:7002"), "{d}");
        assert!(!d.contains("hunter2") && !d.contains("pw@"), "{d}");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
