//! The connection every Redis role of a node shares: one multiplexed
//! command connection (concurrent requests are pipelined on it, so
//! ingest is not one round trip per event), the client that opens the
//! stream reader's and the change channel's own connections, and whether
//! Redis answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::clock::ServerClock;
use super::ClusterError;

/// How long one Redis command may take before it counts as failed.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A node's connection to the shared Redis.
pub struct Link {
    client: redis::Client,
    commands: ConnectionManager,
    /// Prefix of every key, so that clusters can share one Redis.
    prefix: String,
    /// Whether the last command or read reached Redis.
    healthy: AtomicBool,
    round_trip: Histogram,
    /// Redis's time, for the appends' fence.
    clock: ServerClock,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: show only the prefix.
        f.debug_struct("Link")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Connects (failing at once if Redis cannot be reached: a node that
    /// starts without its cluster would only accept what it cannot keep).
    pub async fn connect(
        url: &str,
        prefix: String,
        round_trip: Histogram,
    ) -> Result<Self, ClusterError> {
        let client = crate::state::store::redis::open_client(url)
            .map_err(|e| ClusterError::Url(e.to_string()))?;
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let commands = tokio::time::timeout(
            RESPONSE_TIMEOUT * 3,
            ConnectionManager::new_with_config(client.clone(), manager),
        )
        .await
        .map_err(|_| ClusterError::Unavailable("timed out connecting".into()))??;
        let link = Self {
            client,
            commands,
            prefix,
            healthy: AtomicBool::new(true),
            round_trip,
            clock: ServerClock::default(),
        };
        link.read_clock().await?;
        Ok(link)
    }

    /// Reads Redis's clock again (every second: see `clock.rs`).
    pub async fn read_clock(&self) -> Result<(), ClusterError> {
        let started = Instant::now();
        let read = self.clock.read(&mut self.commands()).await;
        self.observe(started, read)
    }

    /// Redis's clock as last read.
    pub fn clock(&self) -> &ServerClock {
        &self.clock
    }

    /// The key `<prefix>:<name>`.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The shared command connection (a cheap handle).
    pub fn commands(&self) -> ConnectionManager {
        self.commands.clone()
    }

    /// The client, for connections of their own (the reader, pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Whether Redis answered the last command and the reader is connected.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records whether Redis answers; whether it did before.
    pub(super) fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed)
    }

    /// Times a command's `result` (sent at `started`) and records from it
    /// whether Redis answers.
    pub fn observe<T>(
        &self,
        started: Instant,
        result: redis::RedisResult<T>,
    ) -> Result<T, ClusterError> {
        self.round_trip.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(v) => {
                self.healthy.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => {
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                {
                    self.healthy.store(false, Ordering::Relaxed);
                }
                Err(e.into())
            }
        }
    }
}

/// `command`'s result, or a timeout error at `until` (one that
/// [`Link::observe`] counts as Redis not answering).
pub(super) async fn within<T>(
    until: Instant,
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout_at(until.into(), command)
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "Redis did not answer in time",
            )))
        })
}
