//! The connection every Redis role of a node shares: one multiplexed
//! command connection (concurrent requests are pipelined on it, so
//! ingest is not one round trip per event), the target that opens the
//! stream reader's and the change channel's own connections (whatever
//! the Redis's mode: see [`crate::redis_target`]), and whether Redis
//! answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::clock::ServerClock;
use super::ClusterError;
use crate::redis_target::{Commands, RedisMode, RedisTarget};
use crate::sync::lock;
use prometheus_client::metrics::histogram::Histogram;

/// How long one Redis command may take before it counts as failed.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often, at most, a Redis Cluster connection whose primary does not
/// answer is opened anew.
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// A node's connection to the shared Redis.
pub struct Link {
    target: RedisTarget,
    /// Replaced, in cluster mode, when the primary stops answering (see
    /// [`Link::read_clock`]).
    commands: ArcSwap<Commands>,
    /// When it was last replaced.
    renewed: Mutex<Instant>,
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
            commands: ArcSwap::from_pointee(commands),
            renewed: Mutex::new(Instant::now()),
            healthy: AtomicBool::new(true),
            round_trip,
            clock: ServerClock::default(),
        };
        link.read_clock().await?;
        Ok(link)
    }

    /// Reads Redis's clock again (every second: see `clock.rs`), from the
    /// primary that holds the gateway's keys; if it does not answer, in
    /// cluster mode, opens the connection anew.
    pub async fn read_clock(&self) -> Result<(), ClusterError> {
        let started = Instant::now();
        let read = self
            .clock
            .read(&mut self.commands(), &self.key("clock"))
            .await;
        let failed = read.is_err();
        let read = self.observe(started, read);
        if failed {
            self.renew().await;
        }
        read
    }

    /// A fresh Redis Cluster connection, which reads the slot map from the
    /// seeds again. The client learns of a new primary from the redirects
    /// of a live one; for the address of a dead one it keeps reconnecting
    /// to that address and never asks, so after a failover it would not
    /// find the promoted replica on its own.
    async fn renew(&self) {
        if self.target.mode() != RedisMode::Cluster {
            return;
        }
        {
            let mut renewed = lock(&self.renewed);
            if renewed.elapsed() < RENEW_EVERY {
                return;
            }
            *renewed = Instant::now();
        }
        match tokio::time::timeout(RESPONSE_TIMEOUT, self.target.commands(RESPONSE_TIMEOUT)).await {
            Ok(Ok(fresh)) => {
                self.commands.store(Arc::new(fresh));
                tracing::info!("Redis Cluster: the gateway's primary did not answer; connected again to read the slots anew");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "Redis Cluster: no seed answered"),
            Err(_) => tracing::debug!("Redis Cluster: no seed answered in time"),
        }
    }

    /// Redis's clock as last read.
    pub fn clock(&self) -> &ServerClock {
        &self.clock
    }

    /// Whether Redis is one server, with no replica to fail over to (so
    /// that when it refuses connections there is no one else to ask).
    pub fn is_single(&self) -> bool {
        self.target.mode() == crate::redis_target::RedisMode::Single
    }

    /// The key `<prefix>:<name>` (hash-tagged in cluster mode).
    pub fn key(&self, name: &str) -> String {
        self.target.key(name)
    }

    /// The shared Redis it is connected to.
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// The shared command connection (a cheap handle).
    pub fn commands(&self) -> Commands {
        Commands::clone(&self.commands.load())
    }

    /// A connection of its own, for blocking reads, answering within `response`.
    pub async fn own_connection(&self, response: Duration) -> redis::RedisResult<Commands> {
        self.target.own_connection(&self.commands(), response).await
    }

    /// A pub/sub connection.
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        self.target.pubsub(&self.commands()).await
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
