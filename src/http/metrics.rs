//! `GET /metrics` (Prometheus/OpenMetrics text) and `GET /api/stats` (the
//! headline figures as JSON, for the dashboard, which turns the counters
//! into rates itself).

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use http::header;

use super::App;

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String)
    )
)]
pub async fn prometheus(State(app): State<App>) -> impl IntoResponse {
    app.hub.refresh_gauges();
    app.forwarding.destinations().refresh_gauges();
    let body = app.metrics.encode();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// Gateway-wide figures, as the dashboard shows them.
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "operations",
    responses(
        (status = 200, description = "Figures", body = serde_json::Value),
        crate::http::problems::Guarded
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn stats(State(app): State<App>) -> impl IntoResponse {
    let mut totals = serde_json::to_value(app.metrics.snapshot()).unwrap_or_default();
    totals["subscribers"] = app.hub.subscriber_count().into();
    let (deliveries, dropped) = app.hub.metrics().delivery_totals();
    totals["deliveries"] = deliveries.into();
    totals["deliveries_dropped"] = dropped.into();
    Json(serde_json::json!({
        "cluster": app.bus.cluster_status().await,
        "totals": totals,
        "replay_events": app.hub.replay_len(),
        "uptime_seconds": app.started.elapsed().as_secs(),
        "phase": app.readiness.phase(),
        "registrations": app.registry.len(),
        "forwarding": app.forwarding.destinations().totals(),
    }))
}
