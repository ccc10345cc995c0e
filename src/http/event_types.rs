//! `/api/event-types`: event type definitions with optional JSON Schemas.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, HeaderValue, StatusCode};

use super::body::ApiJson;
use super::App;
use crate::error::ApiError;
use crate::state::catalog::{CatalogError, EventType, EventTypeRequest};

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let detail = e.to_string();
        match e {
            CatalogError::Invalid(errors) => ApiError::invalid_fields(errors),
            CatalogError::NotFound(_) => ApiError::not_found(detail),
            CatalogError::Exists(_) => ApiError::conflict(detail),
            CatalogError::Store(cause) => ApiError::store_unavailable("event type", &cause),
        }
    }
}

/// Every event type.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EventTypeList {
    items: Vec<EventType>,
}

/// Every event type.
#[utoipa::path(
    get,
    path = "/api/event-types",
    tag = "event-types",
    responses(
        (status = 200, description = "Every type", body = EventTypeList),
        crate::http::problems::Guarded
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn list(State(app): State<App>) -> Response {
    Json(EventTypeList {
        items: app.catalog.list(),
    })
    .into_response()
}

/// Defines a new event type (409 if it exists).
#[utoipa::path(
    post,
    path = "/api/event-types",
    tag = "event-types",
    request_body(content = crate::state::catalog::EventTypeRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Defined", body = crate::state::catalog::EventType),
        (status = 409, description = "It exists", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::JsonBody,
        crate::http::problems::Guarded,
        crate::http::problems::RateLimited,
        crate::http::problems::StoreUnavailable,
        crate::http::problems::InvalidFields
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn create(
    State(app): State<App>,
    ApiJson(req): ApiJson<EventTypeRequest>,
) -> Result<Response, ApiError> {
    let name = req.name.clone().unwrap_or_default();
    let catalog = app.catalog.clone();
    let (def, _) = super::store_write(move || catalog.put(&name, req, true)).await?;
    let mut response = (StatusCode::CREATED, Json(&def)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/event-types/{}", def.name)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// One event type.
#[utoipa::path(
    get,
    path = "/api/event-types/{name}",
    tag = "event-types",
    params(("name" = String, Path, description = "The event type name")),
    responses(
        (status = 200, description = "It", body = crate::state::catalog::EventType),
        (status = 404, description = "No such type", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::Guarded
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn get_one(State(app): State<App>, Path(name): Path<String>) -> Response {
    match app.catalog.get(&name) {
        Some(def) => Json(def).into_response(),
        None => ApiError::from(CatalogError::NotFound(name)).into_response(),
    }
}

/// Defines or replaces an event type.
#[utoipa::path(
    put,
    path = "/api/event-types/{name}",
    tag = "event-types",
    params(("name" = String, Path, description = "The event type name")),
    request_body(content = crate::state::catalog::EventTypeRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced", body = crate::state::catalog::EventType),
        (status = 201, description = "Defined", body = crate::state::catalog::EventType),
        crate::http::problems::JsonBody,
        crate::http::problems::Guarded,
        crate::http::problems::RateLimited,
        crate::http::problems::StoreUnavailable,
        crate::http::problems::InvalidFields
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn put(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<EventTypeRequest>,
) -> Result<Response, ApiError> {
    if req.name.as_deref().is_some_and(|n| n != name) {
        return Err(ApiError::unprocessable(
            "the body's name differs from the path's",
        ));
    }
    let catalog = app.catalog.clone();
    let (def, created) = super::store_write(move || catalog.put(&name, req, false)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(def)).into_response())
}

/// Removes an event type.
#[utoipa::path(
    delete,
    path = "/api/event-types/{name}",
    tag = "event-types",
    params(("name" = String, Path, description = "The event type name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such type", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::Guarded,
        crate::http::problems::RateLimited,
        crate::http::problems::StoreUnavailable
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn delete(State(app): State<App>, Path(name): Path<String>) -> Response {
    let catalog = app.catalog.clone();
    match super::store_write(move || catalog.delete(&name)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}
