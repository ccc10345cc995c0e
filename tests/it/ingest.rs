//! POST /api/events: formats, routing precedence, idempotency, batches, errors.

use std::time::Duration;

use serde_json::json;

use crate::support::client::Api;
use crate::support::util::Gateway;

#[tokio::test]
async fn pillarbox_json_post_just_works_and_reaches_a_subscriber() {
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events").await;
    let r = gw
        .post("/api/events", "application/json", r#"{"msg":"data"}"#)
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.body["id"].as_str().unwrap();
    assert_eq!(id.len(), 16);
    let ev = sub.expect_event().await;
    assert_eq!(ev.data, r#"{"msg":"data"}"#);
    assert_eq!(ev.id.as_deref(), Some(id));
    assert_eq!(
        ev.event, None,
        "default frames have no event: field so onmessage fires"
    );
}

#[tokio::test]
async fn any_json_value_is_an_event_and_ids_increase() {
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events").await;
    let mut last = String::new();
    for body in [
        "42",
        "\"text\"",
        "[1,2,3]",
        "null",
        "{\n  \"pretty\": true\n}",
    ] {
        let r = gw.post("/api/events", "application/json", body).await;
        assert_eq!(r.status, 202, "{body}: {}", r.text);
        let id = r.body["id"].as_str().unwrap().to_owned();
        assert!(id > last, "ids sort in order: {id} after {last}");
        last = id;
        // Kept as posted, less insignificant whitespace.
        let minified: String = body.split_whitespace().collect();
        assert_eq!(sub.expect_event().await.data, minified);
    }
}

#[tokio::test]
async fn routing_precedence_is_query_then_header_then_body() {
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events?format=envelope").await;
    let body = json!({"device": "body-dev", "type": "body-type", "source": "body-src"}).to_string();

    gw.post_with(
        "/api/events?device=query-dev",
        "application/json",
        body.clone(),
        &[
            ("x-device-id", "header-dev"),
            ("x-event-type", "header-type"),
        ],
    )
    .await;
    let env = sub.expect_event().await.json();
    assert_eq!(env["device"], "query-dev");
    assert_eq!(env["type"], "header-type");
    assert_eq!(env["source"], "body-src");

    gw.post("/api/events", "application/json", body.clone())
        .await;
    let env = sub.expect_event().await.json();
    assert_eq!(
        (env["device"].as_str(), env["type"].as_str()),
        (Some("body-dev"), Some("body-type"))
    );
    assert_eq!(
        env["payload"],
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    );
    assert_eq!(env["content_type"], "application/json");
    assert!(env["received_at"].as_str().unwrap().ends_with('Z'));

    gw.post("/api/events", "application/json", "[1]").await;
    let env = sub.expect_event().await.json();
    assert_eq!(env["device"], serde_json::Value::Null);
    assert_eq!(
        env["source"], "http:127.0.0.1",
        "the peer address is the default source"
    );
}

#[tokio::test]
async fn device_ids_are_canonicalised_at_ingest() {
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events?device=mac:112233445566").await;
    gw.post(
        "/api/events?device=MAC:11-22-33-44-55-66",
        "application/json",
        "1",
    )
    .await;
    assert_eq!(sub.expect_event().await.data, "1");
    gw.post(
        "/api/events",
        "application/json",
        r#"{"device":"mac:11:22:33:44:55:66"}"#,
    )
    .await;
    assert_eq!(
        sub.expect_event().await.data,
        r#"{"device":"mac:11:22:33:44:55:66"}"#
    );
}

#[tokio::test]
async fn bad_input_gets_problem_json_with_the_right_status() {
    let gw = Gateway::start().await;
    let cases: &[(&str, &str, &[u8], u16)] = &[
        ("/api/events", "application/json", b"{\"a\":", 400),
        ("/api/events", "application/json", b"", 400),
        ("/api/events", "application/json", b"\"\xff\xfe\"", 400),
        ("/api/events", "application/json", b"{} trailing", 400),
        ("/api/events", "text/plain", b"hello", 415),
        (
            "/api/events",
            "application/x-www-form-urlencoded",
            b"a=b",
            415,
        ),
        (
            "/api/events",
            "application/json",
            br#"{"device":"mac:123"}"#,
            422,
        ),
        ("/api/events", "application/json", br#"{"type":""}"#, 422),
        ("/api/events?device=mac:zz", "application/json", b"1", 400),
        ("/api/events?devise=a", "application/json", b"1", 400),
        (
            "/api/events?device=a&device=b",
            "application/json",
            b"1",
            400,
        ),
        ("/api/events", "application/msgpack", b"", 400),
        ("/api/events", "application/msgpack", b"\xc1", 400),
        (
            "/api/events",
            "application/wrp+json",
            b"{\"msg_type\":4",
            400,
        ),
        (
            "/api/events",
            "application/wrp+json",
            br#"{"msg_type":4,"source":"mac:112233445566","dest":"event:x","payload":"***"}"#,
            400,
        ),
    ];
    for (path, ct, body, status) in cases {
        let r = gw.post(path, ct, body.to_vec()).await;
        r.assert_problem(*status);
    }
    // Nothing bad was published, and the gateway still works.
    let mut sub = gw.subscribe("/events").await;
    gw.publish_json(&json!({"still": "alive"})).await;
    assert_eq!(sub.expect_event().await.json()["still"], "alive");
    sub.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn missing_content_type_is_415() {
    let gw = Gateway::start().await;
    let resp = gw
        .http
        .post(gw.url("/api/events"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn idempotency_key_returns_the_first_id_and_does_not_broadcast_again() {
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events").await;
    let first = gw
        .post_with(
            "/api/events",
            "application/json",
            "1",
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(first.status, 202);
    let again = gw
        .post_with(
            "/api/events",
            "application/json",
            "1",
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = gw
        .post_with(
            "/api/events",
            "application/json",
            "3",
            &[("idempotency-key", "k-2")],
        )
        .await;
    assert_ne!(other.body["id"], first.body["id"]);
    assert_eq!(sub.expect_event().await.data, "1");
    assert_eq!(sub.expect_event().await.data, "3");
    sub.expect_silence(Duration::from_millis(200)).await;
    gw.post_with(
        "/api/events",
        "application/json",
        "1",
        &[("idempotency-key", "")],
    )
    .await
    .assert_problem(400);
}

/// Issue 24, item 1: a key comes back only with the body (and routing)
/// it was first used with; anything else is 422, as Stripe and Svix do,
/// never the first event's id for a different event.
#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_or_routing_is_422() {
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events").await;
    let post = |path: &'static str, ct: &'static str, body: &'static str, key: &'static str| {
        let gw = &gw;
        async move {
            gw.post_with(path, ct, body, &[("idempotency-key", key)])
                .await
        }
    };
    let first = post("/api/events", "application/json", "{\"n\":1}", "k").await;
    assert_eq!(first.status, 202, "{}", first.text);
    post("/api/events", "application/json", "{\"n\":2}", "k")
        .await
        .assert_problem(422);
    post(
        "/api/events?type=other",
        "application/json",
        "{\"n\":1}",
        "k",
    )
    .await
    .assert_problem(422);
    let again = post("/api/events", "application/json", "{\"n\":1}", "k").await;
    assert_eq!(again.status, 202);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["id"], first.body["id"]);
    // A batch: each line keeps its own fingerprint.
    let batch = post(
        "/api/events",
        "application/x-ndjson",
        "{\"n\":10}\n{\"n\":11}\n",
        "b",
    )
    .await;
    assert_eq!(batch.body["accepted"], 2, "{}", batch.text);
    let retried = post(
        "/api/events",
        "application/x-ndjson",
        "{\"n\":10}\n{\"n\":12}\n",
        "b",
    )
    .await;
    assert_eq!(retried.status, 202, "{}", retried.text);
    let results = &retried.body["results"];
    assert_eq!(
        results[0]["id"], batch.body["results"][0]["id"],
        "{}",
        retried.text
    );
    assert_eq!(
        results[1]["status"], 422,
        "line 2 changed: {}",
        retried.text
    );
    for n in [1, 10, 11] {
        assert_eq!(sub.expect_event().await.data, format!("{{\"n\":{n}}}"));
    }
    sub.expect_silence(Duration::from_millis(200)).await;
    // The OpenAPI document says what the code answers: a replay is 202.
    let doc = gw.get("/openapi.json").await.body;
    let responses = &doc["paths"]["/api/events"]["post"]["responses"];
    assert!(
        responses["200"].is_null(),
        "a replay is documented as 200: {responses}"
    );
    assert!(
        responses["202"]["headers"]["Idempotent-Replayed"].is_object(),
        "{responses}"
    );
    assert!(responses["422"].is_object(), "{responses}");
}

#[tokio::test]
async fn idempotency_window_expires() {
    let gw = Gateway::start_with(|c| c.idempotency_window = Duration::from_millis(300)).await;
    let a = gw
        .post_with(
            "/api/events",
            "application/json",
            "1",
            &[("idempotency-key", "k")],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = gw
        .post_with(
            "/api/events",
            "application/json",
            "1",
            &[("idempotency-key", "k")],
        )
        .await;
    assert_ne!(a.body["id"], b.body["id"]);
}

#[tokio::test]
async fn ndjson_batch_has_a_result_per_line() {
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events").await;
    let batch = "{\"n\":1}\n\nnot json\r\n{\"n\":3,\"device\":\"mac:1\"}\n{\"n\":4}\n";
    let r = gw.post("/api/events", "application/x-ndjson", batch).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["accepted"], 2);
    assert_eq!(r.body["rejected"], 2);
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["line"], 1);
    assert!(results[0]["id"].is_string());
    assert_eq!(
        (results[1]["line"].as_u64(), results[1]["status"].as_u64()),
        (Some(3), Some(400))
    );
    assert_eq!(
        (results[2]["line"].as_u64(), results[2]["status"].as_u64()),
        (Some(4), Some(422))
    );
    assert_eq!(results[3]["line"], 5);
    assert_eq!(sub.expect_event().await.data, "{\"n\":1}");
    assert_eq!(sub.expect_event().await.data, "{\"n\":4}");

    let none = gw
        .post("/api/events", "application/x-ndjson", "x\ny\n")
        .await;
    none.assert_problem(400);
    assert_eq!(none.body["rejected"], 2);
    gw.post("/api/events", "application/x-ndjson", "\n\n")
        .await
        .assert_problem(400);
}
