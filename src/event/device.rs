//! Device ids and WRP locators.
//!
//! Ingest and subscriber filters must agree on one spelling of a device, or a
//! subscriber for `mac:11:22:33:44:55:66` would never see events from
//! `MAC:112233445566`. Known xmidt schemes are canonicalised the way wrp-go
//! does it; any other text is a free-form id kept verbatim (Pillarbox users
//! name devices as they like).

use std::fmt;

/// Longest device id accepted, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 256;

/// The xmidt locator schemes (wrp-go v5).
const SCHEMES: [&str; 6] = ["mac", "uuid", "dns", "serial", "self", "event"];

/// A canonical device id, e.g. `mac:112233445566` or a free-form `sensor-42`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

/// Why a device id or locator was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceIdError {
    /// Nothing but white space.
    #[error("a device id must not be empty")]
    Empty,
    /// Over [`MAX_DEVICE_ID_LEN`].
    #[error("a device id is at most {MAX_DEVICE_ID_LEN} bytes")]
    TooLong,
    /// White space or control characters inside.
    #[error("a device id must not contain white space or control characters")]
    BadCharacter,
    /// `mac:` with something other than 12 hex digits.
    #[error("a mac: device id needs 12 hexadecimal digits (separators - : . , allowed)")]
    BadMac,
    /// A locator whose scheme is not one of mac, uuid, dns, serial, self, event.
    #[error("locator {0:?} has no known scheme (mac, uuid, dns, serial, self, event)")]
    UnknownScheme(String),
    /// A locator without the `scheme:` part.
    #[error("locator {0:?} is not of the form scheme:authority")]
    NotALocator(String),
}

impl DeviceId {
    /// Canonicalises a device id given by a client (query, header, body field).
    pub fn parse(raw: &str) -> Result<Self, DeviceIdError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        if s.len() > MAX_DEVICE_ID_LEN {
            return Err(DeviceIdError::TooLong);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(DeviceIdError::BadCharacter);
        }
        if let Some((scheme, rest)) = s.split_once(':') {
            let scheme = scheme.to_ascii_lowercase();
            if SCHEMES.contains(&scheme.as_str()) {
                // A locator may carry a service after the authority: drop it.
                let authority = rest.split('/').next().unwrap_or_default();
                return canonical(&scheme, authority);
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn canonical(scheme: &str, authority: &str) -> Result<DeviceId, DeviceIdError> {
    match scheme {
        "mac" => {
            let hex: String = authority
                .chars()
                .filter(|c| !matches!(c, '-' | ':' | '.' | ','))
                .collect();
            if hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(DeviceIdError::BadMac);
            }
            Ok(DeviceId(format!("mac:{}", hex.to_ascii_lowercase())))
        }
        "uuid" => Ok(DeviceId(format!("uuid:{}", authority.to_ascii_lowercase()))),
        _ => Ok(DeviceId(format!("{scheme}:{authority}"))),
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed WRP locator `scheme:authority[/service[/ignored...]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locator<'a> {
    /// Lower-cased scheme.
    pub scheme: String,
    /// Everything between `scheme:` and the first `/`.
    pub authority: &'a str,
    /// The text after the first `/`, if any.
    pub rest: Option<&'a str>,
}

impl<'a> Locator<'a> {
    /// Parses a locator, refusing unknown schemes (as wrp-go v5 validation does).
    pub fn parse(s: &'a str) -> Result<Self, DeviceIdError> {
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| DeviceIdError::NotALocator(s.to_owned()))?;
        let scheme = scheme.to_ascii_lowercase();
        if !SCHEMES.contains(&scheme.as_str()) {
            return Err(DeviceIdError::UnknownScheme(s.to_owned()));
        }
        let (authority, rest) = match rest.split_once('/') {
            Some((a, r)) => (a, Some(r)),
            None => (rest, None),
        };
        Ok(Self {
            scheme,
            authority,
            rest,
        })
    }

    /// The device this locator names, if it names one (`event:`, `dns:` and
    /// `self:` name no device).
    pub fn device_id(&self) -> Option<DeviceId> {
        match self.scheme.as_str() {
            "event" | "dns" | "self" => None,
            _ if self.authority.is_empty() => None,
            scheme => canonical(scheme, self.authority).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_ids_are_canonicalised() {
        for raw in [
            "mac:112233445566",
            "MAC:11:22:33:44:55:66",
            "mac:11-22-33-44-55-66",
            "mac:1122.3344.5566/config",
            " mac:112233445566 ",
        ] {
            assert_eq!(
                DeviceId::parse(raw).unwrap().as_str(),
                "mac:112233445566",
                "{raw}"
            );
        }
        assert_eq!(
            DeviceId::parse("mac:AABBCCDDEEFF").unwrap().as_str(),
            "mac:aabbccddeeff"
        );
        assert_eq!(DeviceId::parse("mac:1122"), Err(DeviceIdError::BadMac));
    }

    #[test]
    fn free_form_ids_are_kept() {
        assert_eq!(DeviceId::parse("Sensor-42").unwrap().as_str(), "Sensor-42");
        assert_eq!(
            DeviceId::parse("room:kitchen").unwrap().as_str(),
            "room:kitchen"
        );
        assert_eq!(DeviceId::parse("a b"), Err(DeviceIdError::BadCharacter));
        assert_eq!(DeviceId::parse("  "), Err(DeviceIdError::Empty));
        assert_eq!(
            DeviceId::parse(&"x".repeat(300)),
            Err(DeviceIdError::TooLong)
        );
    }

    #[test]
    fn locators() {
        let l = Locator::parse("event:device-status/mac:112233445566/online").unwrap();
        assert_eq!(l.scheme, "event");
        assert_eq!(l.authority, "device-status");
        assert_eq!(l.rest, Some("mac:112233445566/online"));
        assert_eq!(l.device_id(), None);
        let s = Locator::parse("Mac:112233445566/config").unwrap();
        assert_eq!(s.device_id().unwrap().as_str(), "mac:112233445566");
        assert!(matches!(
            Locator::parse("foo:bar"),
            Err(DeviceIdError::UnknownScheme(_))
        ));
        assert!(matches!(
            Locator::parse("nocolon"),
            Err(DeviceIdError::NotALocator(_))
        ));
    }
}
