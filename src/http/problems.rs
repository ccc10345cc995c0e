//! The problem responses the OpenAPI document names, as sets: the ones
//! many operations share (a token's 401 and 403, a JSON body's 400, 408,
//! 413 and 415, the store's 503) are said once here and named in each
//! operation's `responses(...)`; an operation's own problems (its 404, its
//! 409) stay beside it, where they are told apart.
//!
//! Every one is an RFC 9457 body, `application/problem+json`, of the
//! [`Problem`] schema, which is what [`crate::error::ApiError`]
//! answers.

use std::collections::BTreeMap;

use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::ToSchema;

// Schema only: `crate::error::ApiError` writes the body.
/// An RFC 9457 problem: every error the gateway answers.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Problem {
    /// `urn:ratatoskr:problem:<slug>`.
    #[schema(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// Field errors, on 422.
    errors: Option<Vec<FieldErrorDoc>>,
}

/// One field's error.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FieldErrorDoc {
    field: String,
    message: String,
}

/// One problem response, described.
fn problem(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
        .into()
}

/// Declares each set: a unit type whose [`utoipa::IntoResponses`] lists
/// its statuses.
macro_rules! problem_sets {
    ($($(#[$doc:meta])* $name:ident { $($status:literal: $description:literal),+ $(,)? })+) => {$(
        $(#[$doc])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                BTreeMap::from([$(($status.to_string(), problem($description))),+])
            }
        }
    )+};
}

problem_sets! {
    /// Every operation a token guards (auth on).
    Guarded {
        401: "No valid token (auth on)",
        403: "The token may not do this",
    }
    /// Every operation that reads a body: its bounds in time, size and type.
    BodyLimits {
        408: "Body not received in time",
        413: "Body too large",
        415: "Wrong content type",
    }
    /// Every operation that reads a JSON body.
    JsonBody {
        400: "Malformed JSON or request",
        408: "Body not received in time",
        413: "Body too large",
        415: "Wrong content type",
    }
    /// Every write under `--rate-limit`.
    RateLimited {
        429: "Rate limited; see Retry-After",
    }
    /// Every operation that writes the store (or, clustered, Redis).
    StoreUnavailable {
        503: "The store or Redis is unavailable; see Retry-After",
    }
    /// Every ingest in a cluster: Redis stopped answering after the write
    /// was sent.
    OutcomeUnknown {
        504: "Redis did not say in time whether it stored the event; retry with the same Idempotency-Key to learn it",
    }
    /// Every write of a registration, which is compiled first.
    RegistrationsBusy {
        503: "The store or Redis is unavailable, or too many registrations are compiling; see Retry-After",
    }
    /// Every operation on one registration.
    NoSuchRegistration {
        404: "No such registration",
    }
    /// Every write whose fields are checked.
    InvalidFields {
        422: "Invalid fields",
    }
}
