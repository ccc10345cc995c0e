//! Request bodies: read within the size limit and the body timeout, and
//! (for the management API) parsed as JSON with errors a client can act on.

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use std::future::Future as _;
use std::task::Poll;

use super::App;
use crate::error::ApiError;

/// Reads the body within the size limit and the body timeout. Any body
/// type: the router's [`Body`], or hyper's own on the direct ingest path
/// (not boxed into a `Body` there).
pub async fn read_body<B>(app: &App, headers: &HeaderMap, body: B) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    let limit = app.config.max_body;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut collect = std::pin::pin!(Limited::new(body, limit).collect());
    // A small body has usually arrived with its head: taken at once, it
    // needs no timer. Only a body still on its way arms the timeout (the
    // poll below has registered this task's waker).
    let now = std::future::poll_fn(|cx| Poll::Ready(collect.as_mut().poll(cx))).await;
    let collected = match now {
        Poll::Ready(c) => c,
        Poll::Pending => tokio::time::timeout(app.config.body_timeout, collect)
            .await
            .map_err(|_| ApiError::request_timeout("the request body was not received in time"))?,
    };
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::payload_too_large(limit))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

/// Reads a JSON body into `T`: 415 unless the content type is JSON, 400
/// for bytes that are not JSON, 422 for JSON of the wrong shape (unknown
/// field, missing field, wrong type), each naming the place.
pub async fn read_json<T: DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" && !essence.ends_with("+json") {
        return Err(ApiError::unsupported_media_type(format!(
            "Content-Type {ct:?} is not supported here; send application/json"
        )));
    }
    let bytes = read_body(app, headers, body).await?;
    parse_json(&bytes)
}

/// A handler's JSON body, read as [`read_json`] reads it (the extractor a
/// handler takes last; `Result<ApiJson<T>, ApiError>` to answer its own
/// error instead).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> axum::extract::FromRequest<App> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, app: &App) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        read_json(app, &parts.headers, body).await.map(Self)
    }
}

/// Parses JSON with the same 400/422 split as [`read_json`].
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let at = format!("line {} column {}", e.line(), e.column());
        match e.classify() {
            Category::Data => ApiError::unprocessable(format!("{e}"))
                .with_extra(serde_json::json!({ "errors": [{ "field": "", "message": e.to_string(), "at": at }] })),
            _ => ApiError::bad_request(format!("the body is not valid JSON: {e}")),
        }
    })
}
