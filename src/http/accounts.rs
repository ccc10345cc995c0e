//! `/api/accounts`: which devices each account owns (admins only). A
//! token's `accounts` claim grants subscription to them.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::body::ApiJson;
use super::App;
use crate::error::ApiError;
use crate::state::accounts::{Account, AccountError, DevicesRequest};

/// An account and its devices.
#[derive(Serialize, ToSchema)]
pub struct AccountView<'a> {
    account: &'a str,
    devices: &'a [String],
    created_at: &'a DateTime<Utc>,
    updated_at: &'a DateTime<Utc>,
    version: u64,
    disabled: Option<&'a str>,
}

impl<'a> From<&'a Account> for AccountView<'a> {
    fn from(a: &'a Account) -> Self {
        Self {
            account: &a.id,
            devices: &a.devices,
            created_at: &a.created_at,
            updated_at: &a.updated_at,
            version: a.version,
            disabled: a.disabled.as_deref(),
        }
    }
}

/// One account in the list.
#[derive(Serialize, ToSchema)]
pub struct AccountSummary {
    account: String,
    /// How many devices it has.
    devices: u64,
    disabled: Option<String>,
}

/// Every account.
#[derive(Serialize, ToSchema)]
pub struct AccountList {
    items: Vec<AccountSummary>,
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        let detail = e.to_string();
        match e {
            AccountError::Invalid(errors) => ApiError::invalid_fields(errors),
            AccountError::NotFound(_) => ApiError::not_found(detail),
            AccountError::Full(_) => ApiError::unavailable(detail),
            AccountError::Store(cause) => ApiError::store_unavailable("account", &cause),
        }
    }
}

/// The answer to a change: 201 when it created something (the account, or
/// the device in it), 200 otherwise, with the account.
fn changed(created: bool, account: &Account) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(AccountView::from(account))).into_response()
}

/// Every account and its device count.
#[utoipa::path(
    get,
    path = "/api/accounts",
    tag = "accounts",
    responses(
        (status = 200, description = "Every account", body = AccountList),
        crate::http::problems::Guarded
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn list(State(app): State<App>) -> Response {
    let items = app
        .accounts
        .list()
        .into_iter()
        .map(|(account, devices, disabled)| AccountSummary {
            account,
            devices: devices as u64,
            disabled,
        })
        .collect();
    Json(AccountList { items }).into_response()
}

/// An account's devices.
#[utoipa::path(
    get,
    path = "/api/accounts/{id}/devices",
    tag = "accounts",
    params(("id" = String, Path, description = "The account id")),
    responses(
        (status = 200, description = "The account", body = AccountView),
        (status = 404, description = "No such account", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::Guarded
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn devices(State(app): State<App>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let account = app
        .accounts
        .get(&id)
        .ok_or_else(|| AccountError::NotFound(format!("no account {id:?}")))?;
    Ok(Json(AccountView::from(&account)).into_response())
}

/// Replaces an account's devices (creates it).
#[utoipa::path(
    put,
    path = "/api/accounts/{id}/devices",
    tag = "accounts",
    params(("id" = String, Path, description = "The account id")),
    request_body(content = crate::state::accounts::DevicesRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced", body = AccountView),
        (status = 201, description = "Created", body = AccountView),
        crate::http::problems::JsonBody,
        crate::http::problems::Guarded,
        crate::http::problems::RateLimited,
        crate::http::problems::StoreUnavailable,
        crate::http::problems::InvalidFields
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn put_devices(
    State(app): State<App>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DevicesRequest>,
) -> Result<Response, ApiError> {
    let accounts = app.accounts.clone();
    let (account, created) = super::store_write(move || accounts.put(&id, &req.devices)).await?;
    Ok(changed(created, &account))
}

/// Adds one device to an account (creates it).
#[utoipa::path(
    put,
    path = "/api/accounts/{id}/devices/{device}",
    tag = "accounts",
    params(("id" = String, Path, description = "The account id"), ("device" = String, Path, description = "A device id (mac:, uuid:, serial:, dns:, event: or plain)")),
    responses(
        (status = 200, description = "It was there", body = AccountView),
        (status = 201, description = "Added", body = AccountView),
        (status = 422, description = "Bad account id or device", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::Guarded,
        crate::http::problems::RateLimited,
        crate::http::problems::StoreUnavailable
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn add_device(
    State(app): State<App>,
    Path((id, device)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let accounts = app.accounts.clone();
    let (account, added) = super::store_write(move || accounts.add(&id, &device)).await?;
    Ok(changed(added, &account))
}

/// Removes one device from an account.
#[utoipa::path(
    delete,
    path = "/api/accounts/{id}/devices/{device}",
    tag = "accounts",
    params(("id" = String, Path, description = "The account id"), ("device" = String, Path, description = "A device id (mac:, uuid:, serial:, dns:, event: or plain)")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such account or device in it", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::Guarded,
        crate::http::problems::RateLimited,
        crate::http::problems::StoreUnavailable
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn remove_device(
    State(app): State<App>,
    Path((id, device)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let accounts = app.accounts.clone();
    super::store_write(move || accounts.remove(&id, &device)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Deletes an account.
#[utoipa::path(
    delete,
    path = "/api/accounts/{id}",
    tag = "accounts",
    params(("id" = String, Path, description = "The account id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such account", content_type = "application/problem+json", body = crate::http::problems::Problem),
        crate::http::problems::Guarded,
        crate::http::problems::RateLimited,
        crate::http::problems::StoreUnavailable
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn delete(State(app): State<App>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let accounts = app.accounts.clone();
    super::store_write(move || accounts.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
