//! Test harness: the real gateway on 127.0.0.1:0, a typed client, and an
//! SSE reader over a real socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use ratatoskr::config::Config;
use ratatoskr::state::store::StoreKind;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::client::Api;

/// A gateway running in this process.
/// Polls `probe` every 10 ms until it holds; fails the test, naming
/// `what`, once `within` has passed.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> F,
) {
    let started = std::time::Instant::now();
    while !probe().await {
        assert!(started.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of an unlabelled series in Prometheus text.
pub fn series_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The sum of every sample of a labelled series (`name{...} value`) in
/// Prometheus text; 0 when it has none.
pub fn labelled_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum()
}

/// Whether this run makes every gateway a cluster node
/// (`RATATOSKR_TEST_REDIS`, set by `make test` for its second pass).
pub fn cluster_mode() -> bool {
    std::env::var_os("RATATOSKR_TEST_REDIS").is_some()
}

/// For a test of embedded-mode behaviour that a cluster node does
/// differently by design: says so and tells the caller to stop.
pub fn embedded_only(why: &str) -> bool {
    if cluster_mode() {
        crate::support::skip::skip(&format!("not run in cluster mode: {why}"));
        return true;
    }
    false
}

impl crate::support::client::Api for Gateway {
    fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

pub struct Gateway {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<bool, ratatoskr::StartError>>>,
    pub http: reqwest::Client,
}

impl Gateway {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = Config::with_listen(addr);
        config.shutdown_grace = Duration::from_secs(5);
        config.store = StoreKind::Memory;
        // Test receivers listen on loopback; everything else stays refused.
        config.allow_destination_nets = vec!["127.0.0.1/32".parse().expect("cidr")];
        // `make test` runs this suite a second time with every gateway a
        // cluster node on a Redis of its own (a key prefix per gateway).
        if let Ok(url) = std::env::var("RATATOSKR_TEST_REDIS") {
            config.redis_url = Some(url);
            config.redis_prefix = format!("t{}", uuid::Uuid::new_v4().simple());
            // The third pass: a Redis Cluster (`RATATOSKR_TEST_REDIS` its seeds).
            if std::env::var("RATATOSKR_TEST_REDIS_MODE").as_deref() == Ok("cluster") {
                config.redis_mode = ratatoskr::redis_target::RedisMode::Cluster;
            }
        }
        tune(&mut config);
        config.validate().expect("valid test config");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(ratatoskr::run(config, listener, async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Self {
            addr,
            stop: Some(tx),
            task: Some(task),
            http,
        }
    }

    /// Publishes `body` as a JSON event (202 or the test fails); its id.
    pub async fn publish_json(&self, body: &Value) -> String {
        let r = self
            .post("/api/events", "application/json", body.to_string())
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        r.body["id"].as_str().expect("id").to_owned()
    }

    /// Publishes a WRP test vector (msgpack) and returns its bytes.
    pub async fn publish_vector(&self, name: &str) -> Vec<u8> {
        let wrp = vector(name);
        let r = self
            .post("/api/events", "application/msgpack", wrp.clone())
            .await;
        assert_eq!(r.status, 202, "{name}: {}", r.text);
        wrp
    }

    /// Subscribers the gateway reports now.
    pub async fn subscribers(&self) -> u64 {
        self.get("/health").await.body["subscribers"]
            .as_u64()
            .expect("subscribers")
    }

    /// Waits until the gateway reports `n` subscribers.
    pub async fn wait_subscribers(&self, n: u64) {
        for _ in 0..200 {
            if self.subscribers().await == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "never reached {n} subscribers (now {})",
            self.subscribers().await
        );
    }

    /// The value of an un-labelled series in /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        series_value(&text, name).unwrap_or_else(|| panic!("no series {name} in\n{text}"))
    }

    /// Stops the gateway; returns whether it drained in time.
    pub async fn shutdown(mut self) -> bool {
        self.stop.take().expect("running").send(()).ok();
        self.task
            .take()
            .expect("running")
            .await
            .expect("run task")
            .expect("gateway started")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub async fn read(resp: reqwest::Response) -> Self {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            body,
            text,
        }
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts a problem+json error with `status`.
    pub fn assert_problem(&self, status: u16) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.content_type(),
            "application/problem+json",
            "{}",
            self.text
        );
        assert_eq!(self.body["status"], status);
        assert!(
            self.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            self.text
        );
    }
}

/// One item of an SSE stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    Event(SseEvent),
    Comment(String),
    Retry(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("data is not JSON ({e}): {}", self.data))
    }
}

/// Reads an SSE response incrementally, per the WHATWG parsing rules.
pub struct SseClient {
    pub headers: HeaderMap,
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
    /// Bytes of a UTF-8 character split across chunks.
    partial: Vec<u8>,
    pending: std::collections::VecDeque<SseItem>,
    current: SseEvent,
    has_data: bool,
    pub ended: bool,
}

impl SseClient {
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            headers: resp.headers().clone(),
            stream: resp.bytes_stream().boxed(),
            buf: String::new(),
            partial: Vec::new(),
            pending: Default::default(),
            current: SseEvent::default(),
            has_data: false,
            ended: false,
        }
    }

    /// The next item, or None at the end of the stream or after `wait`.
    pub async fn next_item(&mut self, wait: Duration) -> Option<SseItem> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => self.ended = true,
                Ok(Some(Ok(chunk))) => {
                    self.partial.extend_from_slice(&chunk);
                    let valid = match std::str::from_utf8(&self.partial) {
                        Ok(s) => s.len(),
                        // Incomplete at the end: keep it for the next chunk.
                        Err(e) if e.error_len().is_none() => e.valid_up_to(),
                        Err(e) => panic!("the stream is not UTF-8: {e}"),
                    };
                    let text: Vec<u8> = self.partial.drain(..valid).collect();
                    self.buf
                        .push_str(std::str::from_utf8(&text).expect("checked above"));
                    self.parse_lines();
                }
            }
        }
    }

    fn parse_lines(&mut self) {
        while let Some(pos) = self.buf.find(['\n', '\r']) {
            let line: String = self.buf[..pos].to_owned();
            let mut skip = 1;
            if self.buf.as_bytes()[pos] == b'\r' && self.buf.as_bytes().get(pos + 1) == Some(&b'\n')
            {
                skip = 2;
            }
            self.buf.drain(..pos + skip);
            if line.is_empty() {
                if self.has_data {
                    let mut ev = std::mem::take(&mut self.current);
                    if ev.data.ends_with('\n') {
                        ev.data.pop();
                    }
                    self.pending.push_back(SseItem::Event(ev));
                } else {
                    self.current = SseEvent::default();
                }
                self.has_data = false;
                continue;
            }
            if let Some(c) = line.strip_prefix(':') {
                self.pending
                    .push_back(SseItem::Comment(c.trim_start().to_owned()));
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
                None => (line.clone(), String::new()),
            };
            match field.as_str() {
                "data" => {
                    self.current.data.push_str(&value);
                    self.current.data.push('\n');
                    self.has_data = true;
                }
                "event" => self.current.event = Some(value),
                "id" => self.current.id = Some(value),
                "retry" => {
                    if let Ok(ms) = value.parse() {
                        self.pending.push_back(SseItem::Retry(ms));
                    }
                }
                _ => {}
            }
        }
    }

    /// The next event (comments and retry skipped), or None after `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await? {
                SseItem::Event(e) => return Some(e),
                _ => continue,
            }
        }
    }

    /// The next event, which must arrive within 5 s.
    pub async fn expect_event(&mut self) -> SseEvent {
        self.next_event(Duration::from_secs(5))
            .await
            .expect("an event within 5 s")
    }

    /// Asserts that no event arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(e) = self.next_event(wait).await {
            panic!("unexpected event {e:?}");
        }
    }
}

/// The WRP test vectors shipped with the tests.
pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/wrp")
}

pub fn vector(name: &str) -> Vec<u8> {
    std::fs::read(vectors_dir().join(name)).unwrap_or_else(|e| panic!("vector {name}: {e}"))
}
