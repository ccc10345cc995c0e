//! Where accepted events go, and where they are read back from: the one
//! seam of the deployment mode.
//!
//! An embedded node publishes into its own [`Hub`] (with its event log and
//! its in-memory idempotency keys); a cluster node appends to the shared
//! Redis stream, whose reader publishes into every node's hub. The
//! composition root picks one [`Bus`] at start; ingest, the stream's
//! resume, replays, `/ready` and `/api/stats` ask it, and never which mode
//! runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::{Cluster, ClusterError, SharedStream, APPEND_BUDGET};
use crate::error::ApiError;
use crate::event::{Event, EventDraft, EventId};
use crate::eventlog::EventLog;
use crate::hub::{FanOut, Hub, Published};
use crate::state::idempotency::{Claim, Fingerprint, IdempotencyCache};
use crate::state::registry::Registry;

/// Bytes of the embedded log one read of a replay returns.
const HISTORY_PAGE_BYTES: usize = 4 << 20;
/// Events one read of the shared stream returns while replaying.
const HISTORY_PAGE_EVENTS: usize = 1_000;

/// Where accepted events go.
#[derive(Debug)]
pub enum Bus {
    /// This node alone: its hub, its log, its keys.
    Local(Local),
    /// One of several nodes: the shared Redis stream.
    Shared(Arc<Cluster>),
}

/// What is left of a publish once [`Bus::publish`] returns.
enum Step<'a> {
    Done(Result<Outcome, ApiError>),
    /// Published; answered once the log has it.
    Wait(&'a Local, Outcome),
    Shared(
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Outcome, ApiError>> + Send + 'a>>,
    ),
}

/// An embedded node's bus.
#[derive(Debug)]
pub struct Local {
    /// The fan-out hub events are published into.
    pub hub: Arc<Hub>,
    /// `Idempotency-Key` memory.
    pub dedup: IdempotencyCache,
    /// The event log (none with `--store memory`).
    pub log: Option<Arc<EventLog>>,
    /// Registrations: an event one of them may forward is answered only
    /// once the log has it.
    pub registry: Arc<Registry>,
}

/// An `Idempotency-Key` in its credential's namespace, with the
/// fingerprint of the request (or batch line) it came with.
#[derive(Debug)]
pub struct Idempotent {
    /// The scoped key.
    pub key: String,
    /// What shapes the event the request makes.
    pub fingerprint: Fingerprint,
}

/// What publishing one event did.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The event's id (the first event's, for a repeated key).
    pub id: EventId,
    /// The answer to an earlier request with the same idempotency key.
    pub replayed: bool,
    /// The fullest subscriber queue it went into (see `FanOut::deepest`;
    /// 0 in a cluster, where the reader publishes).
    pub deepest: usize,
}

impl Outcome {
    /// The answer to a repeated idempotency key: the first event's id.
    fn replay_of(id: EventId) -> Self {
        Self {
            id,
            replayed: true,
            deepest: 0,
        }
    }

    fn fresh(fan_out: FanOut) -> Self {
        Self {
            id: fan_out.id,
            replayed: false,
            deepest: fan_out.deepest,
        }
    }
}

/// The cluster's figures for `/api/stats`.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// This node's id.
    pub node: String,
    /// Whether Redis answers.
    pub healthy: bool,
    /// The nodes that announce themselves.
    pub members: Vec<crate::cluster::members::Member>,
}

impl Bus {
    /// Publishes `draft` unless its idempotency key was seen: answered
    /// once the hub has it (and, for an event a registration may forward,
    /// the log), or in a cluster once Redis has it. An embedded publish is
    /// done before this returns, so that the future awaited (which every
    /// request moves) holds no draft.
    pub fn publish<'a>(
        &'a self,
        draft: EventDraft,
        key: Option<&'a Idempotent>,
    ) -> impl std::future::Future<Output = Result<Outcome, ApiError>> + Send + 'a {
        let step = match self {
            Self::Local(local) => match local.publish_now(draft, key) {
                Ok((outcome, true)) => Step::Wait(local, outcome),
                Ok((outcome, false)) => Step::Done(Ok(outcome)),
                Err(e) => Step::Done(Err(e)),
            },
            // Boxed: the Redis round trip's state would otherwise be part
            // of every embedded publish's future too, and be copied with it.
            Self::Shared(cluster) => Step::Shared(Box::pin(publish_shared(cluster, draft, key))),
        };
        async move {
            match step {
                Step::Done(result) => result,
                // Boxed: kept out of the request's future when there is
                // nothing to wait for.
                Step::Wait(local, outcome) => {
                    Box::pin(local.written(outcome.id)).await;
                    Ok(outcome)
                }
                Step::Shared(publish) => publish.await,
            }
        }
    }

    /// Whether a batch without keys goes in one write ([`Bus::append_all`])
    /// rather than event by event (with pacing): so in a cluster, one Redis
    /// pipeline.
    pub fn appends_batches_whole(&self) -> bool {
        matches!(self, Self::Shared(_))
    }

    /// Appends `drafts`, without keys; each one's id, or why it was not
    /// stored (an error for the whole when none was). In a cluster in one
    /// write per partition (events of one partition share their fate); an
    /// embedded node publishes them one by one, each as [`Bus::publish`]
    /// does (so each waits for the log where it must).
    pub async fn append_all(
        &self,
        drafts: &[EventDraft],
    ) -> Result<Vec<Result<EventId, ApiError>>, ApiError> {
        match self {
            Self::Local(_) => {
                let mut ids = Vec::with_capacity(drafts.len());
                for draft in drafts {
                    ids.push(Ok(self.publish(draft.clone(), None).await?.id));
                }
                Ok(ids)
            }
            Self::Shared(cluster) => {
                let results = cluster
                    .stream()
                    .append_spread(drafts, Instant::now() + APPEND_BUDGET)
                    .await;
                if let Some(Err(e)) = results
                    .first()
                    .filter(|_| results.iter().all(Result::is_err))
                {
                    return Err(unavailable(e));
                }
                Ok(results
                    .into_iter()
                    .map(|r| r.map_err(|e| unavailable(&e)))
                    .collect())
            }
        }
    }

    /// Whether events can be accepted now (Redis answers, in a cluster).
    pub fn is_reachable(&self) -> bool {
        match self {
            Self::Local(_) => true,
            Self::Shared(cluster) => cluster.is_healthy(),
        }
    }

    /// The cluster's figures; none for an embedded node.
    pub async fn cluster_status(&self) -> Option<ClusterStatus> {
        let Self::Shared(cluster) = self else {
            return None;
        };
        Some(ClusterStatus {
            node: cluster.node_id().to_owned(),
            healthy: cluster.is_healthy(),
            members: cluster.members().await.unwrap_or_default(),
        })
    }

    /// The shared stream, for a resume that reaches past this node's ring;
    /// none for an embedded node (its ring was restored from its log).
    pub fn shared_stream(&self) -> Option<&Arc<SharedStream>> {
        match self {
            Self::Local(_) => None,
            Self::Shared(cluster) => Some(cluster.stream()),
        }
    }

    /// Where past events can be read back from (replays): the event log,
    /// or the shared stream; none with `--store memory`.
    pub fn history(&self) -> Option<History> {
        match self {
            Self::Local(local) => local.log.clone().map(History::Log),
            Self::Shared(cluster) => Some(History::Stream(cluster.stream().clone())),
        }
    }
}

impl Local {
    /// Publishes into the hub (a plain function: the draft is not kept in
    /// the request's future); whether the answer waits for the log.
    fn publish_now(
        &self,
        draft: EventDraft,
        key: Option<&Idempotent>,
    ) -> Result<(Outcome, bool), ApiError> {
        // Only what a registration may forward is waited for (see
        // `written`).
        let forwarded = self.log.is_some() && self.registry.may_match(draft.device.as_ref());
        let outcome = match key {
            None => Outcome::fresh(self.hub.publish(draft)),
            Some(Idempotent { key, fingerprint }) => {
                match self.dedup.claim(key, fingerprint, Instant::now()) {
                    Claim::Seen(id) => return Ok((Outcome::replay_of(id), false)),
                    Claim::InProgress => return Err(key_in_flight()),
                    Claim::Mismatch => return Err(key_reused()),
                    Claim::New => {
                        let outcome = Outcome::fresh(self.hub.publish(draft));
                        self.dedup.complete(key, outcome.id);
                        outcome
                    }
                }
            }
        };
        Ok((outcome, forwarded))
    }

    /// An event a registration may forward is answered once the event log
    /// has it (written to the OS, so that it survives the process being
    /// killed), or a stalled disk's wait is over. Every other event is
    /// logged too, for resumes across a restart, without waiting: a kill
    /// may cost the last of those (about a millisecond's worth).
    async fn written(&self, id: EventId) {
        if let Some(log) = &self.log {
            if !log.written(id).await {
                tracing::warn!(%id, "the event log is stalled: an event was answered before it was written");
            }
        }
    }
}

async fn publish_shared(
    cluster: &Cluster,
    draft: EventDraft,
    key: Option<&Idempotent>,
) -> Result<Outcome, ApiError> {
    // One budget for the claim and the append: the claim is held in flight
    // for longer than the append may run (see `SharedKeys::claim`).
    let gives_up = Instant::now() + APPEND_BUDGET;
    let partition = cluster.stream().partition_of(&draft);
    let mut record = None;
    if let Some(Idempotent { key, fingerprint }) = key {
        match cluster
            .keys()
            .claim(partition, key, fingerprint, gives_up)
            .await
            .map_err(|e| unavailable(&e))?
        {
            Claim::Seen(id) => return Ok(Outcome::replay_of(id)),
            Claim::InProgress => return Err(key_in_flight()),
            Claim::Mismatch => return Err(key_reused()),
            Claim::New => record = Some(cluster.keys().record(partition, key, fingerprint)),
        }
    }
    match cluster
        .stream()
        .append(std::slice::from_ref(&draft), record, gives_up)
        .await
    {
        Ok(ids) => Ok(Outcome {
            id: ids[0],
            replayed: false,
            deepest: 0,
        }),
        Err(e) => {
            // Not stored, and never will be: a retry may go. (An unknown
            // outcome keeps the claim: if the events were stored, the key
            // holds their id already.)
            if let (Some(Idempotent { key, fingerprint }), ClusterError::NotStored(_)) = (key, &e) {
                cluster.keys().release(partition, key, fingerprint).await;
            }
            Err(unavailable(&e))
        }
    }
}

/// 422: the key was first used for another event; answering the first
/// event's id would silently drop this one.
fn key_reused() -> ApiError {
    ApiError::unprocessable(
        "this Idempotency-Key was first used with a different request (body, content type or routing); send a new event with a new key",
    )
}

/// 409: the first request with this key has not finished.
fn key_in_flight() -> ApiError {
    ApiError::conflict("a request with this Idempotency-Key is still being processed")
        .with_retry_after(Duration::from_secs(1))
}

/// 503 with `Retry-After` for an event Redis did not take: never accept
/// what cannot be stored. 504 when Redis did not say whether it did.
fn unavailable(e: &ClusterError) -> ApiError {
    if let ClusterError::OutcomeUnknown(_) = e {
        tracing::warn!(error = %e, "event outcome unknown: Redis stopped answering");
        return ApiError::outcome_unknown(format!("the event may or may not be stored: {e}"));
    }
    tracing::warn!(error = %e, "event refused: Redis is unavailable");
    ApiError::unavailable(format!("the event was not accepted: {e}"))
        .with_retry_after(Duration::from_secs(1))
}

/// Where a replay reads from: the embedded event log or the cluster's
/// stream.
#[derive(Debug, Clone)]
pub enum History {
    /// The embedded node's event log.
    Log(Arc<EventLog>),
    /// The cluster's shared stream.
    Stream(Arc<SharedStream>),
}

impl History {
    /// Whether every event after `after` is still held.
    pub async fn holds_after(&self, after: EventId) -> Result<bool, ApiError> {
        match self {
            Self::Log(l) => Ok(l.holds_after(after)),
            Self::Stream(c) => c
                .holds_after(after)
                .await
                .map_err(|e| ApiError::unavailable(e.to_string())),
        }
    }

    /// The next events after `after` up to `until`, and whether more remain.
    pub async fn page(
        &self,
        after: EventId,
        until: EventId,
    ) -> Result<(Vec<Arc<Published>>, bool), ApiError> {
        let (entries, more) = match self {
            Self::Log(l) => {
                let l = l.clone();
                tokio::task::spawn_blocking(move || l.range(after, until, HISTORY_PAGE_BYTES))
                    .await
                    .map_err(|e| ApiError::unavailable(e.to_string()))?
            }
            Self::Stream(c) => {
                let before = EventId::from_u64(until.as_u64() + 1);
                let (entries, _) = c
                    .range(after, before, HISTORY_PAGE_EVENTS)
                    .await
                    .map_err(|e| ApiError::unavailable(e.to_string()))?;
                let more = entries.len() >= HISTORY_PAGE_EVENTS;
                (entries, more)
            }
        };
        Ok((
            entries
                .into_iter()
                .map(|(id, draft)| Arc::new(Published::new(Event { id, draft })))
                .collect(),
            more,
        ))
    }
}
