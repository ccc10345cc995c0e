//! What a destination receives for one event: body, content type, the
//! xmidt headers Caduceus sends, and both signatures.

use std::borrow::Cow;

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::event::device::Locator;
use crate::event::{wrp, Event};
use crate::forward::destination::BodyFormat;

/// The encoded body of one event.
#[derive(Debug, Clone)]
pub struct Body {
    /// The bytes sent.
    pub bytes: Bytes,
    /// Their media type.
    pub content_type: String,
}

/// The event as a WRP message: its own for WRP events, else a
/// `SimpleEvent` built from it (dest `event:<type>/<device>`, the event id
/// as transaction uuid, the JSON as payload).
pub fn wrp_message(event: &Event) -> Cow<'_, wrp::Message> {
    if let Some(m) = &event.draft.wrp {
        return Cow::Borrowed(m);
    }
    let d = &event.draft;
    let ty = d.event_type.as_deref().unwrap_or("event");
    let dest = match &d.device {
        Some(dev) => format!("event:{ty}/{}", dev.as_str()),
        None => format!("event:{ty}"),
    };
    // WRP wants a locator (`scheme:authority`) as source.
    let source = if Locator::parse(&d.source).is_ok() {
        d.source.clone()
    } else {
        format!("dns:{}", d.source)
    };
    Cow::Owned(wrp::Message {
        msg_type: 4,
        source,
        dest,
        transaction_uuid: event.id.to_string(),
        content_type: "application/json".into(),
        payload: Some(d.data.to_vec()),
        metadata: (!d.metadata.is_empty()).then(|| d.metadata.clone()),
        ..Default::default()
    })
}

/// Encodes `event` as `format` asks.
pub fn encode(format: BodyFormat, event: &Event) -> Body {
    match format {
        BodyFormat::Json => Body {
            bytes: event.draft.data.clone(),
            content_type: "application/json".into(),
        },
        BodyFormat::WrpMsgpack => Body {
            bytes: wrp_message(event).to_msgpack().into(),
            content_type: "application/msgpack".into(),
        },
        BodyFormat::WrpJson => Body {
            bytes: wrp_message(event).to_json().into(),
            content_type: "application/wrp+json".into(),
        },
        BodyFormat::Payload => match &event.draft.wrp {
            Some(m) => Body {
                bytes: Bytes::from(m.payload.clone().unwrap_or_default()),
                content_type: if m.content_type.is_empty() {
                    "application/json".into()
                } else {
                    m.content_type.clone()
                },
            },
            None => encode(BodyFormat::Json, event),
        },
    }
}

/// The headers describing the event, as Caduceus sends them (§8 of the
/// xmidt brief), plus the gateway's own id/type/device headers.
pub fn event_headers(event: &Event) -> HeaderMap {
    let m = wrp_message(event);
    let device = event.draft.device.as_ref().map_or("", |d| d.as_str());
    let mut h = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.append(HeaderName::from_static(name), v);
        }
    };
    let msg_type = m
        .message_type()
        .map_or("Unknown", wrp::MessageType::friendly_name);
    put("x-xmidt-message-type", msg_type);
    if !m.source.is_empty() {
        put("x-xmidt-source", &m.source);
    }
    if !m.transaction_uuid.is_empty() {
        put("x-xmidt-transaction-uuid", &m.transaction_uuid);
        put("x-webpa-transaction-id", &m.transaction_uuid);
    }
    if !m.session_id.is_empty() {
        put("x-xmidt-session-id", &m.session_id);
    }
    for (k, v) in m.metadata.iter().flatten() {
        put("x-xmidt-metadata", &format!("{k}={v}"));
    }
    for p in m.partner_ids.iter().flatten() {
        put("x-xmidt-partner-id", p);
    }
    put(
        "x-webpa-event",
        m.dest.strip_prefix("event:").unwrap_or(&m.dest),
    );
    put("x-webpa-device-id", device);
    put("x-webpa-device-name", device);
    put("x-webpa-source", &m.source);
    put("x-webpa-destination", &m.dest);
    put("x-event-id", &event.id.to_string());
    if let Some(t) = &event.draft.event_type {
        put("x-event-type", t);
    }
    if !device.is_empty() {
        put("x-device-id", device);
    }
    h
}

/// `sha1=<hex>` of HMAC-SHA1(secret, body): xmidt's `X-Webpa-Signature`.
pub fn xmidt_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Standard Webhooks' `webhook-signature`: `v1,<base64 HMAC-SHA256>` over
/// `<id>.<timestamp>.<body>`. A `whsec_` secret is a base64 key, as the
/// specification has it; any other secret is used as raw bytes.
pub fn standard_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    let key: Vec<u8> = secret
        .strip_prefix("whsec_")
        .and_then(|k| engine.decode(k).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", engine.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header for several secrets: one
/// [`standard_signature`] each, in their order, space separated, as
/// Standard Webhooks has it for key rotation (a receiver accepts the
/// request if any one verifies).
pub fn standard_signatures<'a>(
    secrets: impl IntoIterator<Item = &'a str>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .into_iter()
        .map(|s| standard_signature(s, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xmidt_signature_matches_the_brief() {
        assert_eq!(
            xmidt_signature("secret", b"hello"),
            "sha1=5112055c05f944f85755efc5cd8970e194e9f45b"
        );
        let body =
            br#"{"id":"mac:112233445566","ts":"2023-11-14T22:13:20Z","reason-for-closure":""}"#;
        assert_eq!(
            xmidt_signature("my-webhook-secret", body),
            "sha1=32a6a96bdd8cc956dea2f90432d8f900797d4a08"
        );
    }

    #[test]
    fn standard_signature_matches_the_reference_example() {
        // The Standard Webhooks specification's published example.
        let sig = standard_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn two_secrets_sign_with_two_space_separated_signatures_in_order() {
        let (new, old) = (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_dGhlIG9sZCBvbmUsIHN0aWxsIHZhbGlkIQ==",
        );
        let (id, ts, body) = (
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            &br#"{"test": 2432232314}"#[..],
        );
        let header = standard_signatures([new, old], id, ts, body);
        assert_eq!(
            header,
            format!(
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= {}",
                standard_signature(old, id, ts, body)
            ),
            "the new secret's first (the reference example's), then the old one's"
        );
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")), "{header}");
        assert_ne!(parts[0], parts[1]);
        assert_eq!(
            standard_signatures([new], id, ts, body),
            standard_signature(new, id, ts, body),
            "one secret, one signature"
        );
        assert_eq!(standard_signatures([], id, ts, body), "");
    }

    #[test]
    fn json_events_become_simple_events() {
        let e = crate::event::test_event(9, Some("mac:112233445566"), Some("online"));
        let m = wrp_message(&e);
        assert_eq!(m.msg_type, 4);
        assert_eq!(m.dest, "event:online/mac:112233445566");
        let decoded =
            wrp::Message::from_msgpack(&encode(BodyFormat::WrpMsgpack, &e).bytes).unwrap();
        assert_eq!(decoded.payload.as_deref(), Some(&b"1"[..]));
        let h = event_headers(&e);
        assert_eq!(h["x-webpa-event"], "online/mac:112233445566");
        assert_eq!(h["x-webpa-device-id"], "mac:112233445566");
    }
}
