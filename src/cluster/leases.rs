//! Sharing the destinations out between the nodes.
//!
//! Every node sees every event (its stream reader), so
//! each destination must be forwarded by exactly one node, or it would
//! get each event once per node. That node holds the destination's lease
//! (`<prefix>:lease:<digest>`, SET NX PX, renewed by compare-and-set every
//! [`LEASE_TTL`]` / 3`). Each node takes free leases up to its fair share
//! (destinations / live members, rounded up) and hands one over per round
//! while it holds more, so forwarding spreads over the nodes; when a node
//! dies, the others take its destinations within [`LEASE_TTL`].
//!
//! The owner writes, every [`CHECKPOINT_EVERY`], how
//! far each of its destinations is finished (`<prefix>:checkpoints`, one
//! field per destination). A node that takes a lease first replays, to
//! that destination, the stream's events between its checkpoint and the
//! moment it took over, then carries on live: nothing accepted is lost
//! while the stream still holds it (at least once across a failover; the
//! events the previous owner delivered after its last checkpoint go
//! again).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Cluster;
use crate::event::{Event, EventId};
use crate::forward::destination::Destination;
use crate::forward::Forwarding;
use crate::hub::{Hub, Published};

/// How long a forwarding lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(6);

/// How often the forwarder records its destinations' progress.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Frees a lease only for its holder.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// The destinations whose lease this node holds.
struct Leases {
    /// By checkpoint field.
    owned: HashMap<String, Lease>,
    /// When every lease was last renewed.
    renewed: Instant,
}

/// One destination's lease.
struct Lease {
    destination: Arc<Destination>,
    /// Whether the takeover's replay is done (checkpoints wait for it).
    caught_up: Arc<AtomicBool>,
    /// The last checkpoint written.
    written: Option<EventId>,
    /// Every partition read while this node forwards to it (a
    /// destination's devices are not tracked).
    _reading: Option<super::NeedGuard>,
}

/// Renews the lease only for its holder.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1
end
return 0";

impl Cluster {
    fn checkpoints_key(&self) -> String {
        self.link.key("checkpoints")
    }

    fn lease_key(&self, field: &str) -> String {
        self.link.key(&format!("lease:{field}"))
    }

    /// A destination's name in the checkpoints hash and in its lease key: a
    /// digest, so that no secret appears in Redis key space.
    fn checkpoint_field(d: &Destination) -> String {
        d.digest()
    }

    /// After taking `d`'s lease at `from`: replays to it the stream's
    /// events after its checkpoint and up to `from`; then marks it caught
    /// up (its checkpoints may be written from then on).
    async fn catch_up(
        &self,
        forwarding: &Forwarding,
        d: Arc<Destination>,
        field: String,
        from: EventId,
        done: &AtomicBool,
    ) {
        let since: Option<String> = redis::cmd("HGET")
            .arg(self.checkpoints_key())
            .arg(&field)
            .query_async(&mut self.link.commands())
            .await
            .unwrap_or_default();
        // No checkpoint: a destination no node has forwarded to yet. It
        // wants what came since its registrations last changed.
        let since = since.and_then(|s| s.parse::<EventId>().ok()).or_else(|| {
            let at = forwarding.wanted_since(&d)?;
            let ms = u64::try_from(at.timestamp_millis()).ok()?;
            Some(EventId::from_u64(
                EventId::floor_at(ms).as_u64().saturating_sub(1),
            ))
        });
        if let Some(since) = since {
            if since < from {
                let before = EventId::from_u64(from.as_u64() + 1);
                match self.stream.range(since, before, 1_000_000).await {
                    Ok((entries, complete)) => {
                        let events: Vec<Arc<Published>> = entries
                            .into_iter()
                            .map(|(id, draft)| Arc::new(Published::new(Event { id, draft })))
                            .collect();
                        let sent = forwarding.replay_to(d.clone(), events).await;
                        tracing::info!(destination = %d.label(), sent, "takeover: replayed events after the last checkpoint");
                        if !complete {
                            tracing::warn!(destination = %d.label(), "takeover: the stream no longer holds every event after the checkpoint; some were not forwarded");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(destination = %d.label(), error = %e, "takeover: replay failed; events after the checkpoint were not forwarded")
                    }
                }
            }
        }
        forwarding.destinations().caught_up(&d);
        done.store(true, Ordering::Release);
    }

    /// Records how far each owned, caught-up destination is finished (only
    /// forward: a checkpoint never moves back).
    async fn write_checkpoints(&self, forwarding: &Forwarding, leases: &mut Leases) {
        let mut pipe = redis::pipe();
        let mut any = false;
        for (field, lease) in &mut leases.owned {
            if !lease.caught_up.load(Ordering::Acquire) {
                continue;
            }
            let Some(id) = forwarding.checkpoint(&lease.destination) else {
                continue;
            };
            if lease.written >= Some(id) {
                continue;
            }
            pipe.cmd("HSET")
                .arg(self.checkpoints_key())
                .arg(field)
                .arg(id.to_string())
                .ignore();
            lease.written = Some(id);
            any = true;
        }
        if any {
            let _: redis::RedisResult<()> = pipe.query_async(&mut self.link.commands()).await;
        }
    }

    /// Takes `d`'s lease if it is free; then forwards to it live from this
    /// instant, and replays what came after its checkpoint.
    async fn try_take(
        self: &Arc<Self>,
        d: Arc<Destination>,
        field: String,
        forwarding: &Arc<Forwarding>,
        hub: &Hub,
        leases: &mut Leases,
    ) -> redis::RedisResult<()> {
        // Every partition read before the lease is taken: a partition
        // joined later would start after `from` (below), and what came
        // between would reach neither the replay nor the live route.
        let Ok(reading) = self.stream.read_for(&[]).await else {
            return Ok(()); // Redis does not answer: the next round
        };
        let took: Option<String> = redis::cmd("SET")
            .arg(self.lease_key(&field))
            .arg(&self.node_id)
            .arg("NX")
            .arg("PX")
            .arg(LEASE_TTL.as_millis() as u64)
            .query_async(&mut self.link.commands())
            .await?;
        if took.is_none() {
            return Ok(());
        }
        // Live from exactly here (no event is published meanwhile); older
        // events come from the stream, after the checkpoint.
        let from = hub.at_last_id(|last| {
            forwarding.destinations().take(&d, last);
            last
        });
        self.metrics.lease_takeovers.inc();
        tracing::info!(node = %self.node_id, destination = %d.label(), "this node now forwards to this destination");
        let caught_up = Arc::new(AtomicBool::new(false));
        leases.owned.insert(
            field.clone(),
            Lease {
                destination: d.clone(),
                caught_up: caught_up.clone(),
                written: None,
                _reading: reading,
            },
        );
        let (me, f) = (self.clone(), forwarding.clone());
        tokio::spawn(async move { me.catch_up(&f, d, field, from, &caught_up).await });
        Ok(())
    }

    /// Stops forwarding to an owned destination (its final checkpoint
    /// first, when it is handed over), and frees its lease if still ours.
    async fn give_up(
        &self,
        forwarding: &Forwarding,
        leases: &mut Leases,
        field: &str,
        hand_over: bool,
    ) {
        if hand_over {
            self.write_checkpoints(forwarding, leases).await;
        }
        let Some(lease) = leases.owned.remove(field) else {
            return;
        };
        forwarding.destinations().release(&lease.destination);
        if hand_over {
            let _: redis::RedisResult<i64> = redis::Script::new(RELEASE)
                .key(self.lease_key(field))
                .arg(&self.node_id)
                .invoke_async(&mut self.link.commands())
                .await;
        }
    }

    /// One round of leasing: renew what this node holds, give up what is
    /// gone or more than its share, and take free leases up to its share.
    async fn lease_round(
        self: &Arc<Self>,
        forwarding: &Arc<Forwarding>,
        hub: &Hub,
        leases: &mut Leases,
    ) -> redis::RedisResult<()> {
        let live: HashMap<String, Arc<Destination>> = forwarding
            .destinations()
            .live()
            .into_iter()
            .map(|d| (Self::checkpoint_field(&d), d))
            .collect();
        // Destinations no registration names any more.
        let gone: Vec<String> = leases
            .owned
            .keys()
            .filter(|f| !live.contains_key(*f))
            .cloned()
            .collect();
        for field in gone {
            self.give_up(forwarding, leases, &field, true).await;
            // Its progress means nothing now: a destination named again
            // later starts from when it is wanted again, not from here.
            let _: redis::RedisResult<i64> = redis::cmd("HDEL")
                .arg(self.checkpoints_key())
                .arg(&field)
                .query_async(&mut self.link.commands())
                .await;
        }
        // Renew, in one pipeline; a lease that is no longer ours is lost.
        let fields: Vec<String> = leases.owned.keys().cloned().collect();
        if !fields.is_empty() {
            let mut pipe = redis::pipe();
            for f in &fields {
                pipe.cmd("EVAL")
                    .arg(RENEW)
                    .arg(1)
                    .arg(self.lease_key(f))
                    .arg(&self.node_id)
                    .arg(LEASE_TTL.as_millis() as u64);
            }
            let renewed: Vec<i64> = pipe.query_async(&mut self.link.commands()).await?;
            for (f, ok) in fields.iter().zip(renewed) {
                if ok != 1 {
                    tracing::warn!(node = %self.node_id, "a destination's lease was lost to another node");
                    self.give_up(forwarding, leases, f, false).await;
                }
            }
        }
        leases.renewed = Instant::now();
        // A fair share: every member takes at most its part, so that
        // forwarding spreads over the nodes (and a node that joins gets
        // work as the others hand theirs over, one per round).
        let members = self.members().await.map(|m| m.len()).unwrap_or(1).max(1);
        let share = live.len().div_ceil(members);
        if leases.owned.len() > share {
            if let Some(field) = leases.owned.keys().next().cloned() {
                self.give_up(forwarding, leases, &field, true).await;
            }
        }
        let mut free: Vec<(&String, &Arc<Destination>)> = live
            .iter()
            .filter(|(f, _)| !leases.owned.contains_key(*f))
            .collect();
        fastrand::shuffle(&mut free);
        for (field, d) in free {
            if leases.owned.len() >= share {
                break;
            }
            self.try_take(d.clone(), field.clone(), forwarding, hub, leases)
                .await?;
        }
        Ok(())
    }

    /// Competes for destinations' leases until the process ends: this node
    /// forwards exactly to the destinations whose lease it holds.
    pub fn start_leasing(
        self: &Arc<Self>,
        forwarding: Arc<Forwarding>,
        hub: Arc<Hub>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut leases = Leases {
                owned: HashMap::new(),
                renewed: Instant::now(),
            };
            let mut next_round = Instant::now();
            let mut destinations_seen = 0;
            loop {
                me.write_checkpoints(&forwarding, &mut leases).await;
                // A new (or removed) destination starts a round at once, so
                // that a new one is taken within a checkpoint interval.
                let destinations_now = forwarding.destinations().len();
                if Instant::now() < next_round && destinations_now == destinations_seen {
                    tokio::time::sleep(CHECKPOINT_EVERY).await;
                    continue;
                }
                destinations_seen = destinations_now;
                next_round = Instant::now() + LEASE_TTL / 3;
                if me
                    .lease_round(&forwarding, &hub, &mut leases)
                    .await
                    .is_err()
                    && !leases.owned.is_empty()
                    && leases.renewed.elapsed() >= LEASE_TTL / 2
                {
                    // Unreachable Redis: forward only while no lease can
                    // yet have passed to another node.
                    tracing::warn!("forwarding paused: the leases cannot be renewed");
                    let fields: Vec<String> = leases.owned.keys().cloned().collect();
                    for f in fields {
                        me.give_up(&forwarding, &mut leases, &f, false).await;
                    }
                }
                me.metrics
                    .forwarding
                    .set(i64::from(!leases.owned.is_empty()));
                me.metrics.destinations_owned.set(leases.owned.len() as i64);
            }
        })
    }
}
