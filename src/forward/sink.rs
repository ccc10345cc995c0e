//! The one shape every destination kind delivers through.
//!
//! The worker, its retries, the notices, the delivery log and the metrics
//! are written once against [`Sink`]; a destination kind only says how to
//! send a batch and a notice, and how large a batch may be.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use super::destination::Destination;
use super::failure::Failure;
use super::outbox::Queued;
use super::sqs::SqsSink;
use super::ssrf::AddressPolicy;
use super::webhook::WebhookSink;

/// What a successful [`Sink::send`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Events of the batch refused one by one (not retried: a retry
    /// would repeat the others).
    pub refused: usize,
    /// The HTTP status the destination answered with, if one.
    pub status: Option<u16>,
}

/// Where a destination's events are sent.
pub trait Sink: Send + Sync + 'static {
    /// Most events in one [`Sink::send`].
    fn batch_max(&self) -> usize;

    /// One attempt at a batch.
    fn send(&self, batch: &[Queued]) -> impl Future<Output = Result<Sent, Failure>> + Send;

    /// One attempt at a notice of `kind` (`dropped`, `disabled`; a JSON
    /// document). Never retried: a notice must not add load to a
    /// destination that is already behind.
    fn notice(
        &self,
        kind: &'static str,
        json: String,
    ) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// What opening a sink needs of the delivery context.
#[derive(Debug, Clone, Copy)]
pub struct SinkSetup<'a> {
    /// The shared webhook client.
    pub http: &'a reqwest::Client,
    /// The outbound address policy (SSRF).
    pub policy: &'a Arc<AddressPolicy>,
    /// Time per attempt.
    pub timeout: std::time::Duration,
}

/// A sink of either kind, chosen by the destination.
#[derive(Debug)]
pub enum AnySink {
    /// An HTTP webhook.
    Webhook(Box<WebhookSink>),
    /// An SQS queue.
    Sqs(SqsSink),
}

impl AnySink {
    /// Opens the sink for `d` (an SQS sink loads an AWS configuration).
    pub async fn open(d: &Destination, ctx: SinkSetup<'_>) -> Self {
        match d {
            Destination::Http(h) => Self::Webhook(Box::new(WebhookSink::new(
                h.clone(),
                ctx.http.clone(),
                ctx.policy,
                ctx.timeout,
            ))),
            Destination::Sqs(s) => {
                Self::Sqs(SqsSink::new(s, ctx.timeout, ctx.policy.clone()).await)
            }
        }
    }
}

impl Sink for AnySink {
    fn batch_max(&self) -> usize {
        match self {
            Self::Webhook(s) => s.batch_max(),
            Self::Sqs(s) => s.batch_max(),
        }
    }

    async fn send(&self, batch: &[Queued]) -> Result<Sent, Failure> {
        match self {
            Self::Webhook(s) => s.send(batch).await,
            Self::Sqs(s) => s.send(batch).await,
        }
    }

    async fn notice(&self, kind: &'static str, json: String) -> Result<(), Failure> {
        match self {
            Self::Webhook(s) => s.notice(kind, json).await,
            Self::Sqs(s) => s.notice(kind, json).await,
        }
    }
}

impl Sink for WebhookSink {
    fn batch_max(&self) -> usize {
        1
    }

    async fn send(&self, batch: &[Queued]) -> Result<Sent, Failure> {
        let mut status = None;
        for q in batch {
            status = Some(self.deliver(&q.event.event, q.replay).await?);
        }
        Ok(Sent { refused: 0, status })
    }

    async fn notice(&self, kind: &'static str, json: String) -> Result<(), Failure> {
        let id = format!("notice_{}", uuid::Uuid::new_v4().simple());
        self.post_notice(kind, &id, Bytes::from(json)).await
    }
}

impl Sink for SqsSink {
    fn batch_max(&self) -> usize {
        super::sqs::BATCH_MAX
    }

    async fn send(&self, batch: &[Queued]) -> Result<Sent, Failure> {
        let refused = self.send_batch(batch).await?;
        Ok(Sent {
            refused,
            status: None,
        })
    }

    async fn notice(&self, kind: &'static str, json: String) -> Result<(), Failure> {
        self.send_notice(kind, json).await
    }
}

/// A destination's sink, opened on first use and then shared by its
/// worker and its drop notices.
pub type SharedSink = Arc<tokio::sync::OnceCell<Arc<AnySink>>>;

/// The sink in `shared`, opening it for `d` if this is the first use.
pub async fn opened(shared: &SharedSink, d: &Destination, ctx: SinkSetup<'_>) -> Arc<AnySink> {
    shared
        .get_or_init(|| async { Arc::new(AnySink::open(d, ctx).await) })
        .await
        .clone()
}
