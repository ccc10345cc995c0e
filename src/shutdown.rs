//! Shutdown: signals, the order components stop in, and readiness.
//!
//! The order is fixed (the Kinesis seed's container idea, with tokio
//! primitives): readiness drops first so load balancers stop sending, then
//! the listener closes, then the hub closes every SSE stream with a final
//! `shutdown` event, then open requests drain within the grace period. SSE
//! responses never finish by themselves, which is why the hub must end them
//! before the drain can.

use std::sync::atomic::{AtomicU8, Ordering};

use tokio_util::sync::CancellationToken;

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

/// The gateway's background tasks (the sweeper, SIGHUP, the cluster
/// tasks), each started with a name and handed the shutdown as a value
/// (a [`CancellationToken`] it watches), as mini-redis does, rather than
/// aborted. A task that panics is logged with its name when it does, not
/// discarded; [`Background::stop`] says which panicked and which had to
/// be cut.
#[derive(Debug, Default)]
pub struct Background {
    stop: CancellationToken,
    tasks: Vec<Watched>,
}

/// A task and the watcher that logs its end.
#[derive(Debug)]
struct Watched {
    name: &'static str,
    watcher: tokio::task::JoinHandle<Ended>,
    /// The task itself: dropping the watcher would only detach it.
    task: tokio::task::AbortHandle,
    /// A task that does not watch the shutdown: cut at once by `stop`.
    cut_at_stop: bool,
}

/// How one background task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It returned (on the shutdown, or by itself).
    Returned,
    /// It panicked; logged when it did.
    Panicked,
}

/// What [`Background::stop`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Tasks that had panicked.
    pub panicked: Vec<&'static str>,
    /// Tasks still running after the grace, cut (aborted).
    pub cut: Vec<&'static str>,
}

impl Background {
    /// No tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shutdown a task is handed: cancelled by [`Background::stop`].
    pub fn shutdown(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `task` as the background task `name`; it watches
    /// [`Background::shutdown`] and returns on it.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.watch(name, tokio::spawn(task), false);
    }

    /// Watches a task already spawned that keeps nothing of its own to
    /// finish (its state is in Redis): `stop` cuts it at once, and still
    /// says whether it had panicked.
    pub fn adopt(&mut self, name: &'static str, handle: tokio::task::JoinHandle<()>) {
        self.watch(name, handle, true);
    }

    fn watch(
        &mut self,
        name: &'static str,
        handle: tokio::task::JoinHandle<()>,
        cut_at_stop: bool,
    ) {
        let task = handle.abort_handle();
        let watcher = tokio::spawn(async move {
            match handle.await {
                Ok(()) => Ended::Returned,
                Err(e) if e.is_panic() => {
                    let why = crate::sync::panic_message(&*e.into_panic()).unwrap_or_default();
                    tracing::error!(task = name, panic = %why, "a background task panicked");
                    Ended::Panicked
                }
                // Cut by `stop` after its grace: said there.
                Err(_) => Ended::Returned,
            }
        });
        self.tasks.push(Watched {
            name,
            watcher,
            task,
            cut_at_stop,
        });
    }

    /// Tells every task to stop, waits up to `grace` for them, then cuts
    /// the rest (logged), and says what it found.
    pub async fn stop(self, grace: std::time::Duration) -> Stopped {
        self.stop.cancel();
        for w in self.tasks.iter().filter(|w| w.cut_at_stop) {
            w.task.abort();
        }
        let deadline = tokio::time::Instant::now() + grace;
        let mut stopped = Stopped::default();
        for Watched {
            name,
            mut watcher,
            task,
            ..
        } in self.tasks
        {
            match tokio::time::timeout_at(deadline, &mut watcher).await {
                Ok(Ok(Ended::Panicked)) => stopped.panicked.push(name),
                Ok(_) => {}
                Err(_) => {
                    task.abort();
                    tracing::warn!(task = name, "a background task did not stop in time: cut");
                    stopped.cut.push(name);
                }
            }
        }
        stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn tasks_stop_on_the_shutdown_and_a_panic_is_reported_by_name() {
        let mut background = Background::new();
        let stop = background.shutdown();
        background.spawn("watcher", async move { stop.cancelled().await });
        background.spawn("faulty", async { panic!("a bug") });
        background.spawn("stuck", std::future::pending());
        background.adopt("follower", tokio::spawn(std::future::pending()));
        let stopped = background.stop(Duration::from_millis(200)).await;
        assert_eq!(stopped.panicked, vec!["faulty"]);
        assert_eq!(stopped.cut, vec!["stuck"]);
    }
}
