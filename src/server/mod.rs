//! The accept loop: connection limit, protocol choice, timeouts against slow
//! clients, and graceful drain.
//!
//! We own the loop rather than use `axum::serve` because the gateway needs
//! what it does not offer: a cap on connections, a header-read timeout, a
//! write-stall timeout (a client that stops reading must not pin a
//! connection forever), the peer address in every request, and the lean
//! path that keeps an idle SSE subscriber to a few KB (see [`lean`]).
//! Every other request, and HTTP/2 (h2c), is served by hyper.

mod io;
pub mod lean;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::BytesMut;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use self::io::ClientIo;
use self::lean::Sniff;
use crate::telemetry::Metrics;

/// The client's address, put in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Most open connections.
    pub max_connections: usize,
    /// Time to receive request headers.
    pub header_timeout: Duration,
    /// Time a write may stay blocked before the connection is closed.
    pub write_timeout: Duration,
    /// Time given to open connections on shutdown.
    pub grace: Duration,
}

/// What every connection task shares.
struct Shared {
    router: Router,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    builder: auto::Builder<TokioExecutor>,
    stop: CancellationToken,
}

/// Serves `router` on `listener` until `stop` is cancelled, then drains.
/// Returns `false` if the grace period ran out with connections still open.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> bool {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let shared = Arc::new(Shared {
        router,
        limits: limits.clone(),
        metrics: metrics.clone(),
        builder,
        stop: stop.clone(),
    });
    let tracker = TaskTracker::new();

    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connection_rejected();
            tracing::debug!(%peer, "connection limit reached, closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tracker.spawn(async move {
            shared.metrics.connection_opened();
            connection(stream, PeerAddr(peer), &shared).await;
            shared.metrics.connection_closed();
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    tokio::select! {
        () = tracker.wait() => true,
        () = tokio::time::sleep(limits.grace) => {
            tracing::warn!(grace = ?limits.grace, open = tracker.len(), "grace period over, cutting remaining connections");
            false
        }
    }
}

/// Reads just enough of a new connection to choose its path, then serves it.
async fn connection(mut stream: TcpStream, peer: PeerAddr, shared: &Shared) {
    let mut buf = BytesMut::new();
    let sniffed = tokio::select! {
        () = shared.stop.cancelled() => return,
        sniffed = tokio::time::timeout(shared.limits.header_timeout, async {
            loop {
                match lean::sniff(&buf) {
                    Sniff::NeedMore => match lean::read_more(&mut stream, &mut buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    },
                    other => return Some(other),
                }
            }
        }) => sniffed,
    };
    match sniffed {
        Ok(Some(Sniff::Stream(len))) => {
            let head = buf.split_to(len).freeze();
            lean::serve(
                stream,
                head,
                peer,
                shared.router.clone(),
                shared.limits.write_timeout,
            )
            .await;
        }
        Ok(Some(_)) => hyper_connection(stream, buf, peer, shared).await,
        Ok(None) => {}
        Err(_) => tracing::debug!(peer = %peer.0, "request head not received in time"),
    }
}

/// Serves a connection with hyper (HTTP/1.1 keep-alive or h2c).
async fn hyper_connection(stream: TcpStream, read: BytesMut, peer: PeerAddr, shared: &Shared) {
    let io = TokioIo::new(ClientIo::new(
        stream,
        read.freeze(),
        shared.limits.write_timeout,
    ));
    let router = shared.router.clone();
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer);
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
    let conn = shared.builder.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shared.stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer.0, error = %e, "connection ended with an error");
    }
}
