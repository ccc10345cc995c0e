//! HTTP webhook delivery: one POST per event, signed, with the xmidt
//! headers; and the drop notice. While a rotated secret's grace period
//! runs, `webhook-signature` carries a signature by each secret.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, StatusCode};

use super::failure::Failure;
use super::payload::{self, Body};
use super::ssrf::AddressPolicy;
use crate::event::Event;
use crate::forward::destination::HttpDestination;

/// Most response body bytes read (then discarded) per delivery.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Sends to one webhook.
#[derive(Debug)]
pub struct WebhookSink {
    destination: HttpDestination,
    /// Parsed once: every delivery reuses it.
    url: Result<url::Url, Failure>,
    notice_url: Result<url::Url, Failure>,
    client: reqwest::Client,
    timeout: Duration,
}

impl WebhookSink {
    /// A transport for `destination`. Its URLs are parsed, and any IP
    /// literal in them checked against `policy`, once: an IP literal never
    /// reaches the resolver, which guards host names on every connection.
    pub fn new(
        destination: HttpDestination,
        client: reqwest::Client,
        policy: &AddressPolicy,
        timeout: Duration,
    ) -> Self {
        let url = checked_url(policy, &destination.url);
        let notice_url = match &destination.failure_url {
            Some(f) => checked_url(policy, f),
            None => url.clone(),
        };
        Self {
            destination,
            url,
            notice_url,
            client,
            timeout,
        }
    }

    /// Delivers one event; `replay`: again, on request (marked
    /// `X-Ratatoskr-Replay: true`, with the first delivery's
    /// `webhook-id`, so that receivers can tell and deduplicate). Returns
    /// the status the receiver answered.
    pub async fn deliver(&self, event: &Event, replay: bool) -> Result<u16, Failure> {
        let body = payload::encode(self.destination.content_type, event);
        let mut headers = payload::event_headers(event);
        if replay {
            headers.insert(
                HeaderName::from_static("x-ratatoskr-replay"),
                HeaderValue::from_static("true"),
            );
        }
        let id = event.id.to_string();
        self.sign_and_post(&self.url, &id, body, &mut headers).await
    }

    /// Posts a notice of `kind` (JSON) to the failure URL, or else the
    /// webhook (a disable notice is only sent when there is a failure URL:
    /// see `DeliveryContext::destination_gone`).
    pub async fn post_notice(
        &self,
        kind: &'static str,
        notice_id: &str,
        json: Bytes,
    ) -> Result<(), Failure> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-ratatoskr-notice"),
            HeaderValue::from_static(kind),
        );
        let body = Body {
            bytes: json,
            content_type: "application/json".into(),
        };
        self.sign_and_post(&self.notice_url, notice_id, body, &mut headers)
            .await
            .map(|_| ())
    }

    async fn sign_and_post(
        &self,
        url: &Result<url::Url, Failure>,
        id: &str,
        body: Body,
        headers: &mut http::HeaderMap,
    ) -> Result<u16, Failure> {
        let url = url.clone()?;
        let now = chrono::Utc::now();
        let timestamp = now.timestamp();
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        put("webhook-id", id.to_owned());
        put("webhook-timestamp", timestamp.to_string());
        if let Some(secret) = &self.destination.secret {
            // xmidt receivers check one signature: the current secret's.
            put(
                "x-webpa-signature",
                payload::xmidt_signature(secret, &body.bytes),
            );
            // During a rotation's grace period (checked now, at signing),
            // the old secret signs too, after the new one.
            put(
                "webhook-signature",
                payload::standard_signatures(
                    self.destination.signing_secrets(now),
                    id,
                    timestamp,
                    &body.bytes,
                ),
            );
        }
        if let Ok(ct) = HeaderValue::from_str(&body.content_type) {
            headers.insert(header::CONTENT_TYPE, ct);
        }
        for (k, v) in &self.destination.headers {
            // Validated at registration; a bad one is skipped, never sent.
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.insert(k, v);
            }
        }
        let response = self
            .client
            .post(url)
            .headers(std::mem::take(headers))
            .timeout(self.timeout)
            .body(body.bytes)
            .send()
            .await
            // The URL may carry a token in its query: keep it out of errors and logs.
            .map_err(|e| Failure::Retryable(describe(&e.without_url())))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, std::time::SystemTime::now()));
        drain(response).await;
        match (classify(status), retry_after) {
            (Err(Failure::Retryable(why)), Some(after))
                if status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::SERVICE_UNAVAILABLE =>
            {
                Err(Failure::RetryAfter(why, after))
            }
            (outcome, _) => outcome.map(|()| status.as_u16()),
        }
    }
}

/// A `Retry-After` value: seconds, or an HTTP date (as a wait from `now`;
/// a date in the past is no wait). `None` when it is neither.
pub fn retry_after(value: &str, now: std::time::SystemTime) -> Option<std::time::Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// 2xx is delivered; 408, 429 and 5xx are worth retrying; 410 says the
/// receiver is gone for good; any other status is the receiver's final
/// answer for this event.
pub fn classify(status: StatusCode) -> Result<(), Failure> {
    if status.is_success() {
        Ok(())
    } else if status == StatusCode::GONE {
        Err(Failure::Gone(format!("status {status}")))
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Err(Failure::Retryable(format!("status {status}")))
    } else {
        Err(Failure::Permanent(format!("status {status}")))
    }
}

/// Parses `raw`; an IP-literal host must be one `policy` permits.
fn checked_url(policy: &AddressPolicy, raw: &str) -> Result<url::Url, Failure> {
    let parsed = url::Url::parse(raw).map_err(|e| Failure::Permanent(e.to_string()))?;
    let ip = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    };
    if let Some(ip) = ip {
        policy
            .check(ip)
            .map_err(|e| Failure::Permanent(e.to_string()))?;
    }
    Ok(parsed)
}

async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while read < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(c)) => read += c.len(),
            _ => break,
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_only_what_may_succeed_later() {
        for s in [500, 502, 503, 504, 408, 429] {
            let s = StatusCode::from_u16(s).unwrap();
            assert!(matches!(classify(s), Err(Failure::Retryable(_))), "{s}");
        }
        assert!(matches!(classify(StatusCode::GONE), Err(Failure::Gone(_))));
        for s in [400, 401, 403, 404, 413, 301] {
            let s = StatusCode::from_u16(s).unwrap();
            assert!(matches!(classify(s), Err(Failure::Permanent(_))), "{s}");
        }
        assert!(classify(StatusCode::NO_CONTENT).is_ok());
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        assert_eq!(
            retry_after("7", now),
            Some(std::time::Duration::from_secs(7))
        );
        assert_eq!(retry_after(" 0 ", now), Some(std::time::Duration::ZERO));
        let later = httpdate::fmt_http_date(now + std::time::Duration::from_secs(30));
        assert_eq!(
            retry_after(&later, now),
            Some(std::time::Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - std::time::Duration::from_secs(30));
        assert_eq!(retry_after(&past, now), Some(std::time::Duration::ZERO));
        for bad in ["", "-1", "soon", "1.5", "99999999999999999999999"] {
            assert_eq!(retry_after(bad, now), None, "{bad:?}");
        }
    }
}
