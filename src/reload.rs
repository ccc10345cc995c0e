//! SIGHUP: read again what files configure (credentials, the TLS
//! certificate), without a restart. Each part keeps what it had when its
//! new files fail, and says so.

use std::sync::Arc;

use crate::auth::credentials::Credentials;
use crate::server::tls::Tls;

/// What a SIGHUP reloads.
#[derive(Debug, Clone)]
pub struct Reloadable {
    /// API token, JWT keys, API keys.
    pub credentials: Arc<Credentials>,
    /// The TLS certificate and key, when TLS is on.
    pub tls: Option<Arc<Tls>>,
}

impl Reloadable {
    /// Reloads every part (file reads: call it off the async workers).
    pub fn reload(&self) {
        let _ = self.credentials.reload();
        if let Some(tls) = &self.tls {
            let _ = tls.reload();
        }
    }
}

/// Reloads on every SIGHUP, until `stop`. Listening replaces SIGHUP's
/// default action (ending the process).
pub async fn on_hangup(parts: Reloadable, stop: tokio_util::sync::CancellationToken) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: files reload only on restart");
            return;
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            hangup = hangups.recv() => if hangup.is_none() { return },
        }
        tracing::info!("SIGHUP: reloading credentials and certificates");
        let p = parts.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || p.reload()).await {
            tracing::error!(error = %e, "the SIGHUP reload panicked");
        }
    }
}
