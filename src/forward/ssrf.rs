//! SSRF protection: which addresses a destination may reach.
//!
//! A consumer chooses where the gateway sends requests, so without a guard
//! a registration could aim it at the cloud metadata service, the admin
//! port of a neighbour, or the gateway itself. Every address that is not
//! globally routable is refused unless the operator allowed its network
//! (`--allow-destination-nets`). The check runs twice: when a registration
//! is made (so the consumer hears about it) and on every connection (so a
//! name that later resolves elsewhere — DNS rebinding — is still refused).
//! Both HTTP clients resolve through [`GuardedResolver`]: reqwest's for
//! webhooks and the AWS SDK's for SQS endpoints.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

/// Which addresses destinations may reach.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

/// Why a destination address was refused.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// The address is internal and not allowed.
    #[error(
        "{0} is a loopback, private, link-local or reserved address; destinations must be public"
    )]
    Internal(IpAddr),
    /// The host name did not resolve.
    #[error("{0} does not resolve: {1}")]
    Unresolved(String, String),
}

impl AddressPolicy {
    /// A policy that also allows `allowed` networks.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// Whether the gateway may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allowed.iter().any(|n| n.contains(&ip))
    }

    /// Checks an address.
    pub fn check(&self, ip: IpAddr) -> Result<(), AddressError> {
        if self.permits(ip) {
            Ok(())
        } else {
            Err(AddressError::Internal(ip))
        }
    }

    /// Resolves `host` and returns the permitted addresses; an error if none is.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, AddressError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.check(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let lookup = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((bare, port)),
        )
        .await
        .map_err(|_| AddressError::Unresolved(host.into(), "timed out".into()))?
        .map_err(|e| AddressError::Unresolved(host.into(), e.to_string()))?;
        let all: Vec<SocketAddr> = lookup.collect();
        let permitted: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| self.permits(a.ip()))
            .collect();
        match (permitted.is_empty(), all.first()) {
            (false, _) => Ok(permitted),
            (true, Some(first)) => Err(AddressError::Internal(first.ip())),
            (true, None) => Err(AddressError::Unresolved(host.into(), "no addresses".into())),
        }
    }

    /// Checks every URL of a destination; returns each refused one with
    /// the request field that named it (the caller turns them into a 422).
    pub async fn check_urls(
        &self,
        urls: &[(&'static str, &str)],
    ) -> Vec<(&'static str, AddressError)> {
        let mut errors = Vec::new();
        for (field, raw) in urls {
            let Ok(u) = url::Url::parse(raw) else {
                continue;
            };
            let (Some(host), Some(port)) = (u.host_str(), u.port_or_known_default()) else {
                continue;
            };
            if let Err(e) = self.resolve(host, port).await {
                errors.push((*field, e));
            }
        }
        errors
    }
}

/// Whether `ip` is globally routable: not loopback, private, link-local
/// (cloud metadata lives there), shared, documentation, multicast or
/// otherwise reserved. IPv4 embedded in IPv6 (mapped, compatible,
/// translated, NAT64, 6to4, Teredo) is judged as that IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // Local-use NAT64 (RFC 8215): the IPv4 part's place depends on
            // a prefix length only the local network knows. Never public.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
                return false;
            }
            // An internal IPv4 inside is internal; a public one still has
            // to pass the IPv6 ranges (Teredo stays refused as a whole).
            if embedded_v4(v6).is_some_and(|v4| !is_public_v4(v4)) {
                return false;
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments, Teredo
                || s[0] == 0x0100) // discard-only
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space (CGNAT)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay anycast
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
        || o[0] >= 240) // reserved
}

/// The IPv4 address inside an IPv6 address that carries one: mapped
/// (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`), translated
/// (`::ffff:0:a.b.c.d`), well-known NAT64 (`64:ff9b::a.b.c.d`), 6to4
/// (`2002:AABB:CCDD::`) and Teredo (`2001:0:…`, the client's address,
/// inverted, in the last 32 bits).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1) {
        return Some(v4(s[6], s[7])); // IPv4-compatible (deprecated)
    }
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some(v4(s[6], s[7])); // IPv4-translated (SIIT)
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(v4(s[6], s[7])); // NAT64, well-known prefix
    }
    if s[0] == 0x2002 {
        return Some(v4(s[1], s[2])); // 6to4
    }
    if s[0] == 0x2001 && s[1] == 0 {
        return Some(v4(!s[6], !s[7])); // Teredo client
    }
    None
}

/// The HTTP client's resolver: every connection goes only to permitted
/// addresses, whatever the name resolves to at that moment.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let addrs = policy.resolve(name.as_str(), 0).await?;
            let iter: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(iter)
        })
    }
}

/// The same guard for the AWS SDK's HTTP client (SQS endpoints).
impl aws_smithy_runtime_api::client::dns::ResolveDns for GuardedResolver {
    fn resolve_dns<'a>(
        &'a self,
        name: &'a str,
    ) -> aws_smithy_runtime_api::client::dns::DnsFuture<'a> {
        use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDnsError};
        DnsFuture::new(async move {
            let addrs = self
                .policy
                .resolve(name, 0)
                .await
                .map_err(ResolveDnsError::new)?;
            Ok(addrs.into_iter().map(|a| a.ip()).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn the_sqs_clients_resolver_refuses_internal_names() {
        use aws_smithy_runtime_api::client::dns::ResolveDns;
        let guarded = GuardedResolver::new(Arc::new(AddressPolicy::default()));
        let refused = guarded.resolve_dns("localhost").await;
        assert!(refused.is_err(), "{refused:?}");
        let allowed = GuardedResolver::new(Arc::new(AddressPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ])));
        let ips = allowed.resolve_dns("localhost").await.unwrap();
        assert!(ips.iter().all(|i| i.is_loopback()) && !ips.is_empty());
    }

    #[test]
    fn internal_addresses_are_refused() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "64:ff9b:1::a9fe:a9fe",
            "64:ff9b:1::808:808",
            "2002:a9fe:a9fe::",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "::ffff:0:a9fe:a9fe",
            "::ffff:0:7f00:1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo, client 127.0.0.1
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7", // Teredo, client 8.8.8.8
            "192.88.99.1",
        ] {
            assert!(!is_public(ip(a)), "{a} should be internal");
        }
        for a in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip(a)), "{a} should be public");
        }
        assert_eq!(
            embedded_v4("2001:0:4136:e378:8000:63bf:80ff:fffe".parse().unwrap()),
            Some(Ipv4Addr::new(127, 0, 0, 1))
        );
    }

    #[test]
    fn allowed_networks_open_exceptions() {
        let p = AddressPolicy::new(vec!["127.0.0.1/32".parse().unwrap()]);
        assert!(p.permits(ip("127.0.0.1")));
        assert!(!p.permits(ip("127.0.0.2")));
        assert!(!p.permits(ip("169.254.169.254")));
    }

    #[tokio::test]
    async fn names_resolving_inward_are_refused() {
        let p = AddressPolicy::default();
        let err = p.resolve("localhost", 80).await.unwrap_err();
        assert!(matches!(err, AddressError::Internal(_)), "{err}");
        let err = p.resolve("[::1]", 80).await.unwrap_err();
        assert!(matches!(err, AddressError::Internal(_)), "{err}");
        // What the HTTP client's resolver sees on every connection.
        for literal in [
            "[64:ff9b:1::a9fe:a9fe]",
            "[2002:a9fe:a9fe::]",
            "[2002:7f00:1::]",
            "[::ffff:0:a9fe:a9fe]",
        ] {
            let err = p.resolve(literal, 80).await.unwrap_err();
            assert!(matches!(err, AddressError::Internal(_)), "{literal}: {err}");
        }
    }
}
