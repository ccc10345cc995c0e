//! HTTP/2 connections and streams: the bounds hyper does not keep itself.
//!
//! hyper keeps an h2 connection that opens no stream for as long as the
//! peer answers its keep-alive PINGs, and a stream whose peer grants no
//! flow-control window for as long as the connection lives: its send pipe
//! waits for window without polling the body again, and the socket stays
//! writable (the peer reads PINGs and answers them), so neither the body's
//! timers nor [`ClientIo`](super::io::ClientIo)'s write timeout ever see
//! the stall. Two guards close those holes:
//!
//! - [`Streams`] counts a connection's open streams (a request being
//!   answered or a response body not yet sent); the connection task closes
//!   the connection gracefully (GOAWAY) once it has had none for
//!   `--h2-idle-timeout` ([`Streams::idle`]).
//! - [`StreamExecutor`] runs each stream task hyper spawns under a
//!   watchdog. The response body ([`Tracked`]) notes when it handed hyper
//!   a chunk that is still waiting to be sent; a chunk that waits longer
//!   than `--write-timeout` ends the task, and h2 resets the stream
//!   (RST_STREAM CANCEL) as its handles drop. The body goes with it, and an
//!   SSE stream's subscription and queue with the body. Other streams on
//!   the connection go on.
//!
//! The watchdog is in the stream's own task, not the connection's: a timer
//! per stream only while a chunk waits, and nothing to scan.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::task::futures::TaskLocalFuture;
use tokio::time::{Instant, Sleep};

tokio::task_local! {
    /// The progress cell of the stream task being polled (set by
    /// [`StreamExecutor`]), for the service to give the response body.
    static PROGRESS: Arc<Progress>;
}

/// Since when a stream's body has had a chunk waiting for the peer's
/// flow-control window; nothing while it waits for data of its own (an
/// idle SSE stream is not stalled).
#[derive(Debug)]
pub struct Progress {
    created: Instant,
    /// Nanoseconds after `created`, plus 1, that the waiting chunk was
    /// handed over; 0: none waits.
    waiting_since: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            created: Instant::now(),
            waiting_since: AtomicU64::new(0),
        }
    }

    /// The body handed hyper a chunk: hyper polls the body again once the
    /// chunk is sent, so until then the chunk is waiting.
    fn handed_over(&self) {
        let at = u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        // Relaxed: the body and the watchdog are polled by the same task.
        self.waiting_since.store(at + 1, Ordering::Relaxed);
    }

    /// The body has nothing to send (it waits for data, or has ended).
    fn caught_up(&self) {
        self.waiting_since.store(0, Ordering::Relaxed);
    }

    fn waiting_since(&self) -> Option<Instant> {
        match self.waiting_since.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.created + Duration::from_nanos(n - 1)),
        }
    }

    /// The cell of the stream task polling this, if it is an HTTP/2 stream
    /// task ([`StreamExecutor`]).
    pub fn current() -> Option<Arc<Self>> {
        PROGRESS.try_with(Arc::clone).ok()
    }
}

/// hyper's executor for HTTP/2 stream tasks: each runs under the stall
/// watchdog ([`Watched`]).
#[derive(Debug, Clone, Copy)]
pub struct StreamExecutor {
    /// How long a chunk may wait for window (`--write-timeout`).
    pub write_timeout: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, task: F) {
        let progress = Arc::new(Progress::new());
        tokio::spawn(Watched {
            task: Box::pin(PROGRESS.scope(progress.clone(), task)),
            progress,
            limit: self.write_timeout,
            timer: None,
        });
    }
}

/// A stream task that ends (dropping the stream, which h2 then resets)
/// once its body's chunk has waited for window longer than `limit`.
struct Watched<F: Future<Output = ()>> {
    task: Pin<Box<TaskLocalFuture<Arc<Progress>, F>>>,
    progress: Arc<Progress>,
    limit: Duration,
    /// Armed at the deadline of the chunk that was waiting when it was
    /// set; when it fires it is moved on if a later chunk waits now. Not
    /// re-armed after every chunk: a timer-wheel update per chunk costs
    /// more than a wake-up per `limit`.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.task.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        loop {
            let Some(since) = this.progress.waiting_since() else {
                // Nothing waits: a timer set before finds this when it
                // fires, and is not polled again until a chunk waits.
                return Poll::Pending;
            };
            let deadline = since + this.limit;
            if deadline <= Instant::now() {
                tracing::debug!(
                    write_timeout = ?this.limit,
                    "HTTP/2 stream got no flow-control window in time: reset"
                );
                return Poll::Ready(());
            }
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            timer.as_mut().reset(deadline);
        }
    }
}

/// A connection's open streams, and since when it has had none.
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

/// A response body as hyper sends it: it tells the stall watchdog when a
/// chunk is waiting (HTTP/2 streams), and holds the stream's place in its
/// connection's count of open streams. Over HTTP/1 it holds neither and
/// only passes the body through.
#[derive(Debug)]
pub struct Tracked {
    body: Body,
    progress: Option<Arc<Progress>>,
    _open: Option<OpenStream>,
}

impl Tracked {
    /// Wraps `body`; its first chunk counts as waiting from now (hyper
    /// sends the head, then polls the body).
    pub fn new(body: Body, progress: Option<Arc<Progress>>, open: Option<OpenStream>) -> Self {
        if let Some(p) = &progress {
            p.handed_over();
        }
        Self {
            body,
            progress,
            _open: open,
        }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(p) = &this.progress {
            match &poll {
                Poll::Ready(Some(Ok(_))) => p.handed_over(),
                _ => p.caught_up(),
            }
        }
        poll
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

    #[tokio::test(start_paused = true)]
    async fn a_chunk_that_waits_past_the_limit_ends_the_stream_task() {
        // The stream task's body reports as the real one does: while the
        // task is polled (`true`: a chunk handed over, `false`: caught up).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
        let progress = Arc::new(Progress::new());
        let body = {
            let progress = progress.clone();
            async move {
                while let Some(waiting) = rx.recv().await {
                    if waiting {
                        progress.handed_over();
                    } else {
                        progress.caught_up();
                    }
                }
            }
        };
        let task = tokio::spawn(Watched {
            task: Box::pin(PROGRESS.scope(progress.clone(), body)),
            progress,
            limit: Duration::from_secs(5),
            timer: None,
        });
        // Idle (nothing waiting) for longer than the limit: kept.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!task.is_finished());
        // Chunks that keep going out within the limit: kept.
        for _ in 0..5 {
            tx.send(true).unwrap();
            tokio::time::sleep(Duration::from_secs(4)).await;
            tx.send(false).unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(!task.is_finished());
        tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!task.is_finished(), "4 s of a 5 s limit");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(task.is_finished(), "a chunk waited 6 s past a 5 s limit");
        drop(tx);
    }
}
