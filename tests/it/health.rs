//! /health, /ready, /metrics, /api/stats and the dashboard page.

use crate::support::client::Api;
use crate::support::util::Gateway;

#[tokio::test]
async fn health_and_ready() {
    let gw = Gateway::start().await;
    let h = gw.get("/health").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.body["status"], "ok");
    assert_eq!(h.body["phase"], "ready");
    let r = gw.get("/ready").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "ready");
}

#[tokio::test]
async fn metrics_count_ingest_deliveries_and_subscribers() {
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events").await;
    let _other = gw.subscribe("/events?device=elsewhere").await;
    gw.wait_subscribers(2).await;
    gw.publish_json(&serde_json::json!(1)).await;
    gw.post("/api/events", "text/plain", "x").await;
    sub.expect_event().await;
    let text = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "ratatoskr_events_ingested_total{format=\"json\",result=\"accepted\"} 1",
        "ratatoskr_events_ingested_total{format=\"unsupported\",result=\"rejected\"} 1",
        "ratatoskr_deliveries_total 1",
        "ratatoskr_subscribers 2",
        "ratatoskr_replay_events 1",
        "ratatoskr_ingest_duration_seconds_count 2",
        "ratatoskr_fanout_duration_seconds_count 1",
    ] {
        assert!(text.contains(series), "missing {series:?} in\n{text}");
    }
    let stats = gw.get("/api/stats").await;
    assert_eq!(stats.body["totals"]["events_ingested"], 1);
    assert_eq!(stats.body["totals"]["subscribers"], 2);
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary() {
    let gw = Gateway::start().await;
    let page = gw.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.content_type().starts_with("text/html"));
    assert!(page.text.contains("Ratatoskr"));
    gw.get("/static/nope.js").await.assert_problem(404);
}
