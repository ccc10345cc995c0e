//! AWS SQS delivery: `SendMessageBatch` of up to 10 waiting events, with
//! the event's device, type and id as message attributes.
//!
//! SQS bodies are text, so binary formats (WRP msgpack) are base64-encoded
//! and marked with a `content-transfer-encoding: base64` attribute. The
//! SDK does not retry: throttling and transient errors come back as
//! retryable failures, and the worker retries them like any sink's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::error::{DisplayErrorContext, SdkError};
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use base64::Engine as _;

use super::failure::Failure;
use super::outbox::Queued;
use super::payload;
use super::ssrf::{AddressPolicy, GuardedResolver};
use crate::event::Event;
use crate::forward::destination::{BodyFormat, SqsDestination};

/// Most messages in one SendMessageBatch (the SQS limit).
pub const BATCH_MAX: usize = 10;

/// Sends to one queue.
#[derive(Debug)]
pub struct SqsSink {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    format: BodyFormat,
}

impl SqsSink {
    /// Builds the SDK client for this destination. The SDK does not retry:
    /// the delivery worker does, in one place for every sink, so that
    /// attempts do not multiply and the `retried` metric counts them all.
    ///
    /// Its HTTP client resolves host names through the gateway's SSRF
    /// guard, so an endpoint whose name later points inside is refused on
    /// every connection, as for webhooks.
    pub async fn new(d: &SqsDestination, timeout: Duration, policy: Arc<AddressPolicy>) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .build_with_resolver(GuardedResolver::new(policy));
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(d.region.clone()))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(timeout)
                    .build(),
            );
        if let (Some(key), Some(secret)) = (&d.access_key_id, &d.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                key,
                secret,
                d.session_token.clone(),
                None,
                "ratatoskr-registration",
            ));
        }
        if let Some(endpoint) = &d.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        let config = loader.load().await;
        Self {
            client: aws_sdk_sqs::Client::new(&config),
            queue_url: d.queue_url.clone(),
            format: d.content_type,
        }
    }

    /// Sends a batch. `Ok(n)`: the batch went, and `n` of its entries were
    /// refused by SQS (they are not retried; a retry would duplicate the
    /// others).
    pub async fn send_batch(&self, batch: &[Queued]) -> Result<usize, Failure> {
        let entries = batch
            .iter()
            .enumerate()
            .filter_map(|(i, q)| entry(i, &q.event.event, self.format))
            .collect::<Vec<_>>();
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(classify)?;
        Ok(out.failed().len())
    }

    /// Sends a drop notice as one message with a `notice` attribute.
    pub async fn send_notice(&self, kind: &'static str, json: String) -> Result<(), Failure> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(json)
            .message_attributes("notice", string_attr(kind))
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }
}

fn string_attr(v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .expect("data_type is set")
}

fn entry(i: usize, event: &Event, format: BodyFormat) -> Option<SendMessageBatchRequestEntry> {
    let body = payload::encode(format, event);
    let mut attrs = HashMap::new();
    let text = match std::str::from_utf8(&body.bytes) {
        Ok(t) if format != BodyFormat::WrpMsgpack => t.to_owned(),
        _ => {
            attrs.insert("content-transfer-encoding".into(), string_attr("base64"));
            base64::engine::general_purpose::STANDARD.encode(&body.bytes)
        }
    };
    let d = &event.draft;
    attrs.insert("event_id".into(), string_attr(&event.id.to_string()));
    attrs.insert("content_type".into(), string_attr(&body.content_type));
    // SQS refuses empty attribute values, so absent ones are left out.
    if let Some(t) = d.event_type.as_deref().filter(|t| !t.is_empty()) {
        attrs.insert("event_type".into(), string_attr(t));
    }
    if let Some(dev) = &d.device {
        attrs.insert("device_id".into(), string_attr(dev.as_str()));
    }
    SendMessageBatchRequestEntry::builder()
        .id(i.to_string())
        .message_body(text)
        .set_message_attributes(Some(attrs))
        .build()
        .ok()
}

/// Throttling and server-side failures are worth another attempt; other
/// refusals (a missing queue, bad credentials) are not.
fn classify<E>(e: SdkError<E, aws_sdk_sqs::config::http::HttpResponse>) -> Failure
where
    E: std::error::Error + aws_sdk_sqs::error::ProvideErrorMetadata + 'static,
{
    let text = DisplayErrorContext(&e).to_string();
    let status = e.raw_response().map(|r| r.status().as_u16());
    let transient_code = match &e {
        SdkError::ServiceError(s) => s.err().code().is_some_and(|c| {
            c.contains("Throttl")
                || c == "RequestThrottled"
                || c.contains("Unavailable")
                || c == "InternalError"
                || c == "InternalFailure"
        }),
        _ => false,
    };
    match e {
        SdkError::ServiceError(_)
            if transient_code || status.is_some_and(|s| s >= 500 || s == 429) =>
        {
            Failure::Retryable(format!("SQS busy: {text}"))
        }
        SdkError::ServiceError(_) | SdkError::ConstructionFailure(_) => {
            Failure::Permanent(format!("SQS refused: {text}"))
        }
        _ => Failure::Retryable(format!("SQS unreachable: {text}")),
    }
}
