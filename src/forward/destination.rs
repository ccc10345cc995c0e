//! Where forwarded events go: the destination kinds, their body formats,
//! the checks that need no network, and the redacted forms safe to log and
//! return.
//!
//! Secrets (webhook secret, extra header values, AWS keys) are kept here as
//! given; `Debug` and [`Destination::redacted`] never show them.

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::validation::FieldError;

/// The body a forwarded event is sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BodyFormat {
    /// The event's JSON (as posted, or the WRP JSON form for WRP events).
    #[default]
    Json,
    /// The whole WRP message, msgpack-encoded (`application/msgpack`).
    WrpMsgpack,
    /// The whole WRP message, JSON-encoded (`application/wrp+json`).
    WrpJson,
    /// Caduceus' default: the WRP payload bytes alone, with the message's
    /// own content type. Only xmidt `/hook` registrations use it.
    Payload,
}

impl BodyFormat {
    /// The media type that names this format in the API.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::WrpMsgpack => "application/msgpack",
            Self::WrpJson => "application/wrp+json",
            Self::Payload => "payload",
        }
    }

    /// Reads a media type as the API and xmidt name it.
    pub fn from_media_type(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "application/json" | "json" => Some(Self::Json),
            "application/msgpack"
            | "application/wrp+msgpack"
            | "application/wrp"
            | "wrp"
            | "msgpack" => Some(Self::WrpMsgpack),
            "application/wrp+json" => Some(Self::WrpJson),
            "payload" => Some(Self::Payload),
            _ => None,
        }
    }
}

impl Serialize for BodyFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.media_type())
    }
}

impl<'de> Deserialize<'de> for BodyFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_media_type(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown content_type {s:?}: use application/json, application/msgpack or application/wrp+json"
            ))
        })
    }
}

/// Where a registration's events go. Two registrations with equal
/// destinations share one buffer and one delivery worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Destination {
    /// An HTTP webhook.
    Http(HttpDestination),
    /// An AWS SQS queue.
    Sqs(SqsDestination),
}

/// An HTTP webhook destination. Its `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpDestination {
    /// Where events are POSTed.
    pub url: String,
    /// HMAC key: signs with `X-Webpa-Signature` (SHA-1) and Standard
    /// Webhooks' `webhook-signature` (SHA-256; a `whsec_` key is base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Extra request headers (e.g. `Authorization`). Values are secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The body format: `application/json` (default), `application/msgpack`
    /// or `application/wrp+json`.
    #[serde(default)]
    #[schema(value_type = String)]
    pub content_type: BodyFormat,
    /// Receives drop notices instead of `url`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_url: Option<String>,
}

/// An AWS SQS destination. Its `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqsDestination {
    /// The queue's URL.
    pub queue_url: String,
    /// The AWS region.
    pub region: String,
    /// Static credentials; without them the default AWS chain is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Secret half of the static credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// Endpoint override (a local SQS-API server, a VPC endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// The message body format (msgpack bodies are base64-encoded).
    #[serde(default)]
    #[schema(value_type = String)]
    pub content_type: BodyFormat,
}

/// A URL for debug output: its query (which may carry a token) hidden.
fn without_query(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?<redacted>"),
        None => url.to_owned(),
    }
}

/// What `Debug` shows of a secret: whether there is one.
fn redacted(secret: &Option<String>) -> &'static str {
    if secret.is_some() {
        "Some(<redacted>)"
    } else {
        "None"
    }
}

// Hand-written so that every derived `Debug` above these (registrations,
// outboxes, the app state) stays free of secrets.
impl std::fmt::Debug for HttpDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpDestination")
            .field("url", &without_query(&self.url))
            .field("secret", &format_args!("{}", redacted(&self.secret)))
            .field("header_names", &self.headers.keys().collect::<Vec<_>>())
            .field("content_type", &self.content_type)
            .field(
                "failure_url",
                &self.failure_url.as_deref().map(without_query),
            )
            .finish()
    }
}

impl std::fmt::Debug for SqsDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsDestination")
            .field("queue_url", &self.queue_url)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &format_args!("{}", redacted(&self.secret_access_key)),
            )
            .field(
                "session_token",
                &format_args!("{}", redacted(&self.session_token)),
            )
            .field("endpoint_url", &self.endpoint_url)
            .field("content_type", &self.content_type)
            .finish()
    }
}

impl Destination {
    /// A label safe to log and to export to anyone (`/metrics` is open):
    /// the kind, scheme, host and port, then `/#` and an 8 hex digit
    /// digest of the rest (path and query). Capability URLs (Slack,
    /// Discord, many SaaS ingest URLs) carry their secret in the path, and
    /// one tenant's registrations are not another's to read: the digest
    /// tells destinations on one host apart without showing either. Its
    /// length is bounded too (the host at [`LABEL_HOST_MAX`] bytes), so
    /// every series costs the same whatever URL a consumer registers.
    pub fn label(&self) -> String {
        let (kind, url) = match self {
            Self::Http(h) => ("http", &h.url),
            Self::Sqs(s) => ("sqs", &s.queue_url),
        };
        let Ok(u) = url::Url::parse(url) else {
            return format!("{kind}:invalid");
        };
        let host = u.host_str().unwrap_or("");
        let shown = if host.len() <= LABEL_HOST_MAX {
            host
        } else {
            host.get(..LABEL_HOST_MAX).unwrap_or("")
        };
        let mut digest = sha2::Sha256::new();
        if shown.len() < host.len() {
            // A cut host names no destination alone: the digest keeps it.
            digest.update(host.as_bytes());
        }
        digest.update(u[url::Position::BeforePath..].as_bytes());
        let digest = hex::encode(&digest.finalize()[..LABEL_DIGEST_BYTES]);
        let port = u
            .port_or_known_default()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        format!("{kind}:{}://{shown}{port}/#{digest}", u.scheme())
    }

    /// Every URL this destination makes the gateway contact, with the
    /// request field that names it (for errors).
    pub fn urls(&self) -> Vec<(&'static str, &str)> {
        match self {
            Self::Http(h) => std::iter::once(("destination.url", h.url.as_str()))
                .chain(
                    h.failure_url
                        .as_deref()
                        .map(|u| ("destination.failure_url", u)),
                )
                .collect(),
            Self::Sqs(s) => std::iter::once(("destination.queue_url", s.queue_url.as_str()))
                .chain(
                    s.endpoint_url
                        .as_deref()
                        .map(|u| ("destination.endpoint_url", u)),
                )
                .collect(),
        }
    }

    /// Checks everything that needs no network: URL shapes, header names
    /// and values, credential pairs. Address checks come later (SSRF).
    pub fn validate(&self, errors: &mut Vec<FieldError>) {
        for (field, url) in self.urls() {
            check_url(field, url, errors);
        }
        match self {
            Self::Http(h) => {
                if h.secret.as_deref() == Some("") {
                    errors.push(FieldError::new("destination.secret", "must not be empty"));
                }
                if h.headers.len() > 32 {
                    errors.push(FieldError::new("destination.headers", "at most 32 headers"));
                }
                for (name, value) in &h.headers {
                    let field = format!("destination.headers.{name}");
                    match HeaderName::from_bytes(name.as_bytes()) {
                        Err(_) => errors.push(FieldError::new(field, "not a valid header name")),
                        Ok(n) if RESERVED_HEADERS.contains(&n.as_str()) => {
                            errors.push(FieldError::new(field, "this header is set by the gateway"))
                        }
                        Ok(_) => {}
                    }
                    if HeaderValue::from_str(value).is_err() {
                        errors.push(FieldError::new(
                            format!("destination.headers.{name}"),
                            "not a valid header value",
                        ));
                    }
                }
            }
            Self::Sqs(s) => {
                let region_ok = !s.region.is_empty()
                    && s.region.len() <= 32
                    && s.region
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !region_ok {
                    errors.push(FieldError::new(
                        "destination.region",
                        "must be an AWS region such as us-east-1",
                    ));
                }
                if s.access_key_id.is_some() != s.secret_access_key.is_some() {
                    errors.push(FieldError::new(
                        "destination.secret_access_key",
                        "access_key_id and secret_access_key come together",
                    ));
                }
            }
        }
    }

    /// Keeps `previous`'s secret (and extra headers) where this replacing
    /// destination points at the same place and leaves them out (headers:
    /// given ones replace all, none keeps the old). Responses never show
    /// secrets, so a client that GETs, edits and PUTs cannot resend them.
    pub fn inherit_secrets(&mut self, previous: &Destination) {
        match (self, previous) {
            (Self::Http(new), Self::Http(old)) if new.url == old.url => {
                if new.secret.is_none() {
                    new.secret.clone_from(&old.secret);
                }
                if new.headers.is_empty() {
                    new.headers.clone_from(&old.headers);
                }
            }
            (Self::Sqs(new), Self::Sqs(old))
                if new.queue_url == old.queue_url
                    && new.access_key_id.is_none()
                    && new.secret_access_key.is_none() =>
            {
                new.access_key_id.clone_from(&old.access_key_id);
                new.secret_access_key.clone_from(&old.secret_access_key);
                new.session_token.clone_from(&old.session_token);
            }
            _ => {}
        }
    }

    /// The destination as responses show it: secrets replaced by flags.
    pub fn redacted(&self) -> serde_json::Value {
        match self {
            Self::Http(h) => serde_json::json!({
                "type": "http",
                "url": h.url,
                "content_type": h.content_type,
                "failure_url": h.failure_url,
                "has_secret": h.secret.is_some(),
                "header_names": h.headers.keys().collect::<Vec<_>>(),
            }),
            Self::Sqs(s) => serde_json::json!({
                "type": "sqs",
                "queue_url": s.queue_url,
                "region": s.region,
                "endpoint_url": s.endpoint_url,
                "content_type": s.content_type,
                "has_credentials": s.access_key_id.is_some(),
            }),
        }
    }
}

/// Most bytes of a host shown in a destination's label (a DNS name's
/// longest).
pub const LABEL_HOST_MAX: usize = 253;

/// Bytes of the digest of a URL's path and query in a label (8 hex digits:
/// enough to tell one host's destinations apart, too few to stand for a
/// secret).
const LABEL_DIGEST_BYTES: usize = 4;

/// Headers the gateway sets itself; a registration cannot override them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-webpa-signature",
];

fn check_url(field: &str, value: &str, errors: &mut Vec<FieldError>) {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                errors.push(FieldError::new(
                    field,
                    "must not carry credentials; use a header or the secret",
                ));
            }
        }
        Ok(_) => errors.push(FieldError::new(
            field,
            "must be an http or https URL with a host",
        )),
        Err(e) => errors.push(FieldError::new(field, format!("not a URL: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(url: &str) -> Destination {
        Destination::Http(HttpDestination {
            url: url.into(),
            secret: Some("s3cret".into()),
            headers: BTreeMap::from([("Authorization".into(), "Bearer tok".into())]),
            content_type: BodyFormat::Json,
            failure_url: None,
        })
    }

    #[test]
    fn debug_output_carries_no_secret() {
        let http = Destination::Http(HttpDestination {
            url: "https://h.example/x?token=TOPSECRET-Q".into(),
            secret: Some("TOPSECRET-S".into()),
            headers: [("Authorization".to_owned(), "Bearer TOPSECRET-H".to_owned())].into(),
            content_type: BodyFormat::default(),
            failure_url: Some("https://h.example/f?k=TOPSECRET-F".into()),
        });
        let sqs = Destination::Sqs(SqsDestination {
            queue_url: "https://sqs.example/1/q".into(),
            region: "eu-west-1".into(),
            access_key_id: Some("AKIA".into()),
            secret_access_key: Some("TOPSECRET-K".into()),
            session_token: Some("TOPSECRET-T".into()),
            endpoint_url: None,
            content_type: BodyFormat::default(),
        });
        for d in [http, sqs] {
            let text = format!("{d:?} {d:#?}");
            assert!(!text.contains("TOPSECRET"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
    }

    #[test]
    fn redacted_view_carries_no_secret() {
        let text = http("https://x.example/hook").redacted().to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("Bearer tok"),
            "{text}"
        );
        assert!(text.contains("\"has_secret\":true") && text.contains("Authorization"));
    }

    #[test]
    fn label_shows_host_and_port_and_only_a_digest_of_path_and_query() {
        let d = http("https://user:pw@x.example:8443/a/SECRET?token=TOKEN");
        let label = d.label();
        let digest = label
            .strip_prefix("http:https://x.example:8443/#")
            .unwrap_or_else(|| panic!("{label}"));
        assert!(
            digest.len() == 8 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{label}"
        );
        // The default port is named; the path and the query both count.
        assert!(http("https://x.example/a")
            .label()
            .starts_with("http:https://x.example:443/#"));
        assert_ne!(
            http("https://x.example/a").label(),
            http("https://x.example/b").label()
        );
        assert_ne!(
            http("https://x.example/a?k=1").label(),
            http("https://x.example/a?k=2").label()
        );
        assert_eq!(
            http("https://x.example/a").label(),
            http("https://x.example/a").label()
        );
        // A long host is cut, and still tells destinations apart.
        let long = vec!["h".repeat(50); 6].join(".");
        let (a, b) = (
            http(&format!("https://{long}.a/x")).label(),
            http(&format!("https://{long}.b/x")).label(),
        );
        assert!(a.len() < LABEL_HOST_MAX + 40, "{a}");
        assert_ne!(a, b);
        assert_eq!(http("not a url").label(), "http:invalid");
    }

    #[test]
    fn validation_names_each_bad_field() {
        let mut errors = Vec::new();
        let mut d = match http("ftp://x") {
            Destination::Http(h) => h,
            Destination::Sqs(_) => unreachable!(),
        };
        d.headers.insert("Content-Type".into(), "x".into());
        d.headers.insert("bad name".into(), "v".into());
        Destination::Http(d).validate(&mut errors);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "destination.url",
                "destination.headers.Content-Type",
                "destination.headers.bad name"
            ]
        );
    }
}
