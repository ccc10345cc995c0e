//! Ratatoskr: a Server-Sent Events broadcast gateway.
//!
//! Data flows one way: `http::ingest` decodes a request into an
//! [`event::EventDraft`], the [`hub::Hub`] gives it an id, keeps it for
//! replay and fans it out to matching subscribers, whose `http::sse` streams
//! write it. [`run`] wires the parts together and owns their lifecycle.

pub mod auth;
pub mod bus;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod error;
pub mod event;
pub mod eventlog;
pub mod forward;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod redis_target;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod stream;
pub mod sync;
pub mod telemetry;
pub mod validation;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::forward::metrics::ForwardMetrics;
use crate::forward::runtime::ForwardRuntime;
use crate::forward::ssrf::AddressPolicy;
use crate::forward::{
    BufferLimits, DeliveryContext, DeliverySettings, Destinations, Forwarding, InboxLimits,
};
use crate::http::AppState;
use crate::hub::{CloseReason, Hub, HubConfig, HubMetrics};
use crate::server::ServerLimits;
use crate::shutdown::Phase;
use crate::state::catalog::Catalog;
use crate::state::idempotency::IdempotencyCache;
use crate::state::registry::{Registry, RegistryLimits, RegistryMetrics};
use crate::state::store::{self, Store, StoredDisabled};
use crate::state::{accounts, registry};
use crate::telemetry::Metrics;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Registrations could not be loaded.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// The outbound HTTP client or the forwarding thread could not start.
    #[error("{0}")]
    Client(String),
    /// Cluster mode: Redis could not be reached at start.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// Cluster mode: `--redis-url` and its mode do not fit.
    #[error(transparent)]
    RedisTarget(#[from] redis_target::TargetError),
    /// A credential (JWT key, API keys file) could not be loaded.
    #[error(transparent)]
    Keys(#[from] auth::credentials::CredentialError),
    /// The event log could not be opened.
    #[error(transparent)]
    EventLog(#[from] eventlog::LogError),
    /// The TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] server::tls::TlsError),
}

/// How often expired registrations are swept and sampled gauges refreshed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Runs the gateway on `listener` until `shutdown` resolves, then stops in
/// order (readiness, listener, streams, drain). Returns whether the drain
/// finished within the grace period.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<bool, StartError> {
    let store = Arc::new(match config.redis_target().transpose()? {
        Some(target) => Store::open_redis(target)?,
        None => Store::open(config.store, &config.data_dir)?,
    });
    run_with_store(config, store, listener, shutdown).await
}

/// As [`run`], with the store already open (the binary opens it before
/// binding, so a damaged store never gets as far as "listening").
pub async fn run_with_store(
    config: Config,
    store: Arc<Store>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<bool, StartError> {
    let metrics = Arc::new(Metrics::new());
    let stored_disabled = metrics.register(StoredDisabled::register);
    let hub = Hub::new(
        HubConfig {
            replay_capacity: config.replay_capacity,
            replay_max_bytes: config.replay_max_bytes,
            replay_max_age: config.replay_max_age,
            subscriber_buffer: config.subscriber_buffer,
            subscriber_buffer_bytes: config.subscriber_buffer_bytes,
            max_subscribers: config.max_subscribers,
            shards: match config.hub_shards {
                0 => tokio::runtime::Handle::current().metrics().num_workers(),
                n => n,
            },
        },
        metrics.register(HubMetrics::register),
    );
    let catalog = Arc::new(Catalog::open(
        store.clone(),
        config.strict_event_types,
        &stored_disabled,
    )?);
    let accounts = Arc::new(accounts::Accounts::open(store.clone(), &stored_disabled)?);
    let forward_runtime =
        ForwardRuntime::start(config.forward_nice, registry::expression::EVAL_STACK)
            .map_err(|e| StartError::Client(e.to_string()))?;
    let delivery = DeliveryContext::new(
        DeliverySettings {
            buffer: BufferLimits {
                events: config.destination_buffer,
                bytes: config.destination_buffer_bytes,
            },
            max_outbound: config.max_outbound_connections,
            timeout: config.delivery_timeout,
            retries: config.delivery_retries,
            backoff: config.retry_backoff,
            max_backoff: config.retry_max_backoff,
            notice_interval: config.notice_interval,
        },
        Arc::new(AddressPolicy::new(config.allow_destination_nets.clone())),
        Arc::new(
            metrics
                .register(|r| ForwardMetrics::with_label_cap(r, config.metrics_max_destinations)),
        ),
        forward_runtime.handle().clone(),
    )
    .map_err(StartError::Client)?;
    let registry = Registry::open(
        store.clone(),
        metrics.register(|r| RegistryMetrics::register(r, stored_disabled.clone())),
        RegistryLimits {
            max_duration: config.registration_max_duration,
            max_registrations: config.max_registrations,
            max_bytes: config.max_registration_bytes,
            sqs_default_credentials: config.sqs_default_credentials,
        },
    )?;
    // A destination that answers 410 Gone turns its registrations off.
    // Weak: the registry holds the destinations, which hold this.
    let owner = Arc::downgrade(&registry);
    delivery.on_gone(Box::new(move |d, why| {
        let Some(owner) = owner.upgrade() else {
            return 0;
        };
        owner.disable_destination(&d, &why).unwrap_or_else(|e| {
            tracing::warn!(destination = %d.label(), error = %e, "registrations of a gone destination not disabled");
            0
        })
    }));
    // The registry matches; forwarding delivers. The destinations follow
    // the registry's snapshots, and the router asks the registry.
    let destinations = Destinations::new(delivery.clone(), config.redis_url.is_some());
    let live = destinations.clone();
    registry.on_change(move |snapshot| live.reconcile(snapshot.destinations()));
    let forwarding = Forwarding::start(
        registry.clone(),
        destinations,
        delivery.metrics_handle(),
        InboxLimits {
            events: FORWARD_INBOX,
            bytes: config.forward_inbox_bytes,
        },
        forward_runtime.handle(),
    );
    // In a cluster the reader publishes from the start; an embedded node
    // sets its taps once the event log is open (below), before serving.
    if config.redis_url.is_some() {
        hub.set_tap(forwarding.clone());
    }
    // Cluster mode: ids come from the shared stream, read by one reader
    // per node; there is no local id mark to keep.
    let cluster = match config.redis_target().transpose()? {
        Some(target) => {
            let c = cluster::Cluster::connect(
                cluster::ClusterConfig {
                    target,
                    stream_max_len: config.redis_stream_max_len,
                    ack_replicas: config.redis_ack_replicas,
                    max_age: config.replay_max_age,
                    idempotency_window: config.idempotency_window,
                    partitions: usize::from(config.redis_partitions),
                },
                &metrics,
            )
            .await?;
            tracing::info!(prefix = %config.redis_prefix, mode = config.redis_mode.name(), partitions = config.redis_partitions, "cluster member: events go through Redis");
            Some(c)
        }
        None => None,
    };
    let mut background = shutdown::Background::new();
    if let Some(c) = &cluster {
        background.adopt(
            "cluster reader",
            c.stream().start_reader(hub.clone()).await?,
        );
        // Each destination is forwarded by the node holding its lease.
        background.adopt(
            "cluster leases",
            c.start_leasing(forwarding.clone(), hub.clone()),
        );
        let address = listener
            .local_addr()
            .map_or_else(|_| config.listen.to_string(), |a| a.to_string());
        background.adopt("cluster members", c.start_announcing(address, hub.clone()));
        background.adopt(
            "cluster follower",
            c.start_following(cluster::changes::Followers {
                registry: registry.clone(),
                catalog: catalog.clone(),
                accounts: accounts.clone(),
            }),
        );
    }
    // The id high-water mark is the embedded mode's: in a cluster, ids are
    // the shared stream's.
    let mark = match &cluster {
        None => Some(state::id_mark::IdMark::open(store.clone(), &hub)?),
        Some(_) => None,
    };
    // After the id mark: a new log holds nothing up to the ids already
    // handed out.
    // The embedded node logs every event on disk (with the redb store:
    // `--store memory` keeps nothing); a cluster's log is the stream.
    let event_log = match (&config.redis_url, config.store) {
        (None, state::store::StoreKind::Redb) => {
            let log = eventlog::EventLog::open(
                eventlog::LogConfig {
                    dir: eventlog::dir_under(&config.data_dir),
                    max_bytes: config.event_log_max_bytes,
                    max_age: config.event_log_max_age,
                    sync_every: config.event_log_sync,
                },
                // A new log holds nothing from before this start.
                hub.last_id().max(event::EventId::from_u64(
                    event::EventId::floor_at(hub::unix_ms())
                        .as_u64()
                        .saturating_sub(1),
                )),
            )?;
            metrics.register(|r| log.register(r));
            Some(log)
        }
        _ => None,
    };
    match (&event_log, &cluster) {
        (Some(log), _) => hub.set_tap(Arc::new(hub::Taps(vec![log.clone(), forwarding.clone()]))),
        (None, None) => hub.set_tap(forwarding.clone()),
        // A cluster node's tap was set before its reader started.
        (None, Some(_)) => {}
    }
    if let Some(log) = &event_log {
        // The ring as it was, so that streams resume across the restart;
        // then every destination from its checkpoint, before serving.
        let (l, count, bytes) = (log.clone(), config.replay_capacity, config.replay_max_bytes);
        let tail = tokio::task::spawn_blocking(move || l.tail(count, bytes))
            .await
            .unwrap_or_default();
        hub.restore(
            tail.into_iter()
                .map(|(id, draft)| Arc::new(hub::Published::new(event::Event { id, draft })))
                .collect(),
        );
        let requeued = forward::resume::catch_up(log, &forwarding, hub.last_id()).await;
        if requeued > 0 {
            tracing::info!(
                events = requeued,
                "restart: undelivered events queued again for their destinations"
            );
        }
        background.spawn(
            "checkpoints",
            forward::resume::keep_checkpoints(
                log.clone(),
                forwarding.clone(),
                background.shutdown(),
            ),
        );
    }
    let rate_limits = metrics.register(|r| {
        http::rate::RateLimits::register(r, config.rate_limit_ingest, config.rate_limit_changes)
    });
    background.spawn(
        "sweeper",
        sweep(
            registry.clone(),
            hub.clone(),
            mark,
            store.clone(),
            cluster.clone(),
            rate_limits.clone(),
            background.shutdown(),
        ),
    );
    let limits = ServerLimits {
        max_connections: server::connection_cap(
            config.max_connections,
            config.max_outbound_connections,
        ),
        header_timeout: config.header_timeout,
        write_timeout: config.write_timeout,
        h2_idle_timeout: config.h2_idle_timeout,
        grace: config.shutdown_grace,
        inline_writes: config
            .inline_writes
            .enabled(tokio::runtime::Handle::current().metrics().num_workers()),
    };
    let credentials = Arc::new(auth::credentials::Credentials::load(config.credentials())?);
    metrics.register(|r| credentials.register(r));
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(server::tls::Tls::load(server::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        })?)),
        _ => None,
    };
    background.spawn(
        "SIGHUP reload",
        reload::on_hangup(
            reload::Reloadable {
                credentials: credentials.clone(),
                tls: tls.clone(),
            },
            background.shutdown(),
        ),
    );
    // The deployment mode, chosen once: every handler asks the bus.
    let bus = Arc::new(match &cluster {
        Some(c) => bus::Bus::Shared(c.clone()),
        None => bus::Bus::Local(bus::Local {
            hub: hub.clone(),
            dedup: IdempotencyCache::new(config.idempotency_window, config.idempotency_max_keys),
            log: event_log.clone(),
            registry: registry.clone(),
        }),
    });
    let ingest = ingest::Pipeline::new(
        bus.clone(),
        catalog.clone(),
        ingest::Limits {
            max_json_depth: config.max_json_depth,
            max_batch: config.max_batch,
            pacing_depth: config.subscriber_buffer / 2,
        },
    );
    let app = Arc::new(AppState {
        credentials,
        bus,
        ingest,
        rate_limits: rate_limits.clone(),
        streams_per_ip: metrics
            .register(|r| server::per_ip::StreamsPerIp::register(r, config.max_streams_per_ip)),
        config,
        hub: hub.clone(),
        metrics: metrics.clone(),
        registry,
        catalog,
        accounts,
        store,
        delivery,
        forwarding: forwarding.clone(),
        replays: Default::default(),
        readiness: Default::default(),
        started: Instant::now(),
    });
    let api = http::Api::new(app.clone());
    let stop_accepting = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listener,
        api,
        limits,
        metrics,
        stop_accepting.clone(),
        tls,
    ));
    app.readiness.set(Phase::Ready);
    tracing::info!("ready");

    shutdown.await;
    let stopping = tokio::time::Instant::now();
    tracing::info!("shutting down");
    app.readiness.set(Phase::ShuttingDown);
    stop_accepting.cancel();
    hub.close(CloseReason::Shutdown);
    let drained = server.await.unwrap_or(false);
    // No more events come in: deliver what is queued, within what is left
    // of the grace period (forwarding is best effort, but not silently so).
    let left = app.config.shutdown_grace.saturating_sub(stopping.elapsed());
    let abandoned = forwarding.drain(left).await;
    let stopped = background.stop(BACKGROUND_GRACE).await;
    if !stopped.panicked.is_empty() {
        tracing::error!(tasks = ?stopped.panicked, "background tasks had panicked");
    }
    if let Some(log) = &event_log {
        // Where each destination is, for the next start to go on from.
        forward::resume::save(log, &forwarding, &mut Default::default());
        log.close();
    }
    drop(forward_runtime);
    if abandoned > 0 {
        match &event_log {
            Some(_) => tracing::info!(abandoned, "stopped with undelivered forwarding events: the next start delivers them from the event log"),
            None => tracing::warn!(abandoned, "stopped with undelivered forwarding events"),
        }
    }
    tracing::info!(drained, "stopped");
    Ok(drained)
}

/// How long the background tasks (sweeper, SIGHUP) have to finish what
/// they are doing (a store write) once told to stop.
const BACKGROUND_GRACE: Duration = Duration::from_secs(2);

/// Events waiting between the hub and the forwarding router.
const FORWARD_INBOX: usize = 65_536;

async fn sweep(
    registry: Arc<Registry>,
    hub: Arc<Hub>,
    mark: Option<state::id_mark::IdMark>,
    store: Arc<Store>,
    cluster: Option<Arc<cluster::Cluster>>,
    rate_limits: Arc<http::rate::RateLimits>,
    stop: CancellationToken,
) {
    let mark = Arc::new(std::sync::Mutex::new(mark));
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        rate_limits.sweep();
        if let Some(c) = &cluster {
            c.read_clock().await;
            c.stream().trim().await;
            c.stream().measure_lag().await;
        }
        // These write the store: off the async workers.
        let (r, h, m, s) = (registry.clone(), hub.clone(), mark.clone(), store.clone());
        let swept = tokio::task::spawn_blocking(move || {
            // A store that failed a write reopens here, even when no
            // client writes, so that `/ready` recovers on its own.
            s.recover();
            r.sweep(chrono::Utc::now());
            let kept = crate::sync::lock(&m)
                .as_mut()
                .map_or(Ok(()), |m| m.keep_ahead(h.last_id()));
            match kept {
                // Already logged by the store when it faulted.
                Ok(()) | Err(store::StoreError::Unwritable { .. } | store::StoreError::Gone(_)) => {
                }
                Err(e) => {
                    tracing::error!(error = %e, "the event id high-water mark was not stored")
                }
            }
        })
        .await;
        if let Err(e) = swept {
            // The next tick tries again; a bug must not pass in silence.
            tracing::error!(error = %e, "the sweep panicked");
        }
    }
}
