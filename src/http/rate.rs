//! Rate limits on ingest and on management changes, per client address and
//! per credential (`governor`, GCRA). Off by default
//! (`--rate-limit-ingest`, `--rate-limit-changes`): behind a proxy or a NAT
//! many clients share one address, and only the operator knows the
//! traffic. A request over either limit gets 429 with `Retry-After`.
//!
//! The per-key state grows with the keys seen; the sweeper drops keys
//! whose state is back to full every second ([`RateLimits::sweep`]), so
//! memory follows the clients active within about a second's refill.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// What a limit is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// `POST /api/events`.
    Ingest,
    /// Creating, replacing or deleting registrations, event types, hooks.
    Changes,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    limit: &'static str,
    by: &'static str,
}

struct Limit {
    by_ip: DefaultKeyedRateLimiter<IpAddr>,
    by_key: DefaultKeyedRateLimiter<String>,
}

impl Limit {
    fn new(per_second: u32) -> Option<Self> {
        let quota = Quota::per_second(NonZeroU32::new(per_second)?);
        Some(Self {
            by_ip: RateLimiter::keyed(quota),
            by_key: RateLimiter::keyed(quota),
        })
    }
}

/// Both limits, and their counters.
pub struct RateLimits {
    ingest: Option<Limit>,
    changes: Option<Limit>,
    refused: Family<Labels, Counter>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("ingest", &self.ingest.is_some())
            .field("changes", &self.changes.is_some())
            .finish()
    }
}

impl RateLimits {
    /// Limits of `ingest` and `changes` requests per second (0: none), per
    /// client address and per credential, each with a burst of one
    /// second's worth; refusals counted in `ratatoskr_rate_limited_total`.
    pub fn register(
        registry: &mut prometheus_client::registry::Registry,
        ingest: u32,
        changes: u32,
    ) -> Arc<Self> {
        let refused = Family::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429 by a rate limit (limit: ingest or changes; by: ip or key)",
            refused.clone(),
        );
        Arc::new(Self {
            ingest: Limit::new(ingest),
            changes: Limit::new(changes),
            refused,
        })
    }

    /// Takes one request from `ip`'s and `key`'s allowance, or says how
    /// long until there is one.
    pub fn check(
        &self,
        what: Limited,
        ip: Option<IpAddr>,
        key: Option<&str>,
    ) -> Result<(), Duration> {
        let (limit, name) = match what {
            Limited::Ingest => (&self.ingest, "ingest"),
            Limited::Changes => (&self.changes, "changes"),
        };
        let Some(limit) = limit else {
            return Ok(());
        };
        // The clock is read only for a refusal (its Retry-After).
        let refused = |by: &'static str, not_until: governor::NotUntil<_>| {
            self.refused
                .get_or_create(&Labels { limit: name, by })
                .inc();
            not_until.wait_time_from(DefaultClock::default().now())
        };
        if let Some(ip) = ip {
            limit.by_ip.check_key(&ip).map_err(|n| refused("ip", n))?;
        }
        if let Some(key) = key {
            limit
                .by_key
                .check_key(&key.to_owned())
                .map_err(|n| refused("key", n))?;
        }
        Ok(())
    }

    /// Whether any limit is set (credentials then need a rate-limit key).
    pub fn any(&self) -> bool {
        self.ingest.is_some() || self.changes.is_some()
    }

    /// Forgets clients whose allowance is full again (every second).
    pub fn sweep(&self) {
        for limit in [&self.ingest, &self.changes].into_iter().flatten() {
            limit.by_ip.retain_recent();
            limit.by_ip.shrink_to_fit();
            limit.by_key.retain_recent();
            limit.by_key.shrink_to_fit();
        }
    }
}

/// Limits `POST /api/events`.
pub async fn limit_ingest(
    axum::extract::State(app): axum::extract::State<super::App>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    limit(&app, Limited::Ingest, request, next).await
}

/// Limits the changing methods of the management routes.
pub async fn limit_changes(
    axum::extract::State(app): axum::extract::State<super::App>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.method().is_safe() {
        return next.run(request).await;
    }
    limit(&app, Limited::Changes, request, next).await
}

async fn limit(
    app: &super::App,
    what: Limited,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match admit(app, what, &request) {
        Ok(()) => next.run(request).await,
        Err(refused) => *refused,
    }
}

/// What the limit middlewares check, from the request's extensions (the
/// [`crate::server::PeerAddr`] and [`super::auth::ClientKey`]): `Ok`
/// within the limits, else the 429 answer with its `Retry-After`.
pub fn admit<B>(
    app: &super::App,
    what: Limited,
    request: &http::Request<B>,
) -> Result<(), Box<axum::response::Response>> {
    let ip = request
        .extensions()
        .get::<crate::server::PeerAddr>()
        .map(|p| p.0.ip());
    let key = request
        .extensions()
        .get::<super::auth::ClientKey>()
        .map(|k| k.0.as_str());
    admit_client(app, what, ip, key)
}

/// [`admit`] for a caller outside the router (the direct ingest path,
/// [`super::Api`]), which holds the client's address and key itself.
pub fn admit_client(
    app: &super::App,
    what: Limited,
    ip: Option<IpAddr>,
    key: Option<&str>,
) -> Result<(), Box<axum::response::Response>> {
    use axum::response::IntoResponse;
    if !app.rate_limits.any() {
        return Ok(());
    }
    app.rate_limits.check(what, ip, key).map_err(|wait| {
        let flag = match what {
            Limited::Ingest => "--rate-limit-ingest",
            Limited::Changes => "--rate-limit-changes",
        };
        crate::error::ApiError::too_many_requests(
            format!("too many requests from this client ({flag}); try again later"),
            wait,
        )
        .into_response()
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_rate_waits_and_others_do_not() {
        let limits = RateLimits::register(&mut Default::default(), 2, 0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limits.check(Limited::Ingest, Some(a), None).is_ok());
        assert!(limits.check(Limited::Ingest, Some(a), None).is_ok());
        let wait = limits.check(Limited::Ingest, Some(a), None).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(limits.check(Limited::Ingest, Some(b), None).is_ok());
        // Per key as well: the same token from two addresses.
        assert!(limits.check(Limited::Ingest, Some(b), Some("k")).is_ok());
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        assert!(limits.check(Limited::Ingest, Some(c), Some("k")).is_ok());
        assert!(limits.check(Limited::Ingest, None, Some("k")).is_err());
        // No limit on changes.
        for _ in 0..100 {
            assert!(limits.check(Limited::Changes, Some(a), Some("k")).is_ok());
        }
    }
}
