//! A secret string (the API token, the JWT HMAC secret): at least 16
//! characters, and never shown by `Debug`, so that no log line or error
//! built from a configuration prints it.

/// A secret string whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() < 16 {
            return Err("the token must be at least 16 characters".into());
        }
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s: Secret = "a-long-enough-token".parse().unwrap();
        assert!(!format!("{s:?}").contains("token"));
        assert!("short".parse::<Secret>().is_err());
    }
}
