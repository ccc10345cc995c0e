//! How large a registration's destination may be. A URL or a header value
//! could otherwise fill the whole request body (1 MiB), and each is kept
//! several times (the parsed registration, its stored document, the
//! destination and its outbox): bounded as browsers and proxies bound
//! them, far below the body limit.

use crate::forward::destination::Destination;
use crate::validation::FieldError;

/// Longest URL (`url`, `failure_url`, `queue_url`, `endpoint_url`), in
/// bytes: what browsers, CDNs and most servers take.
pub const MAX_URL_LEN: usize = 4096;
/// Longest header, name and value together, in bytes (nginx's and
/// Apache's default for one header line).
pub const MAX_HEADER_LEN: usize = 8192;
/// Most bytes of every extra header of a destination, names and values.
pub const MAX_HEADERS_LEN: usize = 16384;
/// Longest secret or credential (`secret`, `access_key_id`,
/// `secret_access_key`, `session_token`), in bytes: AWS session tokens
/// run to about 2 KiB.
pub const MAX_CREDENTIAL_LEN: usize = 4096;

/// Adds an error for every field of `destination` over its bound.
pub fn check_destination(destination: &Destination, errors: &mut Vec<FieldError>) {
    for (field, url) in destination.urls() {
        if url.len() > MAX_URL_LEN {
            errors.push(FieldError::new(
                field,
                format!("longer than {MAX_URL_LEN} bytes"),
            ));
        }
    }
    let credentials: Vec<(&str, Option<&str>)> = match destination {
        Destination::Http(h) => {
            let mut total = 0;
            for (name, value) in &h.headers {
                let len = name.len() + value.len();
                total += len;
                if len > MAX_HEADER_LEN {
                    errors.push(FieldError::new(
                        format!("destination.headers.{}", truncated(name)),
                        format!("name and value longer than {MAX_HEADER_LEN} bytes"),
                    ));
                }
            }
            if total > MAX_HEADERS_LEN {
                errors.push(FieldError::new(
                    "destination.headers",
                    format!("more than {MAX_HEADERS_LEN} bytes of names and values in all"),
                ));
            }
            vec![
                ("destination.secret", h.secret.as_deref()),
                (
                    "destination.previous_secret",
                    h.previous_secret.as_ref().map(|p| p.secret.as_str()),
                ),
            ]
        }
        Destination::Sqs(s) => vec![
            ("destination.access_key_id", s.access_key_id.as_deref()),
            (
                "destination.secret_access_key",
                s.secret_access_key.as_deref(),
            ),
            ("destination.session_token", s.session_token.as_deref()),
        ],
    };
    for (field, value) in credentials {
        if value.is_some_and(|v| v.len() > MAX_CREDENTIAL_LEN) {
            errors.push(FieldError::new(
                field,
                format!("longer than {MAX_CREDENTIAL_LEN} bytes"),
            ));
        }
    }
}

/// A header name short enough to name in an error (the name itself may be
/// the oversized part).
fn truncated(name: &str) -> &str {
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}
