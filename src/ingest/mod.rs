//! The source: decoded events, checked against their token's scope and
//! their type's definition, handed to the [`Bus`].
//!
//! The HTTP handler (`http::ingest`) reads the request: its format, the
//! routing given outside the body, the `Idempotency-Key`, the body. This
//! room does the rest and knows nothing of HTTP but the error it answers.

pub mod batch;
pub mod decode;
pub mod format;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

pub use self::decode::Overrides;
pub use self::format::Format;
use crate::auth::Principal;
use crate::bus::{Bus, Idempotent, Outcome};
use crate::error::ApiError;
use crate::event::EventDraft;
use crate::state::catalog::{Catalog, Rejection};
use crate::state::idempotency::Fingerprint;

/// The bounds a body is decoded and a batch published under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest JSON or msgpack nesting (`--max-json-depth`).
    pub max_json_depth: usize,
    /// Most lines in a batch (`--max-batch`).
    pub max_batch: usize,
    /// A batch pauses while a reader's queue holds this many events (half
    /// of `--subscriber-buffer`).
    pub pacing_depth: usize,
}

/// Ingest's pipeline, built once.
#[derive(Debug)]
pub struct Pipeline {
    bus: Arc<Bus>,
    catalog: Arc<Catalog>,
    limits: Limits,
}

impl Pipeline {
    /// A pipeline into `bus`, checking events against `catalog`.
    pub fn new(bus: Arc<Bus>, catalog: Arc<Catalog>, limits: Limits) -> Self {
        Self {
            bus,
            catalog,
            limits,
        }
    }

    /// Decodes one event body in `format` onto `base`.
    pub fn decode(
        &self,
        format: Format,
        base: EventDraft,
        overrides: &Overrides,
        body: &Bytes,
    ) -> Result<EventDraft, ApiError> {
        decode::decode(format, base, overrides, body, self.limits.max_json_depth)
    }

    /// Publishes `draft` for `who` unless its key was seen: refused at
    /// once (a plain function, so that the request's future holds the
    /// draft once, in the bus's publish), or the publish to await.
    pub fn publish<'a>(
        &'a self,
        who: &Principal,
        draft: EventDraft,
        key: Option<&'a Idempotent>,
    ) -> Result<impl std::future::Future<Output = Result<Outcome, ApiError>> + 'a, ApiError> {
        self.check(who, &draft)?;
        Ok(self.bus.publish(draft, key))
    }

    /// What `who` may not publish (403), or what its type's definition
    /// refuses (422).
    fn check(&self, who: &Principal, draft: &EventDraft) -> Result<(), ApiError> {
        may_publish(who, draft)?;
        self.conform(draft)
    }

    /// Checks the event against its type's definition (schema, strict mode).
    fn conform(&self, draft: &EventDraft) -> Result<(), ApiError> {
        self.catalog.check(draft).map_err(|rejection| {
            let detail = rejection.to_string();
            match rejection {
                Rejection::Undefined(_) | Rejection::TooCostly(_) | Rejection::Disabled(..) => {
                    ApiError::unprocessable(detail)
                }
                Rejection::Schema(_, violations) => {
                    ApiError::unprocessable(detail).with_extra(json!({ "errors": violations }))
                }
            }
        })
    }
}

/// What shapes the event a request makes: its content type, the routing
/// given outside the body, and the body (or batch line). Computed only
/// for a request with an `Idempotency-Key`.
pub fn fingerprint(content_type: &str, overrides: &Overrides, body: &[u8]) -> Fingerprint {
    Fingerprint::of(&[
        Some(content_type.as_bytes()),
        overrides.device.as_ref().map(|d| d.as_str().as_bytes()),
        overrides.event_type.as_deref().map(str::as_bytes),
        overrides.source.as_deref().map(str::as_bytes),
        Some(body),
    ])
}

/// A scoped token publishes only for its devices and types (403).
fn may_publish(who: &Principal, draft: &EventDraft) -> Result<(), ApiError> {
    let Some(scope) = who.scope() else {
        return Ok(());
    };
    if let Some(named) = draft.wrp.as_ref().and_then(|m| {
        m.named_devices()
            .into_iter()
            .find(|d| !scope.publish.allows(d))
    }) {
        return Err(ApiError::forbidden(format!(
            "this token may not publish for device {:?}, which the WRP message names in its source, dest or event path",
            named.as_str()
        )));
    }
    if scope.may_publish(draft.device.as_ref(), draft.event_type.as_deref()) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "this token may not publish events of type {:?} for device {:?}",
        draft.event_type.as_deref().unwrap_or(""),
        draft.device.as_ref().map_or("", |d| d.as_str())
    )))
}
