//! What a registration is: its request form, its stored form, and the
//! redacted form the API returns (its destination's secrets shown only as
//! flags).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
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

    /// The response form, with no secrets.
    pub fn view(&self, now: DateTime<Utc>) -> serde_json::Value {
        let ts = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        serde_json::json!({
            "id": self.id,
            "devices": self.devices,
            "device_patterns": self.device_patterns,
            "destination": self.destination.redacted(now),
            "filter": self.filter,
            "metadata": self.metadata,
            "duration": self.duration_secs,
            "created_at": ts(&self.created_at),
            "updated_at": ts(&self.updated_at),
            "expires_at": ts(&self.expires_at),
            "expires_in": (self.expires_at - now).num_seconds().max(0),
            "origin": self.origin,
            "owner": self.owner,
            "etag": self.etag(),
            "status": if self.disabled.is_some() || self.gone.is_some() { "disabled" } else { "active" },
            "disabled_reason": self.disabled.as_ref().or(self.gone.as_ref()),
        })
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
