//! A body, in its format, onto an event: the payload, and the routing
//! (device, type, source) it names. Routing given outside the body (the
//! request's query or headers: [`Overrides`]) wins over the body's.

use bytes::Bytes;

use super::Format;
use crate::error::ApiError;
use crate::event::{json as json_event, wrp, DeviceId, EventDraft};

/// Longest event type, in bytes.
const MAX_TYPE_LEN: usize = 256;

/// Routing values given outside the body.
#[derive(Debug, Default)]
pub struct Overrides {
    /// The event's device.
    pub device: Option<DeviceId>,
    /// The event's type.
    pub event_type: Option<String>,
    /// The event's source.
    pub source: Option<String>,
}

/// Decodes one event body in `format` onto `draft`, no deeper than
/// `max_depth` levels of JSON or msgpack nesting.
pub fn decode(
    format: Format,
    mut draft: EventDraft,
    overrides: &Overrides,
    body: &Bytes,
    max_depth: usize,
) -> Result<EventDraft, ApiError> {
    match format {
        Format::Json | Format::Ndjson => {
            let parsed = json_event::parse_payload(body, max_depth)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let hints = parsed.hints;
            draft.device = hints
                .device
                .map(|d| {
                    DeviceId::parse(&d)
                        .map_err(|e| ApiError::unprocessable(format!("field \"device\": {e}")))
                })
                .transpose()?;
            draft.event_type = hints
                .event_type
                .map(|t| check_type(&t).map_err(ApiError::unprocessable))
                .transpose()?;
            if let Some(s) = hints.source {
                draft.source = s;
            }
            draft.data = parsed.data;
        }
        Format::WrpMsgpack | Format::WrpJson => {
            let message = if format == Format::WrpMsgpack {
                wrp::Message::from_msgpack_within(body, max_depth)
            } else {
                wrp::Message::from_json_within(body, max_depth)
            }
            .map_err(|e| match e {
                wrp::WrpError::Decode(d) => ApiError::bad_request(d),
                wrp::WrpError::Invalid(d) => {
                    ApiError::unprocessable(format!("invalid WRP message: {d}"))
                }
            })?;
            let routing = message.routing();
            draft.device = routing.device;
            draft.event_type = Some(routing.event_type);
            if !message.source.is_empty() {
                draft.source = message.source.clone();
            }
            draft.metadata = message.metadata.clone().unwrap_or_default();
            draft.data = Bytes::from(message.to_json());
            draft.wrp = Some(message);
        }
    }
    if let Some(d) = &overrides.device {
        draft.device = Some(d.clone());
    }
    if let Some(t) = &overrides.event_type {
        draft.event_type = Some(t.clone());
    }
    if let Some(s) = &overrides.source {
        draft.source = s.clone();
    }
    Ok(draft)
}

/// An event type: 1 to 256 bytes, without control characters.
pub fn check_type(t: &str) -> Result<String, String> {
    if t.is_empty() || t.len() > MAX_TYPE_LEN || t.chars().any(char::is_control) {
        return Err(format!(
            "event type must be 1 to {MAX_TYPE_LEN} characters without control characters"
        ));
    }
    Ok(t.to_owned())
}
