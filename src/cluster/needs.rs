//! Which partitions a node reads: those its streams and its destinations
//! need, and no others.
//!
//! A stream filtered to devices needs their partitions; one that is not
//! (or is limited by a scope rather than by device ids), every partition;
//! a destination this node forwards to, every partition (a destination's
//! devices are not tracked here). Each need is a [`NeedGuard`] held for as
//! long as the stream or the lease lives: taking it waits until the merge
//! reads those partitions ([`super::merge`] joins them in order). A
//! partition nobody needs is dropped after [`LINGER`], so a stream that
//! reconnects at once finds it still read.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// How long a partition nobody needs goes on being read.
pub const LINGER: Duration = Duration::from_secs(10);
/// How long a need waits for its partitions to be read.
const READ_WAIT: Duration = Duration::from_secs(3);

/// The partitions a stream needs could not be read in time (their Redis
/// primary does not answer).
#[derive(Debug, thiserror::Error)]
#[error("this node could not start reading the partitions the stream needs: Redis does not answer")]
pub struct NotRead;

/// A request to the merge: read these partitions, and say when.
#[derive(Debug)]
pub(super) struct Ensure {
    pub partitions: Vec<usize>,
    pub done: oneshot::Sender<()>,
}

/// How many streams and destinations need each partition.
#[derive(Debug)]
pub struct Needs {
    counts: Vec<AtomicUsize>,
    merge: mpsc::UnboundedSender<Ensure>,
}

impl Needs {
    /// Needs of `partitions` partitions, asking `merge` to read them.
    pub(super) fn new(partitions: usize, merge: mpsc::UnboundedSender<Ensure>) -> Arc<Self> {
        Arc::new(Self {
            counts: (0..partitions).map(|_| AtomicUsize::new(0)).collect(),
            merge,
        })
    }

    /// Whether anything needs partition `p` now.
    pub(super) fn is_needed(&self, p: usize) -> bool {
        self.counts[p].load(Ordering::Acquire) > 0
    }

    /// Needs `partitions` (sorted, without repeats) for as long as the
    /// guard lives; returns once the merge reads them all, or fails after
    /// [`READ_WAIT`].
    pub async fn need(self: &Arc<Self>, partitions: Vec<usize>) -> Result<NeedGuard, NotRead> {
        for &p in &partitions {
            self.counts[p].fetch_add(1, Ordering::AcqRel);
        }
        let guard = NeedGuard {
            needs: self.clone(),
            partitions: partitions.clone(),
        };
        let (done, read) = oneshot::channel();
        self.merge
            .send(Ensure { partitions, done })
            .map_err(|_| NotRead)?;
        match tokio::time::timeout(READ_WAIT, read).await {
            Ok(Ok(())) => Ok(guard),
            _ => Err(NotRead),
        }
    }
}

/// A stream's or a destination's need of some partitions.
#[derive(Debug)]
pub struct NeedGuard {
    needs: Arc<Needs>,
    partitions: Vec<usize>,
}

impl Drop for NeedGuard {
    fn drop(&mut self) {
        for &p in &self.partitions {
            self.needs.counts[p].fetch_sub(1, Ordering::AcqRel);
        }
    }
}
