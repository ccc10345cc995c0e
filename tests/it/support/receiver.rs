//! A real webhook receiver on 127.0.0.1: records every request, and can be
//! told to answer a path slowly or with scripted statuses.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use tokio::sync::Notify;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no header {name} in {:?}", self.headers))
    }
}

#[derive(Default)]
struct Inner {
    requests: Mutex<Vec<Received>>,
    arrived: Notify,
    statuses: Mutex<HashMap<String, VecDeque<u16>>>,
    delays: Mutex<HashMap<String, Duration>>,
    retry_after: Mutex<HashMap<String, String>>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: Mutex<
        Option<(
            tokio::task::JoinHandle<()>,
            tokio::sync::oneshot::Sender<()>,
        )>,
    >,
}

async fn record(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap) {
    let path = uri.path().to_owned();
    let delay = inner.delays.lock().unwrap().get(&path).copied();
    let status = inner
        .statuses
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(VecDeque::pop_front)
        .unwrap_or(200);
    // Recorded on arrival, so a request the sender gives up on still counts.
    let mut answer = HeaderMap::new();
    if status != 200 {
        if let Some(v) = inner.retry_after.lock().unwrap().get(&path) {
            answer.insert(http::header::RETRY_AFTER, v.parse().unwrap());
        }
    }
    inner.requests.lock().unwrap().push(Received {
        path,
        headers,
        body,
        at: Instant::now(),
    });
    inner.arrived.notify_waiters();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    (StatusCode::from_u16(status).unwrap(), answer)
}

impl Receiver {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = Mutex::new(Some(serve(listener, inner.clone())));
        Self { addr, inner, task }
    }

    /// An outage: stops listening and closes every connection, so that
    /// senders get connection errors (refused), as from a host that is down.
    pub async fn down(&self) {
        let Some((task, stop)) = self.task.lock().unwrap().take() else {
            return;
        };
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }

    /// Back up, on the same port.
    pub async fn up(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        *self.task.lock().unwrap() = Some(serve(listener, self.inner.clone()));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends `Retry-After: value` with every scripted (non-200) answer on `path`.
    pub fn retry_after(&self, path: &str, value: &str) {
        self.inner
            .retry_after
            .lock()
            .unwrap()
            .insert(path.into(), value.into());
    }

    /// Answers the next requests to `path` with these statuses, then 200.
    pub fn script(&self, path: &str, statuses: &[u16]) {
        self.inner
            .statuses
            .lock()
            .unwrap()
            .insert(path.into(), statuses.iter().copied().collect());
    }

    /// Waits this long before answering requests to `path`.
    pub fn delay(&self, path: &str, d: Duration) {
        self.inner.delays.lock().unwrap().insert(path.into(), d);
    }

    /// The `n` field of each JSON body posted to `path` so far, in order
    /// (the tests number their events so).
    pub fn numbers(&self, path: &str) -> Vec<i64> {
        self.received(path)
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["n"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    }

    /// Requests to `path` so far.
    pub fn received(&self, path: &str) -> Vec<Received> {
        self.inner
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got at least `n` requests (or panics after `within`).
    pub async fn wait_for(&self, path: &str, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let arrived = self.inner.arrived.notified();
            let got = self.received(path);
            if got.len() >= n {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("{path}: {} of {n} requests within {within:?}", got.len());
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), arrived).await;
        }
    }
}

fn serve(
    listener: tokio::net::TcpListener,
    inner: Arc<Inner>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let app = axum::Router::new().fallback(record).with_state(inner);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (task, stop)
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some((task, _)) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}
