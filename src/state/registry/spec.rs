//! What a registration is: its request form and its stored form (the
//! form the API shows, without secrets, is `http::registrations`'s view).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::filter::FilterSpec;
use crate::forward::destination::Destination;

/// Where a registration came from, which decides a few xmidt behaviours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `POST /api/registrations`.
    #[default]
    Api,
    /// An xmidt/Caduceus webhook registration (`POST /hook`).
    XmidtHook,
}

/// A registration as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// Its id (random, or for xmidt hooks the sha256 of the URL).
    pub id: String,
    /// Canonical device ids it takes events for; empty only for xmidt hooks
    /// that match devices by pattern.
    pub devices: Vec<String>,
    /// xmidt `matcher.device_id` regexes (hooks only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_patterns: Vec<String>,
    /// Where events go.
    pub destination: Destination,
    /// Which events.
    pub filter: FilterSpec,
    /// The consumer's own labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The duration asked for, in seconds.
    pub duration_secs: u64,
    /// First created.
    pub created_at: DateTime<Utc>,
    /// Last replaced or renewed.
    pub updated_at: DateTime<Utc>,
    /// When it stops receiving.
    pub expires_at: DateTime<Utc>,
    /// Bumped on every change; the ETag.
    pub version: u64,
    /// Where it came from.
    #[serde(default)]
    pub origin: Origin,
    /// The scoped token that made it (`sub:<jwt sub>` or `key:<id>`), who
    /// alone may see and change it besides admins. `None`: an admin's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Why it was loaded disabled (it breaks a limit added since it was
    /// stored); it then receives nothing until replaced. Never stored.
    #[serde(skip)]
    pub disabled: Option<String>,
    /// Why its destination turned it off (it answered 410 Gone). Stored,
    /// so that it stays off across restarts until replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone: Option<String>,
}

impl Registration {
    /// The strong ETag for conditional requests.
    pub fn etag(&self) -> String {
        format!("\"{}-{}\"", &self.id[..self.id.len().min(12)], self.version)
    }
}

/// The body of `POST /api/registrations` and `PUT /api/registrations/{id}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrationRequest {
    /// One device id.
    #[serde(default)]
    pub device: Option<String>,
    /// Several device ids.
    #[serde(default)]
    pub devices: Vec<String>,
    /// xmidt-style device regexes (matched against the source, the event
    /// path and the device). On `PUT`, leaving it out keeps the current
    /// ones (as with secrets); `[]` clears them.
    #[serde(default)]
    pub device_patterns: Option<Vec<String>>,
    /// Where events go.
    pub destination: Destination,
    /// Seconds, or a duration such as `"30m"`.
    #[schema(value_type = serde_json::Value)]
    pub duration: serde_json::Value,
    /// Which events (all of the devices' events when absent).
    #[serde(default)]
    pub filter: FilterSpec,
    /// The consumer's own labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}
