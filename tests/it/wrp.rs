//! WRP ingest against the shared test vectors.

use std::time::Duration;

use crate::support::client::Api;
use crate::support::util::{vector, vectors_dir, Gateway};

const VALID: &[&str] = &[
    "simple-event-wrpgo-example",
    "simple-event-online",
    "simple-event-no-payload",
    "simple-event-unicode-qos",
    "simple-event-empty-collections",
    "simple-event-large-metadata",
    "simple-request-response",
    "simple-request-response-status",
    "authorization",
    "create",
    "retrieve",
    "update",
    "delete",
    "service-registration",
    "service-alive",
];

/// Every invalid vector and the status it must get: 400 for what cannot be
/// decoded, 422 for a decoded message that breaks a WRP rule.
const INVALID: &[(&str, u16)] = &[
    ("invalid-truncated", 400),
    ("invalid-wrong-type-source", 400),
    ("invalid-payload-as-str", 400),
    ("invalid-not-a-map", 400),
    ("invalid-non-utf8-dest", 400),
    ("invalid-unknown-msg-type", 422),
    ("invalid-missing-source", 422),
    ("invalid-missing-msg-type", 422),
    ("invalid-srr-missing-transaction-uuid", 422),
    ("invalid-bad-locator", 422),
    ("invalid-qos-out-of-range", 422),
    ("invalid-unsupported-field", 422),
];

#[test]
fn every_vector_is_covered() {
    let mut names: Vec<String> = std::fs::read_dir(vectors_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".msgpack").map(str::to_owned))
        .collect();
    names.sort();
    let mut covered: Vec<String> = VALID
        .iter()
        .map(|s| s.to_string())
        .chain(INVALID.iter().map(|(s, _)| s.to_string()))
        .collect();
    covered.sort();
    assert_eq!(names, covered);
}

#[tokio::test]
async fn valid_msgpack_vectors_stream_as_their_wrp_json_form() {
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events").await;
    for name in VALID {
        for ct in ["application/msgpack", "application/wrp+msgpack"] {
            let r = gw
                .post("/api/events", ct, vector(&format!("{name}.msgpack")))
                .await;
            assert_eq!(r.status, 202, "{name} as {ct}: {}", r.text);
            let expected = String::from_utf8(vector(&format!("{name}.json"))).unwrap();
            let ev = sub.expect_event().await;
            assert_eq!(ev.data, expected.trim_end(), "{name}");
            assert_eq!(ev.id.as_deref(), r.body["id"].as_str());
        }
    }
}

#[tokio::test]
async fn valid_json_vectors_are_accepted_as_wrp_json() {
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events").await;
    for name in VALID {
        let json = vector(&format!("{name}.json"));
        let r = gw
            .post("/api/events", "application/wrp+json", json.clone())
            .await;
        assert_eq!(r.status, 202, "{name}: {}", r.text);
        assert_eq!(
            sub.expect_event().await.data,
            String::from_utf8(json).unwrap().trim_end(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn invalid_vectors_get_the_right_error_and_publish_nothing() {
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events").await;
    for (name, status) in INVALID {
        let r = gw
            .post(
                "/api/events",
                "application/msgpack",
                vector(&format!("{name}.msgpack")),
            )
            .await;
        r.assert_problem(*status);
    }
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn wrp_routing_comes_from_the_locators() {
    let gw = Gateway::start().await;
    let mut online = gw
        .subscribe("/events?device=mac:112233445566&type=device-status&format=envelope")
        .await;
    let mut by_source = gw
        .subscribe("/events?device=mac:112233445566&type=SimpleRequestResponse")
        .await;
    gw.post(
        "/api/events",
        "application/msgpack",
        vector("simple-event-online.msgpack"),
    )
    .await;
    let env = online.expect_event().await.json();
    assert_eq!(env["device"], "mac:112233445566");
    assert_eq!(env["type"], "device-status");
    assert_eq!(env["source"], "mac:112233445566");
    assert_eq!(env["content_type"], "application/msgpack");
    assert_eq!(env["metadata"]["/hw-model"], "TG4482A");
    assert_eq!(
        env["payload"]["dest"],
        "event:device-status/mac:112233445566/online"
    );

    gw.post(
        "/api/events",
        "application/msgpack",
        vector("simple-request-response-status.msgpack"),
    )
    .await;
    let ev = by_source.expect_event().await;
    assert_eq!(ev.json()["status"], 200);
    online.expect_silence(Duration::from_millis(200)).await;
}

/// Issue 24 ("found by a full read"): a decode error is classified by the
/// decoder's error variant, not by words in its message, which can quote
/// the client's own text. A `metadata` of `"depth"` is a wrong type, not a
/// message nested deeper than 64 levels; a real 100-deep one is; a string
/// that is not UTF-8 says so.
#[tokio::test]
async fn wrp_decode_errors_are_told_apart_by_kind_not_by_the_words_in_them() {
    let gw = Gateway::start().await;
    let post = |body: Vec<u8>| gw.post("/api/events", "application/msgpack", body);
    let detail =
        |r: &crate::support::util::Reply| r.body["detail"].as_str().unwrap_or_default().to_owned();
    let wrong_type = rmp_serde::to_vec_named(&serde_json::json!(
        {"msg_type": 4, "source": "dns:a", "dest": "event:x", "metadata": "depth"}
    ))
    .unwrap();
    let r = post(wrong_type).await;
    r.assert_problem(400);
    assert!(
        !detail(&r).contains("nested deeper") && detail(&r).contains("invalid type"),
        "a string \"depth\" where metadata is a map: {}",
        r.text
    );
    let mut deep = serde_json::json!(1);
    for _ in 0..100 {
        deep = serde_json::json!([deep]);
    }
    let nested =
        serde_json::json!({"msg_type": 4, "source": "dns:a", "dest": "event:x", "x": deep});
    let r = post(rmp_serde::to_vec_named(&nested).unwrap()).await;
    r.assert_problem(400);
    assert!(
        detail(&r).contains("deeper than 64"),
        "100 deep: {}",
        r.text
    );
    let r = post(vector("invalid-non-utf8-dest.msgpack")).await;
    r.assert_problem(400);
    assert!(detail(&r).contains("valid UTF-8"), "{}", r.text);
}
