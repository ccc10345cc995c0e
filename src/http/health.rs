//! `/health` (alive) and `/ready` (should receive traffic), kept apart so an
//! orchestrator can tell a process that is draining from one that is dead.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::App;
use crate::error::ApiError;
use crate::shutdown::Phase;

/// `/health`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    status: &'static str,
    version: &'static str,
    uptime_seconds: u64,
    #[schema(value_type = String)]
    phase: Phase,
    subscribers: u64,
}

/// `/ready` when ready.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    status: &'static str,
    forward_router_panics: u64,
}

/// Whether the process serves requests at all.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "Alive", body = Health)
    )
)]
pub async fn health(State(app): State<App>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: app.started.elapsed().as_secs(),
        phase: app.readiness.phase(),
        subscribers: app.hub.subscriber_count() as u64,
    })
}

/// Whether it should receive traffic.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Starting, draining, or its store or Redis is unavailable", content_type = "application/problem+json", body = crate::http::problems::Problem)
    )
)]
pub async fn ready(State(app): State<App>) -> Response {
    match app.readiness.phase() {
        Phase::Ready if !app.bus.is_reachable() => ApiError::unavailable(
            "Redis is unreachable: this node accepts no events until it is back",
        )
        .with_retry_after(std::time::Duration::from_secs(1))
        .with_extra(json!({"phase": "ready", "redis": "unreachable"}))
        .into_response(),
        Phase::Ready => match app.store.check_writable() {
            Ok(()) => Json(Ready {
                status: "ready",
                forward_router_panics: app.delivery.metrics().router_panics(),
            })
            .into_response(),
            Err(e) => ApiError::unavailable(e.to_string())
                .with_retry_after(e.retry_after())
                .with_extra(json!({"phase": "ready", "store": "not writable"}))
                .into_response(),
        },
        phase => ApiError::unavailable(format!(
            "the gateway is {}",
            match phase {
                Phase::Starting => "starting",
                _ => "shutting down",
            }
        ))
        .with_extra(json!({"phase": phase}))
        .into_response(),
    }
}
