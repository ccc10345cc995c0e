//! The HTTP edge: one router, one module per resource, one error type.

pub mod accounts;
pub mod auth;
pub mod body;
pub mod dashboard;
pub mod deliveries;
pub mod event_types;
pub mod health;
pub mod hooks;
pub mod ingest;
pub mod metrics;
pub mod openapi;
pub mod problems;
pub mod query;
pub mod rate;
pub mod registrations;
pub mod sse;

use std::sync::Arc;
use std::time::Instant;

use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::Config;
use crate::error::ApiError;
use crate::forward::{DeliveryContext, Forwarding};
use crate::hub::Hub;
use crate::shutdown::Readiness;
use crate::state::catalog::Catalog;
use crate::state::registry::Registry;
use crate::telemetry::Metrics;

/// Everything a handler may need, shared by all requests.
#[derive(Debug)]
pub struct AppState {
    /// Validated configuration.
    pub config: Config,
    /// The fan-out hub.
    pub hub: Arc<Hub>,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// Forwarding registrations.
    pub registry: Arc<Registry>,
    /// Event type definitions.
    pub catalog: Arc<Catalog>,
    /// Accounts and their devices (a token's `accounts` claim).
    pub accounts: Arc<crate::state::accounts::Accounts>,
    /// Where registrations and event types are kept (for `/ready`).
    pub store: Arc<crate::state::store::Store>,
    /// Delivery settings and the address policy.
    pub delivery: Arc<DeliveryContext>,
    /// The forwarding tap and its live destinations (statistics).
    pub forwarding: Arc<Forwarding>,
    /// Where events go and are read back from (the deployment mode).
    pub bus: Arc<crate::bus::Bus>,
    /// Ingest's pipeline, into the bus.
    pub ingest: crate::ingest::Pipeline,
    /// Registrations with a replay running on this node.
    pub replays: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// The API token, JWT keys and API keys (reloaded on SIGHUP).
    pub credentials: Arc<crate::auth::credentials::Credentials>,
    /// Rate limits on ingest and changes.
    pub rate_limits: Arc<rate::RateLimits>,
    /// Open SSE streams per client address (`--max-streams-per-ip`).
    pub streams_per_ip: Arc<crate::server::per_ip::StreamsPerIp>,
    /// Lifecycle phase for `/ready`.
    pub readiness: Readiness,
    /// When the process started.
    pub started: Instant,
}

/// The shared state handle.
pub type App = Arc<AppState>;

/// Runs `write` (anything that writes the store: an fsync can block for as
/// long as the disk does) on a blocking thread, so that a stalled disk
/// never holds an async worker that ingest, fan-out or `/health` need.
pub async fn store_write<T, E>(
    write: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(write).await {
        Ok(result) => result.map_err(Into::into),
        Err(e) => {
            tracing::error!(error = %e, "a store write failed");
            Err(ApiError::internal("the write failed; try again"))
        }
    }
}

/// The whole HTTP API.
pub fn router(app: App) -> Router {
    // OPTIONS has a route of its own so that the CORS layer sees the
    // preflight (the router's 405 fallback is not layered).
    let events = Router::new()
        .route("/events", get(sse::subscribe).options(preflight))
        .layer(cors(&app.config));
    // Event types, accounts, hooks and the gateway-wide figures: admins
    // only.
    let admin = Router::new()
        .route("/api/stats", get(metrics::stats))
        .route("/hook", post(hooks::register))
        .route("/api/v2/hook", post(hooks::register_v2))
        .route("/hooks", get(hooks::list))
        .route("/api/v2/hooks", get(hooks::list_v2))
        .route(
            "/api/event-types",
            get(event_types::list).post(event_types::create),
        )
        .route(
            "/api/event-types/{name}",
            get(event_types::get_one)
                .put(event_types::put)
                .delete(event_types::delete),
        )
        .route("/api/accounts", get(accounts::list))
        .route(
            "/api/accounts/{id}",
            axum::routing::delete(accounts::delete),
        )
        .route(
            "/api/accounts/{id}/devices",
            get(accounts::devices).put(accounts::put_devices),
        )
        .route(
            "/api/accounts/{id}/devices/{device}",
            axum::routing::put(accounts::add_device).delete(accounts::remove_device),
        )
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            rate::limit_changes,
        ))
        .route_layer(middleware::from_fn(auth::require_admin));
    // Registrations: admins, and scoped tokens for their own.
    let owned = Router::new()
        .route(
            "/api/registrations",
            get(registrations::list).post(registrations::create),
        )
        .route(
            "/api/registrations/{id}",
            get(registrations::get_one)
                .put(registrations::replace)
                .delete(registrations::delete),
        )
        .route("/api/registrations/{id}/deliveries", get(deliveries::list))
        .route(
            "/api/registrations/{id}/replay",
            axum::routing::post(deliveries::replay),
        )
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            rate::limit_changes,
        ))
        .route_layer(middleware::from_fn(auth::require_owner));
    let ingest = Router::new()
        .route("/api/events", post(ingest::post_events))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            rate::limit_ingest,
        ));
    let protected = Router::new()
        .route("/api/whoami", get(auth::whoami))
        .merge(ingest)
        .merge(events)
        .merge(admin)
        .merge(owned)
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::authenticate,
        ));
    Router::new()
        .merge(protected)
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(metrics::prometheus))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/", get(dashboard::index))
        .route("/static/{*path}", get(dashboard::asset))
        .fallback(|| async { ApiError::not_found("no such resource") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(app)
}

/// The API as the server calls it: [`router`], except that `POST
/// /api/events`, the one route whose cost is per event, goes straight to
/// its handler ([`ingest::serve_direct`], with the same authentication and
/// rate limit as the router's layers). Through the router, each request
/// clones and boxes the layered services of its route (measured with
/// callgrind: about a fifth of an ingest request's instructions).
#[derive(Clone)]
pub struct Api {
    router: Router,
    app: App,
}

impl Api {
    /// The API over `app`.
    pub fn new(app: App) -> Self {
        Self {
            router: router(app.clone()),
            app,
        }
    }
}

impl crate::server::Service for Api {
    fn router(&self) -> &Router {
        &self.router
    }

    fn streams_per_ip(&self) -> &Arc<crate::server::per_ip::StreamsPerIp> {
        &self.app.streams_per_ip
    }

    fn call(
        self,
        mut request: http::Request<hyper::body::Incoming>,
        peer: crate::server::PeerAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = axum::response::Response> + Send>> {
        use tower::ServiceExt as _;
        if request.method() == Method::POST && request.uri().path() == "/api/events" {
            return Box::pin(ingest::serve_direct(self.app, request, peer));
        }
        request.extensions_mut().insert(peer);
        Box::pin(async move {
            let Ok(response) = self
                .router
                .oneshot(request.map(axum::body::Body::new))
                .await;
            response
        })
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

/// `OPTIONS /events` that is not a CORS preflight (the layer answers
/// those): say what the resource allows.
#[utoipa::path(options, path = "/events", tag = "events",
    responses(
        (status = 200, description = "A CORS preflight's answer (the CORS layer answers every OPTIONS)"),
        (status = 204, description = "What the stream allows (Allow)")))]
pub async fn preflight() -> impl axum::response::IntoResponse {
    (
        http::StatusCode::NO_CONTENT,
        [(header::ALLOW, "GET, HEAD, OPTIONS")],
    )
}

/// CORS for `GET /events`: browsers on other origins may subscribe.
fn cors(config: &Config) -> CorsLayer {
    let origins = if config.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET])
        .allow_headers([
            header::CACHE_CONTROL,
            header::AUTHORIZATION,
            HeaderName::from_static("last-event-id"),
        ])
}
