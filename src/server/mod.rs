//! The accept loop: connection limit, protocol choice, timeouts against slow
//! clients, and graceful drain.
//!
//! We own the loop rather than use `axum::serve` because the gateway needs
//! what it does not offer: a cap on connections, a header-read timeout, a
//! write-stall timeout (a client that stops reading must not pin a
//! connection forever), the peer address in every request, and the lean
//! path that keeps an idle SSE subscriber to a few KB (see [`lean`]).
//! Every other request, HTTP/2 (h2c), and every TLS connection
//! ([`tls`]) is served by hyper; HTTP/2 connections under the bounds of
//! [`h2`] (per-address count, idle close, stalled-stream reset).

mod h2;
mod io;
pub mod lean;
pub mod per_ip;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::io::ClientIo;
use self::lean::Sniff;
use crate::telemetry::Metrics;

/// The client's address, put in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// What the accept loop serves. The HTTP API implements it; the server
/// knows nothing else of it.
pub trait Service: Clone + Send + Sync + 'static {
    /// The router, for the lean path (which serves `GET` streams only).
    fn router(&self) -> &axum::Router;

    /// The per-address count (`--max-streams-per-ip`) that HTTP/2
    /// connections take a place under.
    fn streams_per_ip(&self) -> &Arc<per_ip::StreamsPerIp>;

    /// Answers one request from `peer`. The future is boxed: hyper moves
    /// the future it is given, and a request's state can be kilobytes.
    fn call(
        self,
        request: http::Request<hyper::body::Incoming>,
        peer: PeerAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = axum::response::Response> + Send>>;
}

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Most open connections.
    pub max_connections: usize,
    /// Time to receive request headers.
    pub header_timeout: Duration,
    /// Time a write may stay blocked before the connection is closed.
    pub write_timeout: Duration,
    /// Time an HTTP/2 connection may stay open with no stream.
    pub h2_idle_timeout: Duration,
    /// Time given to open connections on shutdown.
    pub grace: Duration,
    /// A publish may write events straight to idle lean streams' sockets
    /// (`--inline-writes`; see `hub::subscriber`).
    pub inline_writes: bool,
}

/// Descriptors kept back from client connections: the store, outbound
/// webhook and SQS connections, DNS, logs. This much at least; more when
/// `--max-outbound-connections` needs it ([`fd_reserve`]).
pub const FD_RESERVE: u64 = 512;

/// Descriptors kept back for everything but client connections: the
/// `outbound` connections forwarding may hold, plus half of
/// [`FD_RESERVE`] for the rest, and never less than [`FD_RESERVE`].
pub fn fd_reserve(outbound: usize) -> u64 {
    let outbound = u64::try_from(outbound).unwrap_or(u64::MAX);
    outbound.saturating_add(FD_RESERVE / 2).max(FD_RESERVE)
}

/// The connection cap that fits the process's descriptor limit: at most
/// `configured`, and at most the soft `RLIMIT_NOFILE` less the reserve
/// ([`fd_reserve`] of `outbound`). Past the descriptor limit `accept`
/// fails, and the connections waiting in the backlog are neither served
/// nor refused.
pub fn connection_cap(configured: usize, outbound: usize) -> usize {
    let Some(soft) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current else {
        // Unlimited.
        return configured;
    };
    let reserve = fd_reserve(outbound);
    let fits = soft.saturating_sub(reserve).max(1);
    let cap = configured.min(usize::try_from(fits).unwrap_or(usize::MAX));
    if cap < configured {
        tracing::warn!(
            configured,
            cap,
            nofile = soft,
            reserve,
            "connection cap lowered to fit the file descriptor limit (raise `ulimit -n` for more)"
        );
    } else {
        tracing::info!(cap, nofile = soft, "connection cap");
    }
    cap
}

/// Lifts the soft descriptor limit to the hard one (every subscriber is a
/// socket). Returns the soft limit now (`None`: unlimited).
pub fn raise_descriptor_limit() -> Result<Option<u64>, std::io::Error> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit)?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// Waits after a failed `accept`: 5 ms, doubling to 1 s while failures
/// go on, so a full descriptor table neither spins nor floods the log.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    fn delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(5u64 << self.failures.min(9).saturating_sub(1))
            .min(Duration::from_secs(1))
    }
}

/// What every connection task shares.
struct Shared<S> {
    api: S,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    builder: auto::Builder<h2::StreamExecutor>,
    stop: CancellationToken,
    tls: Option<Arc<tls::Tls>>,
}

/// Serves `api` on `listener` until `stop` is cancelled, then drains.
/// Returns `false` if the grace period ran out with connections still open.
pub async fn serve<S: Service>(
    listener: TcpListener,
    api: S,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tls: Option<Arc<tls::Tls>>,
) -> bool {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(h2::StreamExecutor {
        write_timeout: limits.write_timeout,
    });
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Head and body in one buffer, written with one `send`: the answers
        // are small, and `writev` costs the kernel more per call (measured
        // on the ingest path). It is also what hyper advises under TLS.
        .writev(false)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let shared = Arc::new(Shared {
        api,
        limits: limits.clone(),
        metrics: metrics.clone(),
        builder,
        stop: stop.clone(),
        tls,
    });
    let tracker = TaskTracker::new();
    let mut backoff = AcceptBackoff::default();

    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff = AcceptBackoff::default();
                    a
                }
                Err(e) => {
                    // EMFILE and friends: keep the listener, back off.
                    let delay = backoff.delay();
                    if backoff.failures == 1 || delay == Duration::from_secs(1) {
                        tracing::warn!(error = %e, retry_in = ?delay, "accept failed");
                    }
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
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
            match &shared.tls {
                // Boxed, as hyper's path below: a task is as large as its
                // largest path, and a lean stream's task lives for hours.
                Some(tls) => Box::pin(tls_connection(stream, PeerAddr(peer), &shared, tls)).await,
                None => connection(stream, PeerAddr(peer), &shared).await,
            }
            shared.metrics.connection_closed();
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    tokio::select! {
        () = tracker.wait() => true,
        () = tokio::time::sleep(limits.grace) => {
            tracing::warn!(grace = ?limits.grace, open = tracker.len(), "grace period over: stopping with connections still open (they end with the process)");
            false
        }
    }
}

/// Reads just enough of a new connection to choose its path, then serves it.
async fn connection<S: Service>(mut stream: TcpStream, peer: PeerAddr, shared: &Shared<S>) {
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
            // The head only: the rest of the read buffer is not kept for
            // the stream's life.
            let head = Bytes::copy_from_slice(&buf[..len]);
            drop(buf);
            lean::serve(
                stream,
                head,
                peer,
                shared.api.router().clone(),
                shared.limits.write_timeout,
                shared.limits.inline_writes,
            )
            .await;
        }
        // Boxed: hyper's connection state is kilobytes, which the task of
        // every idle lean stream would otherwise reserve.
        Ok(Some(Sniff::Http2)) => {
            Box::pin(hyper_connection(stream, buf, peer, shared, Protocol::Http2)).await;
        }
        Ok(Some(_)) => {
            Box::pin(hyper_connection(stream, buf, peer, shared, Protocol::Http1)).await;
        }
        Ok(None) => {}
        Err(_) => tracing::debug!(peer = %peer.0, "request head not received in time"),
    }
}

/// Completes the TLS handshake (within the header timeout), then serves
/// the connection with hyper, in the protocol ALPN chose.
async fn tls_connection<S: Service>(
    stream: TcpStream,
    peer: PeerAddr,
    shared: &Shared<S>,
    tls: &tls::Tls,
) {
    let handshake = tokio::select! {
        () = shared.stop.cancelled() => return,
        h = tokio::time::timeout(shared.limits.header_timeout, tls.acceptor().accept(stream)) => h,
    };
    match handshake {
        Ok(Ok(stream)) => {
            let protocol = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            hyper_connection(stream, BytesMut::new(), peer, shared, protocol).await;
        }
        Ok(Err(e)) => tracing::debug!(peer = %peer.0, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(peer = %peer.0, "TLS handshake not done in time"),
    }
}

/// The protocol of a connection for hyper, as the accept loop knows it
/// (the h2c preface, or TLS's ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Serves a connection with hyper (HTTP/1.1 keep-alive or HTTP/2). An
/// HTTP/2 connection takes a place under `--max-streams-per-ip` (or is
/// closed at once), and is closed once it has had no stream for
/// `--h2-idle-timeout`.
async fn hyper_connection<S: Service, C>(
    stream: C,
    read: BytesMut,
    peer: PeerAddr,
    shared: &Shared<S>,
    protocol: Protocol,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The place is held for as long as the connection is served.
    let (_place, streams) = match protocol {
        Protocol::Http1 => (None, None),
        Protocol::Http2 => match shared.api.streams_per_ip().open_h2_connection(peer.0.ip()) {
            Ok(place) => (place, Some(h2::Streams::new())),
            Err(cap) => {
                tracing::debug!(peer = %peer.0, cap = cap.0, "HTTP/2 connections from this address at --max-streams-per-ip: closing");
                return;
            }
        },
    };
    let io = TokioIo::new(ClientIo::new(
        stream,
        read.freeze(),
        shared.limits.write_timeout,
    ));
    let api = shared.api.clone();
    let counted = streams.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        // Counted as hyper accepts the stream, before its answer is begun.
        let open = counted.as_ref().map(h2::Streams::open);
        let call = api.clone().call(req, peer);
        async move {
            let response = call.await;
            // An HTTP/2 stream task's cell (see `h2`); none over HTTP/1.
            let progress = h2::Progress::current();
            Ok::<_, std::convert::Infallible>(
                response.map(|body| h2::Tracked::new(body, progress, open)),
            )
        }
    });
    let idle = async {
        match &streams {
            Some(s) => s.idle(shared.limits.h2_idle_timeout).await,
            None => std::future::pending().await,
        }
    };
    let conn = shared.builder.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shared.stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = idle => {
            tracing::debug!(peer = %peer.0, idle = ?shared.limits.h2_idle_timeout, "HTTP/2 connection idle, closing");
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer.0, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_one_second() {
        let mut b = AcceptBackoff::default();
        let delays: Vec<u128> = (0..10).map(|_| b.delay().as_millis()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }
}
