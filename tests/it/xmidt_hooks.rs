//! xmidt compatibility: a Caduceus webhook registration, unchanged,
//! receives signed events; posting the same URL renews it.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::client::Api;
use crate::support::receiver::Receiver;
use crate::support::util::Gateway;

const WAIT: Duration = Duration::from_secs(10);

fn hook(url: &str, events: &[&str], devices: &[&str], duration: Value) -> Value {
    json!({
        "config": {"url": url, "content_type": "application/json", "secret": "my-webhook-secret"},
        "events": events,
        "matcher": {"device_id": devices},
        "duration": duration,
        "registered_from_address": "ignored",
    })
}

#[tokio::test]
async fn caduceus_hook_receives_signed_payloads_as_caduceus_sends_them() {
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    let r = gw
        .post(
            "/hook",
            "application/json",
            hook(
                &rx.url("/events"),
                &["device-status/.*"],
                &["mac:112233445566"],
                json!("1m"),
            )
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({"message": "Success"}));

    gw.publish_vector("simple-event-online.msgpack").await;
    let got = rx.wait_for("/events", 1, WAIT).await;
    let d = &got[0];
    // Body = the WRP payload alone, with the message's content type, and
    // the brief's worked signature for exactly this body and secret.
    assert_eq!(
        &d.body[..],
        br#"{"id":"mac:112233445566","ts":"2023-11-14T22:13:20Z","reason-for-closure":""}"#
    );
    assert_eq!(d.header("content-type"), "application/json");
    assert_eq!(
        d.header("x-webpa-signature"),
        "sha1=32a6a96bdd8cc956dea2f90432d8f900797d4a08"
    );
    assert_eq!(
        d.header("x-webpa-event"),
        "device-status/mac:112233445566/online"
    );
    assert_eq!(d.header("x-webpa-device-id"), "mac:112233445566");
    assert_eq!(
        d.header("x-webpa-transaction-id"),
        "0b4a6a1e-8c5b-4d0e-9d3b-6f1f2a3c4d5e"
    );
    assert_eq!(d.header("x-xmidt-message-type"), "SimpleEvent");
    assert_eq!(d.header("x-webpa-source"), "mac:112233445566");
}

#[tokio::test]
async fn events_and_device_regexes_filter_as_in_caduceus() {
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    let body = hook(&rx.url("/h"), &["node-change"], &["mac:aabb.*"], json!(60));
    assert_eq!(
        gw.post("/api/v2/hook", "application/json", body.to_string())
            .await
            .status,
        200
    );
    // device-status from mac:112233445566: neither the event nor the device matches.
    gw.publish_vector("simple-event-online.msgpack").await;
    // A JSON event of type node-change from a matching device.
    let r = gw
        .post(
            "/api/events?device=mac:aabbccddeeff&type=node-change",
            "application/json",
            "{\"n\":1}",
        )
        .await;
    assert_eq!(r.status, 202);
    let got = rx.wait_for("/h", 1, WAIT).await;
    assert_eq!(&got[0].body[..], b"{\"n\":1}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received("/h").len(), 1);
}

#[tokio::test]
async fn posting_the_same_url_renews_and_lists_obfuscated() {
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    let url = rx.url("/renew");
    for duration in [json!(30), json!("5m")] {
        let r = gw
            .post(
                "/hook",
                "application/json",
                hook(&url, &[".*"], &[".*"], duration).to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let hooks = gw.get("/hooks").await;
    let list = hooks.body.as_array().unwrap();
    assert_eq!(list.len(), 1, "one webhook per URL: {}", hooks.text);
    assert_eq!(list[0]["config"]["secret"], "<obfuscated>");
    assert_eq!(
        list[0]["duration"], 300_000_000_000u64,
        "nanoseconds, renewed"
    );
    assert!(!hooks.text.contains("my-webhook-secret"));
    let regs = gw.get("/api/registrations").await;
    assert_eq!(regs.body["items"][0]["origin"], "xmidt_hook");
}

#[tokio::test]
async fn bad_hooks_are_refused_with_400_and_a_message() {
    let gw = Gateway::start().await;
    for body in [
        hook("http://127.0.0.1:9/x", &[], &[], json!(60)),
        hook("http://127.0.0.1:9/x", &["("], &[], json!(60)),
        hook("http://127.0.0.1:9/x", &[".*"], &[], json!("2h")),
        hook("http://127.0.0.1:9/x", &[".*"], &[], json!(null)),
        hook("http://169.254.169.254/x", &[".*"], &[], json!(60)),
        hook("ftp://x/", &[".*"], &[], json!(60)),
        json!({"events": [".*"]}),
    ] {
        let r = gw.post("/hook", "application/json", body.to_string()).await;
        r.assert_problem(400);
        assert!(
            r.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            r.text
        );
    }
}

/// Issue 24, item 2: a `matcher.device_id` regex matches the event's
/// device only, never the source or WRP event path a publisher chooses.
/// A publisher scoped to `dev-mallory` sends 4 forged events naming
/// `mac:112233445566` every other way it can; the consumer registered for
/// `^mac:112233445566$` gets none of them, and the one real event.
#[tokio::test]
async fn a_scoped_publisher_cannot_reach_a_device_pattern_hook_through_source_or_event_path() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    const SECRET: &str = "a-jwt-secret-of-some-good-length-0123";
    let token = |claim: Value| {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let exp = chrono::Utc::now().timestamp() + 600;
        let claims = json!({"sub": "t", "exp": exp, "ratatoskr": claim});
        format!(
            "Bearer {}",
            encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        )
    };
    let (admin, mallory) = (
        token(json!({"admin": true})),
        token(json!({"publish": ["dev-mallory"]})),
    );
    let rx = Receiver::start().await;
    let gw = Gateway::start_with(|c| c.jwt_secret = Some(SECRET.parse().unwrap())).await;
    let body = hook(
        &rx.url("/victim"),
        &[".*"],
        &["^mac:112233445566$"],
        json!(60),
    );
    let r = gw
        .post_with(
            "/hook",
            "application/json",
            body.to_string(),
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    /// Path, content type, body, extra headers.
    type Forged<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);
    let forged: [Forged; 4] = [
        ("/api/events?device=dev-mallory&source=mac:112233445566", "application/json", "{\"forged\":1}", &[]),
        ("/api/events?device=dev-mallory", "application/json", "{\"forged\":2}", &[("x-event-source", "mac:112233445566")]),
        ("/api/events?device=dev-mallory", "application/json", "{\"forged\":3,\"source\":\"mac:112233445566\"}", &[]),
        (
            "/api/events?device=dev-mallory",
            "application/wrp+json",
            "{\"msg_type\":4,\"source\":\"mac:112233445566\",\"dest\":\"event:node-change/mac:112233445566/online\"}",
            &[],
        ),
    ];
    for (i, (path, ct, body, extra)) in forged.into_iter().enumerate() {
        let mut headers = vec![("authorization", mallory.as_str())];
        headers.extend_from_slice(extra);
        let r = gw.post_with(path, ct, body, &headers).await;
        if ct == "application/wrp+json" {
            // A WRP message naming a device outside the publish scope (its
            // source, its event path) is refused whatever `?device=` says.
            r.assert_problem(403);
        } else {
            assert_eq!(r.status, 202, "forged {}: {path}: {}", i + 1, r.text);
        }
    }
    // Nor can an `events` regex over the event path be reached that way:
    // a hook on `node-change/mac:112233445566/.*` for any device.
    let body = hook(
        &rx.url("/by-path"),
        &["node-change/mac:112233445566/.*"],
        &[".*"],
        json!(60),
    );
    let r = gw
        .post_with(
            "/hook",
            "application/json",
            body.to_string(),
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = gw
        .post_with(
            "/api/events?device=dev-mallory",
            "application/wrp+json",
            "{\"msg_type\":4,\"source\":\"dns:mallory\",\"dest\":\"event:node-change/mac:112233445566/online\"}",
            &[("authorization", &mallory)],
        )
        .await;
    r.assert_problem(403);
    let real = gw
        .post_with(
            "/api/events?device=mac:112233445566",
            "application/json",
            "{\"real\":1}",
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(real.status, 202, "{}", real.text);
    rx.wait_for("/victim", 1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<String> = rx
        .received("/victim")
        .iter()
        .map(|d| String::from_utf8_lossy(&d.body).into_owned())
        .collect();
    assert_eq!(
        got,
        ["{\"real\":1}"],
        "forged events of 4 reached the victim's hook"
    );
}
