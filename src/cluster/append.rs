//! Group commit of appends: concurrent ingest requests share one pipeline.
//!
//! Every request hands its encoded entries to one appender task, which
//! takes everything waiting (up to [`MAX_REQUESTS_PER_BATCH`]) and writes it
//! to Redis as one pipeline of XADDs: one write, one wake-up of Redis and
//! one reply to parse per batch instead of per request. Batches do not wait
//! for each other (the connection pipelines them, in order), so a batch
//! adds no latency beyond one turn of the scheduler.

use std::sync::Weak;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{ClusterError, SharedStream};
use crate::event::wire;
use crate::event::EventId;

/// Most requests in one pipeline (a request may hold many entries).
const MAX_REQUESTS_PER_BATCH: usize = 256;
/// Requests that may wait for the appender before senders wait too.
pub(super) const QUEUE: usize = 4096;

/// One request's entries, and where its ids go.
pub(super) struct Append {
    pub entries: Vec<Vec<(&'static str, Bytes)>>,
    pub reply: oneshot::Sender<Result<Vec<EventId>, ClusterError>>,
}

/// Runs until the stream is dropped or every sender is gone.
pub(super) async fn run(stream: Weak<SharedStream>, mut queue: mpsc::Receiver<Append>) {
    let mut batch = Vec::with_capacity(MAX_REQUESTS_PER_BATCH);
    while queue.recv_many(&mut batch, MAX_REQUESTS_PER_BATCH).await > 0 {
        if batch.len() < MAX_REQUESTS_PER_BATCH {
            // Requests that are ready to run now join this batch: the task
            // that woke the appender is often the first of several.
            tokio::task::yield_now().await;
            while batch.len() < MAX_REQUESTS_PER_BATCH {
                match queue.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
        }
        let Some(stream) = stream.upgrade() else {
            return;
        };
        let requests = std::mem::replace(&mut batch, Vec::with_capacity(MAX_REQUESTS_PER_BATCH));
        tokio::spawn(async move { stream.write_batch(requests).await });
    }
}

impl SharedStream {
    /// Writes one batch as one pipeline and answers each request.
    async fn write_batch(&self, requests: Vec<Append>) {
        let mut pipe = redis::pipe();
        for entry in requests.iter().flat_map(|r| &r.entries) {
            let cmd = pipe
                .cmd("XADD")
                .arg(self.name())
                .arg("MAXLEN")
                .arg("~")
                .arg(self.max_len)
                .arg("*");
            for (k, v) in entry {
                cmd.arg(*k).arg(&v[..]);
            }
        }
        let started = Instant::now();
        let replies: Result<Vec<redis::Value>, ClusterError> = self
            .link()
            .observe(started, pipe.query_async(&mut self.link().commands()).await);
        let mut replies = match replies {
            Ok(r) => r.into_iter(),
            Err(e) => {
                let why = e.to_string();
                for r in requests {
                    let _ = r.reply.send(Err(ClusterError::Unavailable(why.clone())));
                }
                return;
            }
        };
        for r in requests {
            let ids = (&mut replies)
                .take(r.entries.len())
                .map(|v| wire::added_id(&v).map_err(|e| ClusterError::Unavailable(e.to_string())))
                .collect::<Result<Vec<_>, _>>()
                .and_then(|ids| {
                    if ids.len() == r.entries.len() {
                        Ok(ids)
                    } else {
                        Err(ClusterError::Unavailable(
                            "Redis answered fewer appends than sent".into(),
                        ))
                    }
                });
            // The request may have given up (client gone): its events are
            // in the stream all the same, as with any accepted write.
            let _ = r.reply.send(ids);
        }
    }
}
