//! Ratatoskr: a Server-Sent Events broadcast gateway.
//!
//! Data flows one way: `http::ingest` decodes a request into an
//! [`event::EventDraft`], the [`hub::Hub`] gives it an id, keeps it for
//! replay and fans it out to matching subscribers, whose `http::sse` streams
//! write it. [`run`] wires the parts together and owns their lifecycle.

pub mod config;
pub mod error;
pub mod event;
pub mod http;
pub mod hub;
pub mod idempotency;
pub mod server;
pub mod shutdown;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::AppState;
use crate::hub::{CloseReason, Hub, HubConfig};
use crate::idempotency::IdempotencyCache;
use crate::server::ServerLimits;
use crate::shutdown::Phase;
use crate::telemetry::Metrics;

/// Runs the gateway on `listener` until `shutdown` resolves, then stops in
/// order (readiness, listener, streams, drain). Returns `true` if the drain
/// finished within the grace period.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(
        HubConfig {
            replay_capacity: config.replay_capacity,
            replay_max_age: config.replay_max_age,
            subscriber_buffer: config.subscriber_buffer,
            max_subscribers: config.max_subscribers,
        },
        metrics.clone(),
    );
    let limits = ServerLimits {
        max_connections: config.max_connections,
        header_timeout: config.header_timeout,
        write_timeout: config.write_timeout,
        grace: config.shutdown_grace,
    };
    let app = Arc::new(AppState {
        idempotency: IdempotencyCache::new(config.idempotency_window, config.idempotency_max_keys),
        config,
        hub: hub.clone(),
        metrics: metrics.clone(),
        readiness: Default::default(),
        started: Instant::now(),
    });
    let router = http::router(app.clone());
    let stop_accepting = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listener,
        router,
        limits,
        metrics,
        stop_accepting.clone(),
    ));
    app.readiness.set(Phase::Ready);
    tracing::info!("ready");

    shutdown.await;
    tracing::info!("shutting down");
    app.readiness.set(Phase::ShuttingDown);
    stop_accepting.cancel();
    hub.close(CloseReason::Shutdown);
    let drained = server.await.unwrap_or(false);
    tracing::info!(drained, "stopped");
    drained
}
