//! Where forwarded events go: the destination kinds, their body formats,
//! the checks that need no network, and the redacted forms safe to log and
//! return.
//!
//! Secrets (webhook secret, extra header values, AWS keys) are kept here as
//! given; `Debug` and [`Destination::redacted`] never show them.
//!
//! A webhook's secret can be rotated with a grace period: the secret a
//! `PUT` replaces is kept as [`PreviousSecret`] until an absolute time (never
//! a ttl, so a destination reads the same on every load and stays the same
//! key of its outbox), and signatures are made with both until then
//! ([`HttpDestination::signing_secrets`], checked at each signing).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
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
    /// On `PUT`, with a new `secret`: how long the secret it replaces stays
    /// valid (seconds, or a duration such as `"10m"`; at most the
    /// registration's `duration`). Meanwhile Standard Webhooks requests
    /// carry both signatures, the new one first; `X-Webpa-Signature` only
    /// the new one. Without it the old secret stops at once. Read when the
    /// registration is built, which keeps the absolute expiry instead:
    /// never stored, never returned.
    // Never serialised; not `skip_serializing`, which would leave it out of
    // the request schema too.
    #[serde(default, skip_serializing_if = "never_serialised")]
    #[schema(schema_with = previous_secret_ttl_schema)]
    pub previous_secret_ttl: Option<serde_json::Value>,
    /// The secret a rotation replaced, while its grace period runs. Set by
    /// the gateway only (a request naming it is refused); stored, never
    /// returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub previous_secret: Option<PreviousSecret>,
}

/// `previous_secret_ttl` in the OpenAPI document: seconds or a duration
/// text, as `duration` takes.
fn previous_secret_ttl_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    serde_json::from_value(serde_json::json!({
        "description": "On PUT, with a new `secret`: how long the secret it replaces stays valid \
            (seconds, or a duration such as \"10m\"; at most the registration's `duration`). \
            Meanwhile `webhook-signature` carries both signatures, the new one first; \
            `X-Webpa-Signature` only the new one. Without it the old secret stops at once. \
            Never returned: the response shows `has_previous_secret` and \
            `previous_secret_expires_at`.",
        "oneOf": [
            {"type": "string", "examples": ["10m"]},
            {"type": "integer", "minimum": 1},
            {"type": "null"}
        ]
    }))
    .expect("a schema")
}

/// Leaves a request-only field out of every serialised form.
fn never_serialised<T>(_: &T) -> bool {
    true
}

/// A webhook secret that a rotation replaced, and when it stops being
/// valid (wall clock, so the grace period keeps running across a
/// restart). Its `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousSecret {
    /// The old secret.
    pub secret: String,
    /// When it stops signing.
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for PreviousSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviousSecret")
            .field("secret", &format_args!("<redacted>"))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl HttpDestination {
    /// The secrets that sign a request made at `now`: the current one,
    /// then the previous one while its grace period runs. Empty without a
    /// secret.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> impl Iterator<Item = &str> {
        let previous = self
            .previous_secret
            .as_ref()
            .filter(|p| p.expires_at > now)
            .map(|p| p.secret.as_str());
        self.secret.as_deref().into_iter().chain(previous)
    }

    /// The previous secret still valid at `now`.
    fn previous_at(&self, now: DateTime<Utc>) -> Option<&PreviousSecret> {
        self.previous_secret.as_ref().filter(|p| p.expires_at > now)
    }
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
            .field("previous_secret", &self.previous_secret)
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

    /// The destination's name in checkpoints and leases: a digest of its
    /// whole document, so that no secret appears where it is stored.
    pub fn digest(&self) -> String {
        let doc = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&sha2::Sha256::digest(&doc)[..16])
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
                if h.previous_secret.is_some() {
                    errors.push(FieldError::new(
                        "destination.previous_secret",
                        "is kept by the gateway: send previous_secret_ttl with a new secret",
                    ));
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

    /// Decides the previous secret of this destination, built from a
    /// request at `now` to replace `old` (the registration's destination so
    /// far, `None` for a new one). Only the gateway sets it, so whatever the
    /// request carried is replaced:
    /// - the same place (`url`) and the same secret (resent, or left out
    ///   and inherited): a running grace period goes on;
    /// - the same place and a new secret: the old one stays valid for
    ///   `grace` (the request's `previous_secret_ttl`), or stops at once
    ///   without it; an older previous secret stops at once either way;
    /// - anything else: no previous secret.
    ///
    /// The request's ttl is cleared: the expiry is kept as a time, so the
    /// destination is the same on every load.
    pub fn rotate_from(
        &mut self,
        old: Option<&Destination>,
        grace: Option<Duration>,
        now: DateTime<Utc>,
    ) {
        let Self::Http(new) = self else {
            return;
        };
        new.previous_secret_ttl = None;
        let old = match old {
            Some(Self::Http(old)) if old.url == new.url => old,
            _ => {
                new.previous_secret = None;
                return;
            }
        };
        new.previous_secret = if new.secret == old.secret {
            old.previous_at(now).cloned()
        } else {
            match (
                &old.secret,
                grace.and_then(|g| chrono::Duration::from_std(g).ok()),
            ) {
                (Some(secret), Some(grace)) => Some(PreviousSecret {
                    secret: secret.clone(),
                    expires_at: now + grace,
                }),
                _ => None,
            }
        };
    }

    /// The destination as responses show it at `now`: secrets replaced by
    /// flags (and a previous secret's expiry, while it is valid).
    pub fn redacted(&self, now: DateTime<Utc>) -> serde_json::Value {
        match self {
            Self::Http(h) => {
                let previous = h.previous_at(now);
                serde_json::json!({
                    "type": "http",
                    "url": h.url,
                    "content_type": h.content_type,
                    "failure_url": h.failure_url,
                    "has_secret": h.secret.is_some(),
                    "has_previous_secret": previous.is_some(),
                    "previous_secret_expires_at": previous
                        .map(|p| p.expires_at.to_rfc3339_opts(SecondsFormat::Millis, true)),
                    "header_names": h.headers.keys().collect::<Vec<_>>(),
                })
            }
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
            previous_secret_ttl: None,
            previous_secret: None,
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
            previous_secret_ttl: None,
            previous_secret: Some(PreviousSecret {
                secret: "TOPSECRET-P".into(),
                expires_at: Utc::now(),
            }),
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
        let text = http("https://x.example/hook")
            .redacted(Utc::now())
            .to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("Bearer tok"),
            "{text}"
        );
        assert!(text.contains("\"has_secret\":true") && text.contains("Authorization"));
    }

    fn with_secret(d: &Destination, secret: Option<&str>) -> Destination {
        let mut d = d.clone();
        if let Destination::Http(h) = &mut d {
            h.secret = secret.map(Into::into);
        }
        d
    }

    fn previous(d: &Destination) -> Option<&PreviousSecret> {
        match d {
            Destination::Http(h) => h.previous_secret.as_ref(),
            Destination::Sqs(_) => None,
        }
    }

    #[test]
    fn a_new_secret_keeps_the_old_one_for_the_grace_only() {
        let now = Utc::now();
        let old = http("https://x.example/hook");
        let grace = Some(Duration::from_secs(600));
        let mut rotated = with_secret(&old, Some("new"));
        rotated.rotate_from(Some(&old), grace, now);
        let p = previous(&rotated).expect("the old secret kept");
        assert_eq!(p.secret, "s3cret");
        assert_eq!(p.expires_at, now + chrono::Duration::seconds(600));
        let Destination::Http(h) = &rotated else {
            unreachable!()
        };
        assert_eq!(
            h.signing_secrets(now).collect::<Vec<_>>(),
            ["new", "s3cret"]
        );
        assert_eq!(
            h.signing_secrets(p.expires_at).collect::<Vec<_>>(),
            ["new"],
            "expired at its time"
        );
        let view = rotated.redacted(now);
        assert_eq!(view["has_previous_secret"], true);
        assert!(view["previous_secret_expires_at"].is_string(), "{view}");
        assert!(!view.to_string().contains("s3cret"), "{view}");
        assert_eq!(rotated.redacted(p.expires_at)["has_previous_secret"], false);

        // The same secret again (resent, or inherited): the grace goes on.
        let later = now + chrono::Duration::seconds(60);
        let mut renewed = with_secret(&old, Some("new"));
        renewed.rotate_from(Some(&rotated), None, later);
        assert_eq!(previous(&renewed), previous(&rotated));
        // Past its expiry it is dropped.
        let mut renewed = with_secret(&old, Some("new"));
        renewed.rotate_from(Some(&rotated), None, p.expires_at);
        assert_eq!(previous(&renewed), None);
        // A new secret without a ttl: the old one stops at once, and so
        // does an older one still in its grace.
        let mut again = with_secret(&old, Some("newer"));
        again.rotate_from(Some(&rotated), None, later);
        assert_eq!(previous(&again), None);
        // Another place, or no registration before: nothing to keep, and
        // nothing a request said is kept either.
        let mut elsewhere = with_secret(&http("https://y.example/hook"), Some("new"));
        if let Destination::Http(h) = &mut elsewhere {
            h.previous_secret = Some(p.clone());
            h.previous_secret_ttl = Some(serde_json::json!("10m"));
        }
        elsewhere.rotate_from(Some(&old), grace, now);
        assert_eq!(previous(&elsewhere), None);
        let Destination::Http(h) = &elsewhere else {
            unreachable!()
        };
        assert_eq!(h.previous_secret_ttl, None, "the ttl is never kept");
        let mut fresh = with_secret(&old, Some("new"));
        fresh.rotate_from(None, grace, now);
        assert_eq!(previous(&fresh), None);
    }

    #[test]
    fn a_stored_rotation_reads_back_the_same_and_drops_the_ttl() {
        let now = Utc::now();
        let old = http("https://x.example/hook");
        let mut rotated = with_secret(&old, Some("new"));
        if let Destination::Http(h) = &mut rotated {
            h.previous_secret_ttl = Some(serde_json::json!("10m"));
        }
        rotated.rotate_from(Some(&old), Some(Duration::from_secs(600)), now);
        let stored = serde_json::to_string(&rotated).unwrap();
        assert!(!stored.contains("previous_secret_ttl"), "{stored}");
        let loaded: Destination = serde_json::from_str(&stored).unwrap();
        assert_eq!(loaded, rotated, "the same destination, so the same outbox");
        // A ttl is never serialised, even if one were left.
        let mut left = old.clone();
        if let Destination::Http(h) = &mut left {
            h.previous_secret_ttl = Some(serde_json::json!(5));
        }
        assert!(!serde_json::to_string(&left).unwrap().contains("ttl"));
    }

    #[test]
    fn a_request_may_not_name_the_previous_secret() {
        let mut d = http("https://x.example/hook");
        if let Destination::Http(h) = &mut d {
            h.previous_secret = Some(PreviousSecret {
                secret: "mine".into(),
                expires_at: Utc::now(),
            });
        }
        let mut errors = Vec::new();
        d.validate(&mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "destination.previous_secret");
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
