//! Why a delivery attempt failed: what every sink answers, and what the
//! worker's retries decide on.

use std::time::Duration;

/// Why a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// May succeed later (5xx, 408, 429, timeout, connection error).
    Retryable(String),
    /// May succeed later, and the receiver said when (`Retry-After` on a
    /// 429 or 503): the next attempt waits that long, at most
    /// [`super::delivery::MAX_RETRY_AFTER`], instead of the backoff.
    RetryAfter(String, Duration),
    /// Will not succeed by retrying (other 4xx, refused address).
    Permanent(String),
    /// The receiver answered 410 Gone: it wants no more events, so its
    /// registrations are disabled (as Standard Webhooks asks).
    Gone(String),
}
