//! Shutdown: signals, the order components stop in, and readiness.
//!
//! The order is fixed (the Kinesis seed's container idea, with tokio
//! primitives): readiness drops first so load balancers stop sending, then
//! the listener closes, then the hub closes every SSE stream with a final
//! `shutdown` event, then open requests drain within the grace period. SSE
//! responses never finish by themselves, which is why the hub must end them
//! before the drain can.

use std::sync::atomic::{AtomicU8, Ordering};

/// Whether the gateway should receive traffic, for `/ready`.
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

/// The gateway's lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Components are starting.
    Starting,
    /// Serving.
    Ready,
    /// Draining.
    ShuttingDown,
}

impl Readiness {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::ShuttingDown,
        }
    }

    /// Moves to `phase`.
    pub fn set(&self, phase: Phase) {
        let v = match phase {
            Phase::Starting => 0,
            Phase::Ready => 1,
            Phase::ShuttingDown => 2,
        };
        self.0.store(v, Ordering::Release);
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives
/// while the gateway starts (already answering requests, before it awaits
/// this) is then caught, instead of ending the process by the default
/// action with its streams cut and no `shutdown` notice sent.
pub fn signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let listen = |kind: tokio::signal::unix::SignalKind, name: &'static str| {
        let installed = tokio::signal::unix::signal(kind);
        async move {
            match installed {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    #[cfg(unix)]
    let (int, term) = (
        listen(tokio::signal::unix::SignalKind::interrupt(), "SIGINT"),
        listen(tokio::signal::unix::SignalKind::terminate(), "SIGTERM"),
    );
    #[cfg(not(unix))]
    let (int, term) = (
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
        std::future::pending::<()>(),
    );
    async move {
        tokio::select! {
            () = int => tracing::info!("SIGINT received"),
            () = term => tracing::info!("SIGTERM received"),
        }
    }
}
