//! The one error type of the HTTP edge, rendered as RFC 9457
//! `application/problem+json`. Client errors say exactly what was wrong;
//! server errors are logged with their cause and say little.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

/// An HTTP error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    detail: String,
    extra: Option<serde_json::Value>,
    retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extra: Option<&'a serde_json::Value>,
}

impl ApiError {
    fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            slug,
            detail: detail.into(),
            extra: None,
            retry_after: None,
        }
    }

    /// 400: malformed request or body.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    /// 401: a token is required and was missing or wrong.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 403: authenticated, but not allowed this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404: no such resource.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    /// 405: the path exists, the method does not.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "this method is not allowed on this path",
        )
    }

    /// 408: the client was too slow sending its body.
    pub fn request_timeout(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request-timeout", detail)
    }

    /// 409: a request with the same idempotency key is still being handled.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    /// 412: `If-Match` named a version that is no longer current.
    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            detail,
        )
    }

    /// 413: body over the limit.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 413: an NDJSON batch with more lines than allowed.
    pub fn too_many_lines(lines: usize, limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the batch has {lines} events; at most {limit} are allowed in one request (--max-batch)"),
        )
        .with_extra(serde_json::json!({ "max_lines": limit }))
    }

    /// 415: a content type this endpoint does not read.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            detail,
        )
    }

    /// 422: well-formed, but breaks a rule.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", detail)
    }

    /// 422 listing every field error, in `errors` (each with its field).
    pub fn invalid_fields(errors: Vec<crate::validation::FieldError>) -> Self {
        Self::unprocessable(crate::validation::describe(&errors))
            .with_extra(serde_json::json!({ "errors": errors }))
    }

    /// 429: a limit on this client was reached; it may try again later.
    pub fn too_many_requests(detail: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "too-many-requests", detail)
            .with_retry_after(retry_after)
    }

    /// 500: a bug or a broken dependency; the detail stays vague.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    /// 503: temporarily unable (shutting down, at capacity).
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    /// 504: Redis stopped answering after the write was sent, and did not
    /// say in time whether it stored it. Retried with the same
    /// `Idempotency-Key`, the request learns which.
    pub fn outcome_unknown(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "outcome-unknown", detail)
            .with_retry_after(std::time::Duration::from_secs(1))
    }

    /// 503 for a store that cannot write now: logged with its cause, and
    /// answered with `Retry-After` (when the store tries again).
    pub fn store_unavailable(what: &str, cause: &crate::state::store::StoreError) -> Self {
        tracing::error!(error = %cause, "{what} store failed");
        let detail = match cause {
            crate::state::store::StoreError::Gone(_)
            | crate::state::store::StoreError::Unwritable { .. } => {
                format!("the {what} store cannot write now: {cause}")
            }
            _ => format!("the {what} store is unavailable; try again"),
        };
        Self::unavailable(detail).with_retry_after(cause.retry_after())
    }

    /// Sets `Retry-After`, in whole seconds (at least 1).
    pub fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after.as_secs().max(1));
        self
    }

    /// Adds members to the problem object (e.g. per-line batch results).
    pub fn with_extra(mut self, extra: serde_json::Value) -> Self {
        self.extra = Some(extra);
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: format!("urn:ratatoskr:problem:{}", self.slug),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            extra: self.extra.as_ref(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
