//! `ratatoskr healthcheck`: asks the local gateway's `/health` and exits 0
//! when it answers 200, 1 otherwise: the container image's HEALTHCHECK,
//! with no curl in the image.
//!
//! It reads the same `RATATOSKR_LISTEN` (and `RATATOSKR_TLS_CERT`) as the
//! gateway, so it needs no arguments in the image; `--url` overrides. A
//! wildcard listen address is asked on the loopback. Over TLS the
//! certificate is not checked: the probe only asks whether this process
//! answers, on this machine.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// What the probe asks.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ratatoskr healthcheck",
    about = "Exit 0 when the local gateway's /health answers 200"
)]
pub struct HealthcheckArgs {
    /// The gateway's listen address.
    #[arg(long, env = "RATATOSKR_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Whether the gateway serves TLS (its certificate flag).
    #[arg(long, env = "RATATOSKR_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Ask this URL instead.
    #[arg(long)]
    pub url: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl HealthcheckArgs {
    /// The URL to ask.
    pub fn url(&self) -> String {
        if let Some(u) = &self.url {
            return u.clone();
        }
        let mut addr = self.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let scheme = if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{addr}/health")
    }
}

/// Asks once; `Ok(())` on a 200.
pub async fn probe(args: &HealthcheckArgs) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let url = args.url();
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if response.status() == reqwest::StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{url}: {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn a_wildcard_address_is_asked_on_the_loopback() {
        let a = HealthcheckArgs::try_parse_from(["x", "--listen", "0.0.0.0:9090"]).unwrap();
        assert_eq!(a.url(), "http://127.0.0.1:9090/health");
        let a =
            HealthcheckArgs::try_parse_from(["x", "--listen", "[::]:8080", "--tls-cert", "c.pem"])
                .unwrap();
        assert_eq!(a.url(), "https://[::1]:8080/health");
        let a = HealthcheckArgs::try_parse_from(["x", "--url", "http://10.0.0.1/health"]).unwrap();
        assert_eq!(a.url(), "http://10.0.0.1/health");
    }
}
