//! The forwarders' own runtime: one thread, at a lower CPU priority.
//!
//! Forwarding is best effort and buffered; the SSE fan-out is the hot path.
//! Running routing, filters (CEL) and every webhook/SQS client on a thread
//! of its own, `nice`d, lets the kernel give the fan-out path the CPU first:
//! under contention forwarding uses what is left (its buffers absorb the
//! difference, and drop with a notice when they cannot), and when the
//! machine is idle it runs at full speed.

use std::sync::mpsc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A running forwarding thread. Dropping it stops every forwarding task.
#[derive(Debug)]
pub struct ForwardRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl ForwardRuntime {
    /// Starts the thread; `nice` (0–19) lowers its priority. `stack` is
    /// its size in bytes: the matcher's filters (CEL) run on this thread,
    /// so the caller sizes it for their bounded depth.
    pub fn start(nice: i32, stack: usize) -> std::io::Result<Self> {
        let (handle_tx, handle_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ratatoskr-forward".into())
            .stack_size(stack)
            .spawn(move || {
                if nice > 0 {
                    // On Linux the "process" of setpriority(2) given a thread
                    // id is that thread alone.
                    let me = rustix::thread::gettid();
                    if let Err(e) = rustix::process::setpriority_process(Some(me), nice) {
                        tracing::warn!(error = %e, nice, "cannot lower the forwarding thread's priority");
                    }
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = stop_rx.await;
                });
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| std::io::Error::other("the forwarding thread died at start"))??;
        Ok(Self {
            handle,
            stop: Some(stop_tx),
        })
    }

    /// Where forwarding tasks are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for ForwardRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
