//! The connection every Redis role of a node shares: one multiplexed
//! command connection (concurrent requests are pipelined on it, so
//! ingest is not one round trip per event), the target that opens the
//! stream reader's and the change channel's own connections (whatever
//! the Redis's mode: see [`crate::redis_target`]), and whether Redis
//! answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::clock::ServerClock;
use super::ClusterError;
use crate::redis_target::{Commands, RedisTarget};
use prometheus_client::metrics::histogram::Histogram;

/// How long one Redis command may take before it counts as failed.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A node's connection to the shared Redis.
pub struct Link {
    target: RedisTarget,
    commands: Commands,
    /// Whether the last command or read reached Redis.
    healthy: AtomicBool,
    round_trip: Histogram,
    /// Redis's time, for the appends' fence.
    clock: ServerClock,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Connects (failing at once if Redis cannot be reached: a node that
    /// starts without its cluster would only accept what it cannot keep).
    pub async fn connect(target: RedisTarget, round_trip: Histogram) -> Result<Self, ClusterError> {
        let commands =
            tokio::time::timeout(RESPONSE_TIMEOUT * 3, target.commands(RESPONSE_TIMEOUT))
                .await
                .map_err(|_| ClusterError::Unavailable("timed out connecting".into()))??;
        let link = Self {
            target,
            commands,
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

    /// The key `<prefix>:<name>` (hash-tagged in cluster mode).
    pub fn key(&self, name: &str) -> String {
        self.target.key(name)
    }

    /// The shared command connection (a cheap handle).
    pub fn commands(&self) -> Commands {
        self.commands.clone()
    }

    /// A connection of its own, for blocking reads, answering within `response`.
    pub async fn own_connection(&self, response: Duration) -> redis::RedisResult<Commands> {
        self.target.own_connection(&self.commands, response).await
    }

    /// A pub/sub connection.
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        self.target.pubsub(&self.commands).await
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
