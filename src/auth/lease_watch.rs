//! One stream's watch over its [`Lease`]: one timer armed once at the
//! expiry, and a `tokio::sync::watch` of the credentials' reloads.
//! Checking it is two atomic loads (no lock, no clock), so it costs
//! nothing per event.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Sleep;

use super::credentials::Credentials;
use super::lease::{Lease, Revoked};

/// One stream's watch over its lease. Polled by the stream's own task
/// (one task for the stream's whole life), so a timer or a reload wakes
/// that task, and a poll in between finds nothing with atomic loads.
pub struct LeaseWatch {
    /// Fires at the expiry; armed once.
    expiry: Option<Pin<Box<Sleep>>>,
    /// The expiry timer holds this task's waker (it was polled once).
    expiry_polled: bool,
    reloads: Option<Reloads>,
}

/// Watching the credentials' reloads for an API key.
struct Reloads {
    credentials: Arc<Credentials>,
    key: [u8; 32],
    /// The reload generation this stream checked last.
    seen: watch::Receiver<u64>,
    /// Holds this task's waker until the next reload.
    wake: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
    /// `wake` was polled (and is pending): it need not be polled again
    /// before a reload, and must not be once it completed.
    polled: bool,
}

impl std::fmt::Debug for LeaseWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseWatch")
            .field("expiry", &self.expiry.as_ref().map(|s| s.deadline()))
            .field("reloads", &self.reloads.is_some())
            .finish()
    }
}

impl LeaseWatch {
    /// A watch over `lease`; `None` when nothing can end it.
    pub fn new(lease: &Lease, credentials: &Arc<Credentials>) -> Option<Self> {
        if !lease.ends() {
            return None;
        }
        let expiry = lease.expires().map(|at| {
            // Wall-clock seconds to the runtime's clock: the time left now.
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            let now = tokio::time::Instant::now();
            // Centuries ahead would overflow the clock: cap at a year (a
            // stream open that long meets a restart first).
            let deadline = now
                .checked_add(left.min(Duration::from_secs(365 * 24 * 3600)))
                .unwrap_or(now);
            Box::pin(tokio::time::sleep_until(deadline))
        });
        let reloads = lease.key().copied().map(|key| {
            let seen = credentials.reloads();
            Reloads {
                credentials: credentials.clone(),
                key,
                wake: next_reload(seen.clone()),
                seen,
                polled: false,
            }
        });
        Some(Self {
            expiry,
            expiry_polled: false,
            reloads,
        })
    }

    /// Ready once the credential no longer holds; pending otherwise, with
    /// this task woken at the expiry and at the next reload.
    pub fn poll_revoked(&mut self, cx: &mut Context<'_>) -> Poll<Revoked> {
        if let Some(timer) = &mut self.expiry {
            if self.expiry_polled {
                if timer.is_elapsed() {
                    return Poll::Ready(Revoked::Expired);
                }
            } else {
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Revoked::Expired);
                }
                self.expiry_polled = true;
            }
        }
        if let Some(r) = &mut self.reloads {
            loop {
                // Err: the credentials are gone (the gateway is stopping);
                // the shutdown ends the stream.
                if r.seen.has_changed().unwrap_or(false) {
                    r.seen.borrow_and_update();
                    if !r.credentials.holds_key(&r.key) {
                        return Poll::Ready(Revoked::Removed);
                    }
                    r.wake = next_reload(r.seen.clone());
                    r.polled = false;
                }
                if r.polled {
                    break;
                }
                r.polled = true;
                if r.wake.as_mut().poll(cx).is_pending() {
                    break;
                }
                // A reload came in meanwhile: check it.
            }
        }
        Poll::Pending
    }
}

/// Completes at the next reload after what `seen` has seen.
fn next_reload(mut seen: watch::Receiver<u64>) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
    Box::pin(async move {
        let _ = seen.changed().await;
    })
}
