//! Configuration: one validated [`Config`], from flags or `RATATOSKR_*`
//! environment variables. Every field's doc comment is its `--help` text,
//! so `ratatoskr --help` is the reference.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::hub::LagPolicy;
use crate::redis_target::{RedisMode, RedisTarget, TargetError};
use crate::state::store::StoreKind;
pub use crate::telemetry::LogFormat;

/// Ratatoskr: a Server-Sent Events broadcast gateway.
#[derive(Debug, Clone, Parser)]
#[command(name = "ratatoskr", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on (HTTP/1.1 and h2c).
    #[arg(long, env = "RATATOSKR_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Log format.
    #[arg(long, env = "RATATOSKR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info,ratatoskr=debug`).
    #[arg(long, env = "RATATOSKR_LOG", default_value = "info")]
    pub log: String,

    /// Largest accepted request body: bytes, or with a suffix K, KB, KiB,
    /// M, MB or MiB (all powers of 1024).
    #[arg(long, env = "RATATOSKR_MAX_BODY", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_body: usize,

    /// Deepest nesting of arrays and objects in a JSON payload or a WRP
    /// message (msgpack or JSON); deeper bodies get a 400.
    #[arg(long, env = "RATATOSKR_MAX_JSON_DEPTH", default_value_t = crate::event::json::DEFAULT_MAX_DEPTH)]
    pub max_json_depth: usize,

    /// Most lines in one application/x-ndjson batch.
    #[arg(long, env = "RATATOSKR_MAX_BATCH", default_value_t = 10_000)]
    pub max_batch: usize,

    /// Events kept for Last-Event-ID resume (0 disables replay).
    #[arg(long, env = "RATATOSKR_REPLAY_CAPACITY", default_value_t = 10_000)]
    pub replay_capacity: usize,

    /// Most bytes the events kept for resume may hold (their payloads
    /// and frames); the oldest go first when a new one does not fit.
    #[arg(long, env = "RATATOSKR_REPLAY_MAX_BYTES", default_value = "256MiB", value_parser = parse_bytes)]
    pub replay_max_bytes: usize,

    /// Cluster mode: most bytes of the shared stream's entries one resume
    /// reads, where this node's ring does not cover it; past them the
    /// client gets `gap`. Read page by page (at most 1 MiB each), so a
    /// resume never holds more than one page.
    #[arg(long, env = "RATATOSKR_CLUSTER_REPLAY_MAX_BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub cluster_replay_max_bytes: usize,

    /// Oldest event kept for resume (e.g. `1h`, `90s`).
    #[arg(long, env = "RATATOSKR_REPLAY_MAX_AGE", default_value = "1h", value_parser = parse_duration, allow_hyphen_values = true)]
    pub replay_max_age: Duration,

    /// Comment sent on an idle SSE stream this often, to keep proxies from closing it.
    #[arg(long, env = "RATATOSKR_HEARTBEAT", default_value = "15s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub heartbeat: Duration,

    /// Reconnection delay advertised to SSE clients with `retry:`.
    #[arg(long, env = "RATATOSKR_SSE_RETRY", default_value = "3s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub sse_retry: Duration,

    /// Events queued per subscriber before it is lagging and starts losing events.
    #[arg(long, env = "RATATOSKR_SUBSCRIBER_BUFFER", default_value_t = 4096)]
    pub subscriber_buffer: usize,

    /// Bytes queued per subscriber (events' payloads and frames) before it
    /// is lagging, as with `--subscriber-buffer`. One event is always
    /// queued, whatever its size.
    #[arg(long, env = "RATATOSKR_SUBSCRIBER_BUFFER_BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub subscriber_buffer_bytes: usize,

    /// What a lagging subscriber's stream does after its `lagged` notice.
    #[arg(long, env = "RATATOSKR_LAG_POLICY", value_enum, default_value_t = LagPolicy::Disconnect)]
    pub lag_policy: LagPolicy,

    /// Most concurrent SSE subscribers.
    #[arg(long, env = "RATATOSKR_MAX_SUBSCRIBERS", default_value_t = 50_000)]
    pub max_subscribers: usize,

    /// Subscriber shards of the hub: publishes fan out on this many at
    /// once, each shard in id order (0: one per worker thread).
    #[arg(long, env = "RATATOSKR_HUB_SHARDS", default_value_t = 0)]
    pub hub_shards: usize,

    /// Ingest requests per second per client address, and per credential
    /// (a burst of one second's worth); over it: 429 with Retry-After.
    /// 0: no limit (the default: behind a proxy or NAT clients share an
    /// address).
    #[arg(long, env = "RATATOSKR_RATE_LIMIT_INGEST", default_value_t = 0)]
    pub rate_limit_ingest: u32,

    /// Registration, event-type and hook changes per second per client
    /// address, and per credential; over it: 429 with Retry-After. 0: no
    /// limit.
    #[arg(long, env = "RATATOSKR_RATE_LIMIT_CHANGES", default_value_t = 0)]
    pub rate_limit_changes: u32,

    /// Most concurrent SSE streams from one client address; further ones
    /// get 429. 0: no cap (the default: behind a proxy or a NAT many
    /// clients share one address). Also the most HTTP/2 connections from
    /// one address, counted apart from the streams (an idle h2 connection
    /// holds a connection slot as a stream does); further ones are closed
    /// at once.
    #[arg(long, env = "RATATOSKR_MAX_STREAMS_PER_IP", default_value_t = 0)]
    pub max_streams_per_ip: usize,

    /// Most concurrent TCP connections (further ones are closed at once).
    #[arg(long, env = "RATATOSKR_MAX_CONNECTIONS", default_value_t = 60_000)]
    pub max_connections: usize,

    /// Time a client has to send its request headers.
    #[arg(long, env = "RATATOSKR_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub header_timeout: Duration,

    /// Time a client has to send a request body.
    #[arg(long, env = "RATATOSKR_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub body_timeout: Duration,

    /// A connection that accepts no bytes for this long is closed (slow
    /// readers); an HTTP/2 stream whose response chunk waits this long for
    /// the client's flow-control window is reset (its socket may still
    /// read, and answer PINGs).
    #[arg(long, env = "RATATOSKR_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub write_timeout: Duration,

    /// An HTTP/2 connection with no stream open for this long is closed
    /// (GOAWAY). hyper's keep-alive PINGs only check that the peer
    /// answers, so without it an idle h2 connection holds a connection
    /// slot forever (HTTP/1.1 gets `--header-timeout` between requests).
    #[arg(long, env = "RATATOSKR_H2_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub h2_idle_timeout: Duration,

    /// Whether a publish writes an event straight to an idle HTTP/1.x
    /// stream's socket (when its send buffer has room and nothing is
    /// queued), instead of waking the stream's task to write it. `auto`: on
    /// with one worker thread, where it saves the wake-up and poll of a task
    /// per delivery; with more, the tasks spread the writes over the cores.
    #[arg(long, env = "RATATOSKR_INLINE_WRITES", value_enum, default_value_t = InlineWrites::Auto)]
    pub inline_writes: InlineWrites,

    /// Window in which a repeated Idempotency-Key returns the first event's id.
    #[arg(long, env = "RATATOSKR_IDEMPOTENCY_WINDOW", default_value = "10m", value_parser = parse_duration, allow_hyphen_values = true)]
    pub idempotency_window: Duration,

    /// Most Idempotency-Keys remembered (the oldest are forgotten first).
    #[arg(
        long,
        env = "RATATOSKR_IDEMPOTENCY_MAX_KEYS",
        default_value_t = 100_000
    )]
    pub idempotency_max_keys: usize,

    /// Origins allowed to read `GET /events` cross-origin (`*` for any), comma-separated.
    #[arg(
        long,
        env = "RATATOSKR_CORS_ORIGINS",
        default_value = "*",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Time given to open streams and requests to finish on shutdown.
    #[arg(long, env = "RATATOSKR_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub shutdown_grace: Duration,

    /// Where registrations and event types are kept.
    #[arg(long, env = "RATATOSKR_STORE", value_enum, default_value_t = StoreKind::Redb)]
    pub store: StoreKind,

    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "RATATOSKR_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Most bytes of events the embedded event log keeps on disk (under
    /// `--data-dir`/events); past it the oldest go. Not used with
    /// `--store memory` (no log: forwarding and resume are in memory) or
    /// in a cluster (the Redis stream is the log).
    #[arg(long, env = "RATATOSKR_EVENT_LOG_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub event_log_max_bytes: usize,

    /// Oldest event the embedded event log keeps.
    #[arg(long, env = "RATATOSKR_EVENT_LOG_MAX_AGE", default_value = "1h", value_parser = parse_duration, allow_hyphen_values = true)]
    pub event_log_max_age: Duration,

    /// Time between two fsyncs of the event log: what a power loss (not a
    /// crash of the process) can cost. Each event is written to the OS
    /// before its POST is answered.
    #[arg(long, env = "RATATOSKR_EVENT_LOG_SYNC", default_value = "100ms", value_parser = parse_duration, allow_hyphen_values = true)]
    pub event_log_sync: Duration,

    /// Longest registration a consumer may ask for (at most 1h).
    #[arg(long, env = "RATATOSKR_REGISTRATION_MAX_DURATION", default_value = "1h", value_parser = parse_duration, allow_hyphen_values = true)]
    pub registration_max_duration: Duration,

    /// Most live registrations.
    #[arg(long, env = "RATATOSKR_MAX_REGISTRATIONS", default_value_t = 100_000)]
    pub max_registrations: usize,

    /// Most bytes all registrations may keep: their stored documents and
    /// compiled patterns (a regex counts what it compiled to). Past it a
    /// new or larger registration gets 422. The default holds the count cap
    /// of ordinary registrations (a few KiB each) and bounds the RAM of any.
    #[arg(long, env = "RATATOSKR_MAX_REGISTRATION_BYTES", default_value_t = 1 << 30)]
    pub max_registration_bytes: usize,

    /// Events queued per destination; further events are dropped and the destination notified.
    #[arg(long, env = "RATATOSKR_DESTINATION_BUFFER", default_value_t = 10_000)]
    pub destination_buffer: usize,

    /// Destinations with metric series of their own; past this many, a
    /// destination's counters go to `destination="other"` (consumers choose
    /// destinations: the series must not grow without bound).
    #[arg(long, env = "RATATOSKR_METRICS_MAX_DESTINATIONS", default_value_t = crate::forward::metrics::DEFAULT_LABEL_CAP)]
    pub metrics_max_destinations: usize,

    /// Bytes queued per destination (events' payloads and frames); an
    /// event that does not fit is dropped as on a full buffer. One event
    /// is always taken into an empty buffer, whatever its size.
    #[arg(long, env = "RATATOSKR_DESTINATION_BUFFER_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub destination_buffer_bytes: usize,

    /// Bytes waiting between the hub and the forwarding router (shared by
    /// every destination); past it, events are not forwarded and
    /// `ratatoskr_forward_inbox_dropped_total` counts them.
    #[arg(long, env = "RATATOSKR_FORWARD_INBOX_BYTES", default_value = "256MiB", value_parser = parse_bytes)]
    pub forward_inbox_bytes: usize,

    /// No longer used: a destination gets one delivery at a time, so that
    /// it sees its events in id order. Accepted so that old settings still
    /// start; a value other than 1 is warned about.
    #[arg(
        long,
        env = "RATATOSKR_DESTINATION_CONCURRENCY",
        default_value_t = 1,
        hide = true
    )]
    pub destination_concurrency: usize,

    /// Outbound connections (webhook and SQS deliveries and drop notices
    /// in flight) over every destination together; past it a delivery
    /// waits for one to end (never dropped for it). Destinations are as
    /// many as registrations, so without this bound slow receivers could
    /// fill the descriptor table and lock clients out. The connection cap
    /// keeps this many descriptors back, beside its fixed reserve.
    #[arg(long, env = "RATATOSKR_MAX_OUTBOUND_CONNECTIONS", default_value_t = crate::forward::DEFAULT_MAX_OUTBOUND)]
    pub max_outbound_connections: usize,

    /// Time one delivery attempt may take.
    #[arg(long, env = "RATATOSKR_DELIVERY_TIMEOUT", default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub delivery_timeout: Duration,

    /// Most retries of one event before it is given up on (counted as
    /// failed). Unset (the default): a retryable failure (5xx, 408, 429,
    /// timeout, connection error) is retried until it succeeds or the
    /// registration ends; other 4xx are never retried.
    #[arg(long, env = "RATATOSKR_DELIVERY_RETRIES")]
    pub delivery_retries: Option<u32>,

    /// First retry delay; doubled each retry up to --retry-max-backoff, with full jitter.
    #[arg(long, env = "RATATOSKR_RETRY_BACKOFF", default_value = "200ms", value_parser = parse_duration, allow_hyphen_values = true)]
    pub retry_backoff: Duration,

    /// Longest delay between two attempts at one delivery (a receiver's
    /// `Retry-After` may ask for longer, and gets it).
    #[arg(long, env = "RATATOSKR_RETRY_MAX_BACKOFF", default_value = "60s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub retry_max_backoff: Duration,

    /// No longer used: a failing destination's retries back off up to
    /// --retry-max-backoff instead of a circuit. Accepted so that old
    /// settings still start.
    #[arg(long, env = "RATATOSKR_CIRCUIT_FAILURES", hide = true)]
    pub circuit_failures: Option<u32>,

    /// No longer used (see --circuit-failures).
    #[arg(long, env = "RATATOSKR_CIRCUIT_PAUSE", value_parser = parse_duration, allow_hyphen_values = true, hide = true)]
    pub circuit_pause: Option<Duration>,

    /// Least time between two drop notices to one destination.
    #[arg(long, env = "RATATOSKR_NOTICE_INTERVAL", default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub notice_interval: Duration,

    /// Networks destinations may reach even though they are loopback, private
    /// or link-local (comma-separated CIDRs, e.g. `127.0.0.1/32`). Empty: none.
    #[arg(long, env = "RATATOSKR_ALLOW_DESTINATION_NETS", value_delimiter = ',')]
    pub allow_destination_nets: Vec<ipnet::IpNet>,

    /// Let SQS registrations without credentials use the gateway's own AWS
    /// identity (the default credential chain). Off: they must bring keys,
    /// so no consumer can send with the operator's permissions.
    #[arg(long, env = "RATATOSKR_SQS_DEFAULT_CREDENTIALS")]
    pub sqs_default_credentials: bool,

    /// CPU niceness (0-19) of the forwarding thread: forwarding gets the CPU
    /// the SSE fan-out leaves. 0 gives both the same priority.
    #[arg(long, env = "RATATOSKR_FORWARD_NICE", default_value_t = 19, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub forward_nice: i32,

    /// Join a cluster of stateless nodes sharing this Redis
    /// (`redis://[user:pass@]host:port[/db]`, `rediss://` for TLS, or
    /// `redis+unix:///path/to/redis.sock[?db=N]` for a Unix socket).
    /// Unset: one embedded node (redb, no external service).
    /// In `--redis-mode cluster`, one or more of the cluster's nodes,
    /// comma-separated (`redis://10.0.0.1:7001,redis://10.0.0.2:7002`); in
    /// `sentinel`, the sentinels.
    #[arg(long, env = "RATATOSKR_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// How that Redis is deployed: `single` (one primary), `cluster` (a
    /// Redis Cluster: every key of the gateway is hash-tagged) or
    /// `sentinel` (the primary the sentinels name, followed through
    /// failovers).
    #[arg(long, env = "RATATOSKR_REDIS_MODE", value_enum, default_value_t = RedisMode::Single)]
    pub redis_mode: RedisMode,

    /// In `--redis-mode sentinel`: the name the sentinels monitor the
    /// primary under (`sentinel monitor <name> …`).
    #[arg(long, env = "RATATOSKR_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// In `--redis-mode sentinel`: the sentinels' own password, if they
    /// require one (the primary's is the one in `--redis-url`).
    #[arg(
        long,
        env = "RATATOSKR_REDIS_SENTINEL_PASSWORD",
        hide_env_values = true
    )]
    pub redis_sentinel_password: Option<String>,

    /// Prefix of every Redis key, so that several clusters can share one Redis.
    #[arg(long, env = "RATATOSKR_REDIS_PREFIX", default_value = "ratatoskr")]
    pub redis_prefix: String,

    /// Most events the cluster's Redis stream keeps (approximately), for
    /// resumes on any node.
    #[arg(
        long,
        env = "RATATOSKR_REDIS_STREAM_MAX_LEN",
        default_value_t = 100_000
    )]
    pub redis_stream_max_len: usize,

    /// How many Redis streams the events are split over (1 to 16), by a
    /// hash of their device: order is kept per device, and a Redis
    /// Cluster spreads the streams over its primaries. Every node of a
    /// cluster must give the same number; changing it starts new streams
    /// (resumes from before get `gap`).
    #[arg(long, env = "RATATOSKR_REDIS_PARTITIONS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub redis_partitions: u16,

    /// Replicas that must hold each event before it is answered 202
    /// (Redis's WAIT, within the request's time). 0: the primary's write
    /// is enough, and a failover may lose the last events acknowledged;
    /// give 1 when the primaries have replicas.
    #[arg(long, env = "RATATOSKR_REDIS_ACK_REPLICAS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub redis_ack_replicas: u32,

    /// Require this bearer token (16+ characters) on the API, the stream and
    /// the hook endpoints. Unset: open (for a trusted network only).
    #[arg(long, env = "RATATOSKR_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<crate::auth::secret::Secret>,

    /// HS256 secret (16+ characters) for JSON Web Tokens; turns auth on.
    #[arg(long, env = "RATATOSKR_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<crate::auth::secret::Secret>,

    /// A PEM file with an RSA, EC or Ed25519 public key for JSON Web
    /// Tokens (RS*/PS*, ES*, EdDSA); turns auth on.
    #[arg(long, env = "RATATOSKR_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// A JWKS file (`{"keys": [...]}`) for JSON Web Tokens, keys chosen by
    /// `kid`; turns auth on.
    #[arg(long, env = "RATATOSKR_JWKS_FILE")]
    pub jwks_file: Option<std::path::PathBuf>,

    /// Audiences a token's `aud` must name one of (comma-separated);
    /// unset: `aud` is not checked.
    #[arg(long, env = "RATATOSKR_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,

    /// Issuers a token's `iss` must be one of (comma-separated); unset:
    /// `iss` is not checked.
    #[arg(long, env = "RATATOSKR_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,

    /// Clock skew allowed on a token's `exp` and `nbf`.
    #[arg(long, env = "RATATOSKR_JWT_LEEWAY", default_value = "60s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub jwt_leeway: Duration,

    /// A JSON file of API keys, stored as SHA-256 digests, each with the
    /// devices and event types it may publish (see docs/access.md); turns auth
    /// on. Reloaded on SIGHUP.
    #[arg(long, env = "RATATOSKR_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,

    /// PEM certificate chain for TLS (with `--tls-key`); HTTP/2 is offered
    /// by ALPN. Reloaded on SIGHUP.
    #[arg(long, env = "RATATOSKR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "RATATOSKR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Refuse events whose type has no definition in /api/event-types.
    #[arg(long, env = "RATATOSKR_STRICT_EVENT_TYPES")]
    pub strict_event_types: bool,
}

impl Config {
    /// The shared Redis, in cluster mode (`--redis-url` given).
    pub fn redis_target(&self) -> Option<Result<RedisTarget, TargetError>> {
        self.redis_url.as_deref().map(|urls| {
            RedisTarget::new(
                self.redis_mode,
                urls,
                self.redis_sentinel_master.as_deref(),
                self.redis_sentinel_password.as_deref(),
                &self.redis_prefix,
            )
        })
    }

    /// Every credential's settings.
    pub fn credentials(&self) -> crate::auth::credentials::CredentialSettings {
        crate::auth::credentials::CredentialSettings {
            api_token: self.api_token.clone(),
            jwt: self.jwt(),
            api_keys_file: self.api_keys_file.clone(),
        }
    }

    /// The JSON Web Token settings.
    pub fn jwt(&self) -> crate::auth::jwt::JwtSettings {
        crate::auth::jwt::JwtSettings {
            secret: self.jwt_secret.clone(),
            public_key: self.jwt_public_key.clone(),
            jwks: self.jwks_file.clone(),
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
            leeway_secs: self.jwt_leeway.as_secs(),
        }
    }
}

/// When a publish writes to idle streams' sockets itself (`--inline-writes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InlineWrites {
    /// With one worker thread only.
    Auto,
    /// Always.
    On,
    /// Never: each stream's task writes its events.
    Off,
}

impl InlineWrites {
    /// Whether inline writes are on, on a runtime with `workers` threads.
    pub fn enabled(self, workers: usize) -> bool {
        match self {
            Self::Auto => workers <= 1,
            Self::On => true,
            Self::Off => false,
        }
    }
}

/// The hard ceiling on a registration's duration, as in xmidt Mimisbrunnr.
pub const MAX_REGISTRATION_DURATION: Duration = Duration::from_secs(3600);

/// A configuration that parsed but makes no sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Parses flags (and the environment). Call [`Config::validate`] next.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args)
    }

    /// The defaults, listening on `listen` (for tests and embedding). The
    /// process environment is not read: `RATATOSKR_*` variables set for a
    /// deployment must not leak into an embedded or test configuration.
    pub fn with_listen(listen: SocketAddr) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let command = Self::command().mut_args(|a| a.env(clap::builder::Resettable::Reset));
        // The defaults always parse: there is nothing else to parse.
        let matches = command.get_matches_from(["ratatoskr"]);
        let mut config = Self::from_arg_matches(&matches).expect("the defaults parse");
        config.listen = listen;
        config
    }

    /// Checks values that parse but would break the gateway.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: &str| Err(ConfigError(m.to_owned()));
        if self.redis_url.is_none() && self.redis_mode != RedisMode::Single {
            return Err(ConfigError(format!(
                "--redis-mode {} needs --redis-url",
                self.redis_mode.name()
            )));
        }
        if let Err(e) = self.redis_target().transpose() {
            return Err(ConfigError(e.to_string()));
        }
        if self.redis_prefix.is_empty()
            || self.redis_prefix.len() > 64
            || self
                .redis_prefix
                .contains(|c: char| c.is_whitespace() || c.is_control())
        {
            return err("--redis-prefix must be 1 to 64 characters, with no spaces");
        }
        if self.redis_stream_max_len < 100 {
            return err("--redis-stream-max-len must be at least 100");
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body) {
            return err("--max-body must be between 1KiB and 64MiB");
        }
        if !(1..=128).contains(&self.max_json_depth) {
            return err("--max-json-depth must be between 1 and 128");
        }
        if self.max_batch == 0 {
            return err("--max-batch must be at least 1");
        }
        if self.replay_capacity > 1_000_000 {
            return err("--replay-capacity must be at most 1000000");
        }
        if self.heartbeat < Duration::from_secs(1) {
            return err("--heartbeat must be at least 1s");
        }
        if self.subscriber_buffer == 0 || self.subscriber_buffer > 1_000_000 {
            return err("--subscriber-buffer must be between 1 and 1000000");
        }
        if self.hub_shards > 256 {
            return err("--hub-shards must be at most 256");
        }
        if self.max_subscribers == 0 || self.max_connections == 0 {
            return err("--max-subscribers and --max-connections must be at least 1");
        }
        for (name, d) in [
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--write-timeout", self.write_timeout),
            ("--h2-idle-timeout", self.h2_idle_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError(format!("{name} must be more than 0")));
            }
        }
        if self.registration_max_duration.is_zero()
            || self.registration_max_duration > MAX_REGISTRATION_DURATION
        {
            return err("--registration-max-duration must be more than 0 and at most 1h");
        }
        if self.destination_buffer == 0 || self.destination_buffer > 1_000_000 {
            return err("--destination-buffer must be between 1 and 1000000");
        }
        if self.max_outbound_connections == 0 || self.max_outbound_connections > 100_000 {
            return err("--max-outbound-connections must be between 1 and 100000");
        }
        if self.event_log_sync.is_zero() || self.event_log_max_age.is_zero() {
            return err("--event-log-sync and --event-log-max-age must be more than 0");
        }
        if self.delivery_timeout.is_zero() {
            return err("--delivery-timeout must be more than 0");
        }
        if self.retry_backoff.is_zero() || self.retry_max_backoff < self.retry_backoff {
            return err("--retry-backoff must be more than 0 and --retry-max-backoff at least --retry-backoff");
        }
        if self.cors_origins.is_empty()
            || self
                .cors_origins
                .iter()
                .any(|o| o != "*" && http::HeaderValue::from_str(o).is_err())
        {
            return err("--cors-origins must be `*` or a comma-separated list of origins");
        }
        Ok(())
    }
}

/// Parses a duration such as `500ms`, `15s`, `2m`, `1h` or `1m30s`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!(
            "{s:?} is negative: give a duration such as 500ms, 15s, 2m or 1h"
        ));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("{s:?} is not a duration ({e}): give a number with a unit, such as 500ms, 15s, 2m or 1h")
    })
}

/// Says which value, from which flag or environment variable, was
/// refused and why (clap names the flag even when the value came from
/// the variable). `None` for errors that are not about one value.
pub fn explain_error(e: &clap::Error, args: &[std::ffi::OsString]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    if !matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let ContextValue::String(arg) = e.get(ContextKind::InvalidArg)? else {
        return None;
    };
    let flag = arg.split([' ', '=']).next()?.to_owned();
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => String::new(),
    };
    let reason = std::error::Error::source(e)
        .map(ToString::to_string)
        .or_else(|| match e.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(v)) => Some(format!("accepted values: {}", v.join(", "))),
            _ => None,
        })
        .unwrap_or_else(|| "not accepted".into());
    let long = flag.trim_start_matches('-');
    let command = Config::command();
    let env = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned());
    let on_command_line = args.iter().any(|a| {
        let a = a.to_string_lossy();
        a == flag || a.starts_with(&format!("{flag}="))
    });
    Some(match env {
        Some(var) if !on_command_line => {
            format!("invalid value {value:?} in {var} (which sets {flag}): {reason}")
        }
        _ => format!("invalid value {value:?} for {flag}: {reason}"),
    })
}

/// Parses `1048576`, `512K`, `512KiB`, `1M`, `1MiB`, `1GiB` (powers of 1024).
fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| {
            format!("{s:?} is not a size: give bytes, or a number with a suffix B, K, KB, KiB, M, MB, MiB, G, GB or GiB, such as 1048576, 512KiB or 1MiB")
        })?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?}: use B, K, KB, KiB, M, MB, MiB, G, GB or GiB (all powers of 1024)"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| "size too large".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_errors_name_their_source_and_what_is_accepted() {
        let args = |v: &[&str]| -> Vec<std::ffi::OsString> { v.iter().map(Into::into).collect() };
        let a = args(&["ratatoskr", "--heartbeat", "-5s"]);
        let e = Config::from_args(&a).unwrap_err();
        let m = explain_error(&e, &a).unwrap();
        assert!(
            m.contains("\"-5s\" for --heartbeat") && m.contains("negative"),
            "{m}"
        );
        let a = args(&["ratatoskr", "--max-body=lots"]);
        let m = explain_error(&Config::from_args(&a).unwrap_err(), &a).unwrap();
        for suffix in ["K,", "KB", "KiB", "M,", "MB", "MiB"] {
            assert!(m.contains(suffix), "{suffix} in {m}");
        }
        let a = args(&["ratatoskr", "--lag-policy", "sometimes"]);
        let m = explain_error(&Config::from_args(&a).unwrap_err(), &a).unwrap();
        assert!(
            m.contains("accepted values") || m.contains("possible"),
            "{m}"
        );
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_args(["ratatoskr"]).unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.max_body, 1024 * 1024);
        assert_eq!(c.replay_capacity, 10_000);
        assert_eq!(c.replay_max_age, Duration::from_secs(3600));
        assert_eq!(c.heartbeat, Duration::from_secs(15));
    }

    #[test]
    fn flags_parse_and_validate() {
        let c = Config::from_args([
            "ratatoskr",
            "--max-body",
            "64KiB",
            "--lag-policy",
            "resume",
            "--heartbeat",
            "2s",
        ])
        .unwrap();
        assert_eq!(c.max_body, 65_536);
        assert_eq!(c.lag_policy, LagPolicy::Resume);
        assert!(Config::from_args(["ratatoskr", "--heartbeat", "soon"]).is_err());
        let c = Config::from_args(["ratatoskr", "--heartbeat", "10ms"]).unwrap();
        assert_eq!(
            c.validate(),
            Err(ConfigError("--heartbeat must be at least 1s".into()))
        );
        let c = Config::from_args(["ratatoskr", "--max-body", "100"]).unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn hub_shards_are_bounded() {
        let shards = |n: &str| Config::from_args(["ratatoskr", "--hub-shards", n]).unwrap();
        assert_eq!(Config::from_args(["ratatoskr"]).unwrap().hub_shards, 0);
        shards("256").validate().unwrap();
        let e = shards("257").validate().unwrap_err().to_string();
        assert!(e.contains("--hub-shards must be at most 256"), "{e}");
        assert!(Config::from_args(["ratatoskr", "--hub-shards", "-1"]).is_err());
    }

    #[test]
    fn with_listen_ignores_the_environment() {
        // Set for this process only; no other test reads this variable.
        std::env::set_var("RATATOSKR_SUBSCRIBER_BUFFER", "7");
        let c = Config::with_listen("127.0.0.1:1".parse().unwrap());
        std::env::remove_var("RATATOSKR_SUBSCRIBER_BUFFER");
        assert_eq!(c.subscriber_buffer, 4096);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("512k"), Ok(512 << 10));
        assert_eq!(parse_bytes("77"), Ok(77));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert!(parse_bytes("1TB").is_err());
        assert!(parse_bytes("x").is_err());
    }
}
