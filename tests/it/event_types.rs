//! Event type definitions: JSON Schema checked at ingest, strict mode.

use serde_json::json;

use crate::support::client::Api;
use crate::support::util::Gateway;

#[tokio::test]
async fn schemas_are_enforced_on_ingest() {
    let gw = Gateway::start().await;
    let def = json!({"name": "online", "description": "device came online",
        "schema": {"type": "object", "required": ["battery"],
                   "properties": {"battery": {"type": "integer", "minimum": 0, "maximum": 100}}}});
    let r = gw
        .post("/api/event-types", "application/json", def.to_string())
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.headers["location"], "/api/event-types/online");
    gw.post("/api/event-types", "application/json", def.to_string())
        .await
        .assert_problem(409);

    let ok = gw
        .post(
            "/api/events?type=online",
            "application/json",
            r#"{"battery":50}"#,
        )
        .await;
    assert_eq!(ok.status, 202, "{}", ok.text);
    let bad = gw
        .post(
            "/api/events?type=online",
            "application/json",
            r#"{"battery":"full","x":1}"#,
        )
        .await;
    bad.assert_problem(422);
    assert_eq!(bad.body["errors"][0]["path"], "/battery", "{}", bad.text);
    let missing = gw
        .post("/api/events?type=online", "application/json", "{}")
        .await;
    missing.assert_problem(422);
    assert!(missing.text.contains("battery"), "{}", missing.text);
    // Types without a definition stay accepted.
    let other = gw
        .post("/api/events?type=other", "application/json", "{}")
        .await;
    assert_eq!(other.status, 202);

    // GET, PUT (replace), DELETE.
    assert_eq!(gw.get("/api/event-types/online").await.body["version"], 1);
    let put = gw
        .http
        .put(gw.url("/api/event-types/online"))
        .header("content-type", "application/json")
        .body(json!({"schema": {"type": "object"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let now_ok = gw
        .post("/api/events?type=online", "application/json", "{}")
        .await;
    assert_eq!(now_ok.status, 202);
    assert_eq!(
        gw.get("/api/event-types").await.body["items"][0]["version"],
        2
    );
    let del = gw
        .http
        .delete(gw.url("/api/event-types/online"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    gw.get("/api/event-types/online").await.assert_problem(404);
}

#[tokio::test]
async fn invalid_definitions_are_refused() {
    let gw = Gateway::start().await;
    for body in [
        json!({"name": "t", "schema": {"type": 12}}),
        json!({"name": "bad name", "schema": {}}),
        json!({"name": "t", "colour": "red"}),
        json!({"schema": {}}),
    ] {
        gw.post("/api/event-types", "application/json", body.to_string())
            .await
            .assert_problem(422);
    }
}

#[tokio::test]
async fn strict_mode_refuses_undefined_types() {
    let gw = Gateway::start_with(|c| c.strict_event_types = true).await;
    let r = gw
        .post("/api/events?type=nope", "application/json", "{}")
        .await;
    r.assert_problem(422);
    assert!(r.text.contains("not defined"), "{}", r.text);
    let def = json!({"name": "yes"});
    assert_eq!(
        gw.post("/api/event-types", "application/json", def.to_string())
            .await
            .status,
        201
    );
    assert_eq!(
        gw.post("/api/events?type=yes", "application/json", "{}")
            .await
            .status,
        202
    );
}

#[tokio::test]
async fn schema_patterns_run_in_linear_time_and_backtracking_ones_are_refused() {
    let gw = Gateway::start().await;
    // Catastrophic for a backtracking engine on "aaaa…!"; linear here.
    let r = gw
        .post(
            "/api/event-types",
            "application/json",
            json!({"name": "redos", "schema": {"type": "object",
                "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}}})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let evil = format!("{}!", "a".repeat(50_000));
    let started = std::time::Instant::now();
    let r = gw
        .post(
            "/api/events?type=redos",
            "application/json",
            json!({ "s": evil }).to_string(),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // A lookahead needs backtracking: refused at definition.
    let r = gw
        .post(
            "/api/event-types",
            "application/json",
            json!({"name": "look", "schema": {"type": "string", "pattern": "^(?=a)a$"}})
                .to_string(),
        )
        .await;
    r.assert_problem(422);
}
