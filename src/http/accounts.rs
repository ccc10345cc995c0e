//! `/api/accounts`: which devices each account owns (admins only). A
//! token's `accounts` claim grants subscription to them.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderMap, StatusCode};
use serde_json::json;

use super::body::read_json;
use super::registrations::invalid;
use super::App;
use crate::accounts::{Account, AccountError, DevicesRequest};
use crate::error::ApiError;

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        let detail = e.to_string();
        match e {
            AccountError::Invalid(errors) => invalid(errors),
            AccountError::NotFound(_) => ApiError::not_found(detail),
            AccountError::Full(_) => ApiError::unavailable(detail),
            AccountError::Store(cause) => ApiError::store_unavailable("account", &cause),
        }
    }
}

fn shown(account: &Account) -> serde_json::Value {
    json!({
        "account": account.id,
        "devices": account.devices,
        "created_at": account.created_at,
        "updated_at": account.updated_at,
        "version": account.version,
        "disabled": account.disabled,
    })
}

/// `GET /api/accounts`: every account and its device count.
pub async fn list(State(app): State<App>) -> Response {
    let items: Vec<_> = app
        .accounts
        .list()
        .into_iter()
        .map(|(id, devices, disabled)| json!({"account": id, "devices": devices, "disabled": disabled}))
        .collect();
    Json(json!({ "items": items })).into_response()
}

/// `GET /api/accounts/{id}/devices`.
pub async fn devices(State(app): State<App>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let account = app
        .accounts
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no account {id:?}")))?;
    Ok(Json(shown(&account)).into_response())
}

/// `PUT /api/accounts/{id}/devices`: replaces the account's devices
/// (creates it: 201).
pub async fn put_devices(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: DevicesRequest = read_json(&app, &headers, body).await?;
    let accounts = app.accounts.clone();
    let (account, created) = super::store_write(move || accounts.put(&id, &req.devices)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(shown(&account))).into_response())
}

/// `PUT /api/accounts/{id}/devices/{device}`: adds one device (201 when
/// it is new in the account, 200 when it was there).
pub async fn add_device(
    State(app): State<App>,
    Path((id, device)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let accounts = app.accounts.clone();
    let (account, added) = super::store_write(move || accounts.add(&id, &device)).await?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(shown(&account))).into_response())
}

/// `DELETE /api/accounts/{id}/devices/{device}`: removes one device;
/// streams that see it through this account stop at once.
pub async fn remove_device(
    State(app): State<App>,
    Path((id, device)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let accounts = app.accounts.clone();
    super::store_write(move || accounts.remove(&id, &device)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/accounts/{id}`.
pub async fn delete(State(app): State<App>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let accounts = app.accounts.clone();
    super::store_write(move || accounts.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
