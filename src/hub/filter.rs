//! Subscriber filters: which events a subscriber wants.
//!
//! Devices are OR-ed and matched exactly on canonical ids (the hub indexes
//! subscribers by device, so a device-filtered subscriber costs nothing for
//! other devices' events). Type patterns are globs (`device-*`), OR-ed.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::event::{DeviceId, Event};

/// Most device ids one subscriber may name.
pub const MAX_DEVICES: usize = 1_000;
/// Most type patterns one subscriber may name.
pub const MAX_TYPE_PATTERNS: usize = 32;

/// What a subscriber wants to receive.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    devices: Vec<DeviceId>,
    types: Option<GlobSet>,
    type_patterns: Vec<String>,
}

/// Why a filter was refused.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A device value that is not a device id.
    #[error("device {value:?}: {source}")]
    Device {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        source: crate::event::device::DeviceIdError,
    },
    /// A type pattern that is not a glob.
    #[error("type pattern {value:?}: {reason}")]
    Type {
        /// The pattern as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Too many values.
    #[error("at most {max} {what} values are allowed")]
    TooMany {
        /// Which parameter.
        what: &'static str,
        /// The limit.
        max: usize,
    },
}

impl EventFilter {
    /// Builds a filter from raw device ids and type globs (both may be empty: any).
    pub fn new<D, T>(devices: D, types: T) -> Result<Self, FilterError>
    where
        D: IntoIterator,
        D::Item: AsRef<str>,
        T: IntoIterator,
        T::Item: AsRef<str>,
    {
        let mut ids = Vec::new();
        for raw in devices {
            let raw = raw.as_ref();
            let id = DeviceId::parse(raw).map_err(|source| FilterError::Device {
                value: raw.to_owned(),
                source,
            })?;
            if !ids.contains(&id) {
                ids.push(id);
            }
            if ids.len() > MAX_DEVICES {
                return Err(FilterError::TooMany {
                    what: "device",
                    max: MAX_DEVICES,
                });
            }
        }
        let patterns: Vec<String> = types.into_iter().map(|t| t.as_ref().to_owned()).collect();
        if patterns.len() > MAX_TYPE_PATTERNS {
            return Err(FilterError::TooMany {
                what: "type",
                max: MAX_TYPE_PATTERNS,
            });
        }
        let types = if patterns.is_empty() {
            None
        } else {
            let mut set = GlobSetBuilder::new();
            for p in &patterns {
                if p.is_empty() || p.len() > 256 {
                    return Err(FilterError::Type {
                        value: p.clone(),
                        reason: "must be 1 to 256 characters".into(),
                    });
                }
                let glob = Glob::new(p).map_err(|e| FilterError::Type {
                    value: p.clone(),
                    reason: e.kind().to_string(),
                })?;
                set.add(glob);
            }
            Some(set.build().map_err(|e| FilterError::Type {
                value: patterns.join(","),
                reason: e.to_string(),
            })?)
        };
        Ok(Self {
            devices: ids,
            types,
            type_patterns: patterns,
        })
    }

    /// The devices this filter is limited to (empty: any device).
    pub fn devices(&self) -> &[DeviceId] {
        &self.devices
    }

    /// The type globs as given.
    pub fn type_patterns(&self) -> &[String] {
        &self.type_patterns
    }

    /// Whether the event's type passes (the device part is done by the hub's index).
    pub fn matches_type(&self, event: &Event) -> bool {
        match (&self.types, &event.draft.event_type) {
            (None, _) => true,
            (Some(set), Some(t)) => set.is_match(t),
            (Some(_), None) => false,
        }
    }

    /// Whether the event passes the whole filter.
    pub fn matches(&self, event: &Event) -> bool {
        let device_ok = self.devices.is_empty()
            || event
                .draft
                .device
                .as_ref()
                .is_some_and(|d| self.devices.contains(d));
        device_ok && self.matches_type(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_event;

    fn ev(device: Option<&str>, ty: Option<&str>) -> Event {
        test_event(1, device, ty)
    }

    #[test]
    fn empty_filter_matches_everything() {
        let f = EventFilter::new(Vec::<String>::new(), Vec::<String>::new()).unwrap();
        assert!(f.matches(&ev(None, None)));
        assert!(f.matches(&ev(Some("a"), Some("b"))));
    }

    #[test]
    fn devices_are_ored_and_canonical() {
        let f = EventFilter::new(["MAC:11:22:33:44:55:66", "b"], Vec::<String>::new()).unwrap();
        assert!(f.matches(&ev(Some("mac:112233445566"), None)));
        assert!(f.matches(&ev(Some("b"), None)));
        assert!(!f.matches(&ev(Some("c"), None)));
        assert!(!f.matches(&ev(None, None)));
    }

    #[test]
    fn type_globs() {
        let f = EventFilter::new(Vec::<String>::new(), ["device-*", "online"]).unwrap();
        assert!(f.matches(&ev(None, Some("device-status"))));
        assert!(f.matches(&ev(None, Some("online"))));
        assert!(!f.matches(&ev(None, Some("offline"))));
        assert!(!f.matches(&ev(None, None)));
        assert!(EventFilter::new(Vec::<String>::new(), ["a[b"]).is_err());
        assert!(EventFilter::new(["mac:12"], Vec::<String>::new()).is_err());
    }
}
