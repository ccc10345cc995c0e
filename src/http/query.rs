//! Query strings with repeated keys (`?device=a&device=b`), which serde's
//! urlencoded reader does not keep. Unknown keys are refused, so a typo such
//! as `?devices=` is an error rather than a silently unfiltered stream.

use crate::error::ApiError;

/// Decoded `key=value` pairs, in order.
#[derive(Debug, Default)]
pub struct QueryPairs(Vec<(String, String)>);

impl QueryPairs {
    /// Decodes a raw query string, refusing keys not in `known`.
    /// `access_token` is always allowed (and dropped): the auth layer reads it.
    pub fn parse(raw: Option<&str>, known: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .filter(|(k, _)| k != "access_token")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {k:?}; known: {}",
                known.join(", ")
            )));
        }
        Ok(Self(pairs))
    }

    /// Every value of `key`.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of a key that may appear once.
    pub fn one<'a>(&'a self, key: &'a str) -> Result<Option<&'a str>, ApiError> {
        let mut values = self.all(key);
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::bad_request(format!(
                "query parameter {key:?} may appear only once"
            )));
        }
        Ok(first)
    }

    /// `limit`, between 1 and `max`; `default` when absent (400 otherwise).
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.one("limit")? {
            None => Ok(default),
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| ApiError::bad_request(format!("limit must be between 1 and {max}"))),
        }
    }
}
