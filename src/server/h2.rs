//! HTTP/2 connections: the bound hyper does not keep itself.
//!
//! hyper keeps an h2 connection that opens no stream for as long as the
//! peer answers its keep-alive PINGs, where HTTP/1.1 gets
//! `--header-timeout` between requests. [`Streams`] counts a connection's
//! open streams (a request being answered or a response body not yet
//! sent); the connection task closes the connection gracefully (GOAWAY)
//! once it has had none for `--h2-idle-timeout` ([`Streams::idle`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

#[derive(Debug)]
pub struct Streams {
    created: Instant,
    open: AtomicUsize,
    /// Nanoseconds after `created` that the last stream ended.
    idle_since: AtomicU64,
}

/// One open stream, counted until dropped (with the response body, or
/// with the request's future if the stream ends before its answer).
#[derive(Debug)]
pub struct OpenStream(Arc<Streams>);

impl Streams {
    /// A connection with no stream yet: idle from now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            created: Instant::now(),
            open: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
        })
    }

    /// Counts a stream (a request hyper just accepted).
    pub fn open(self: &Arc<Self>) -> OpenStream {
        self.open.fetch_add(1, Ordering::SeqCst);
        OpenStream(self.clone())
    }

    fn idle_since(&self) -> Option<Instant> {
        (self.open.load(Ordering::SeqCst) == 0)
            .then(|| self.created + Duration::from_nanos(self.idle_since.load(Ordering::SeqCst)))
    }

    /// Returns once the connection has had no open stream for `timeout`.
    /// It checks once per `timeout` while streams are open. (A stream that
    /// opens at the moment it returns is still served: the connection's
    /// graceful close lets accepted streams finish.)
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let wake = match self.idle_since() {
                Some(since) if since + timeout <= Instant::now() => return,
                Some(since) => since + timeout,
                None => Instant::now() + timeout,
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let streams = &self.0;
        let at = u64::try_from(streams.created.elapsed().as_nanos()).unwrap_or(u64::MAX);
        streams.idle_since.store(at, Ordering::SeqCst);
        streams.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body as hyper sends it: over HTTP/2 it holds the stream's
/// place in its connection's count of open streams (the body is dropped
/// when the stream ends). Over HTTP/1 it only passes the body through.
#[derive(Debug)]
pub struct Tracked {
    body: Body,
    _open: Option<OpenStream>,
}

impl Tracked {
    /// Wraps `body`, counted in `open` until dropped.
    pub fn new(body: Body, open: Option<OpenStream>) -> Self {
        Self { body, _open: open }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_one_timeout_after_its_last_stream() {
        let streams = Streams::new();
        let one = streams.open();
        let timeout = Duration::from_secs(10);
        let idle = tokio::spawn({
            let streams = streams.clone();
            async move { streams.idle(timeout).await }
        });
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(!idle.is_finished(), "idle with a stream open");
        drop(one);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!idle.is_finished(), "idle before the timeout");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(idle.is_finished());
    }
}
