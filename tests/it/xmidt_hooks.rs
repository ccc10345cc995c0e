//! xmidt compatibility: a Caduceus webhook registration, unchanged,
//! receives signed events; posting the same URL renews it.

use std::time::Duration;

use serde_json::{json, Value};

use crate::receiver::Receiver;
use crate::util::Gateway;

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
