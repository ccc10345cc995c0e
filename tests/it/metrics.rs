//! `/metrics`, read as a scraper parses it, and what forwarding shows and
//! holds outside a tenant's own registrations: the destination labels
//! (never a capability URL's path or query), the size of a scrape, and the
//! outbound connections all destinations together may hold.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::forward::register_ok;
use crate::support::client::Api;
use crate::support::receiver::Receiver;
use crate::support::util::{eventually, series_value, Gateway};

const DEVICE: &str = "mac:112233445566";
const WAIT: Duration = Duration::from_secs(20);

async fn publish(gw: &Gateway) {
    let r = gw
        .post(
            &format!("/api/events?device={DEVICE}&type=status"),
            "application/json",
            r#"{"n":1}"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
}

async fn register_url(gw: &Gateway, url: &str) {
    register_ok(
        gw,
        &json!({"device": DEVICE, "duration": "10m",
                "destination": {"type": "http", "url": url}}),
    )
    .await;
}

/// The `destination` label values in a scrape.
fn destination_labels(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("ratatoskr_destination_delivered_total{"))
        .filter_map(|l| l.split("destination=\"").nth(1)?.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// Scrapes `/metrics` until `done` holds for the text (at most [`WAIT`]).
async fn scrape_until(gw: &Gateway, what: &str, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let text = gw.get("/metrics").await.text;
        if done(&text) {
            return text;
        }
        assert!(
            started.elapsed() < WAIT,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every metric name in a scrape: each series' and each `# HELP` and
/// `# TYPE` line's.
fn metric_names(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| match l.strip_prefix("# ") {
            Some(comment) => comment
                .strip_prefix("HELP ")
                .or_else(|| comment.strip_prefix("TYPE "))?
                .split(' ')
                .next(),
            None => l.split(['{', ' ']).next(),
        })
        .filter(|n| !n.is_empty() && *n != "EOF")
        .collect()
}

/// The registry adds the `ratatoskr_` prefix: a name that spells it too
/// is exported twice prefixed (`ratatoskr_ratatoskr_credentials_reloads`
/// was), and a test matching a substring never sees it.
#[tokio::test]
async fn every_metric_name_has_the_ratatoskr_prefix_exactly_once() {
    let gw = Gateway::start().await;
    let text = gw.get("/metrics").await.text;
    let names = metric_names(&text);
    assert!(names.len() > 20, "{text}");
    for name in names {
        assert!(
            name.starts_with("ratatoskr_") && !name.starts_with("ratatoskr_ratatoskr_"),
            "{name} in\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("# TYPE ratatoskr_credentials_reloads counter")),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_label_a_destination_by_host_port_and_an_8_hex_digest_never_its_path_or_query() {
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    // A capability URL: its secret is in the path and the query.
    let hook = "/services/T0SECRETPATH/B0/XSECRET";
    register_url(&gw, &rx.url(&format!("{hook}?token=SECRETQUERY"))).await;
    register_url(&gw, &rx.url("/other")).await;
    publish(&gw).await;
    rx.wait_for(hook, 1, WAIT).await;

    let prefix = format!("http:http://127.0.0.1:{}/#", rx.addr.port());
    let text = scrape_until(&gw, "both deliveries counted", |text| {
        let labels = destination_labels(text);
        labels.len() == 2
            && labels.iter().all(|l| {
                series_value(
                    text,
                    &format!("ratatoskr_destination_delivered_total{{destination=\"{l}\"}}"),
                ) == Some(1.0)
            })
    })
    .await;
    assert!(
        !text.contains("SECRET"),
        "a destination's path or query is in /metrics:\n{text}"
    );
    assert!(
        !text.contains("/other"),
        "a destination's path is in /metrics:\n{text}"
    );
    for label in destination_labels(&text) {
        let digest = label
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{label} is not {prefix}<digest>"));
        assert!(
            digest.len() == 8 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{label}: the rest of the URL is an 8 hex digit digest"
        );
    }
}

/// What `/metrics` costs no longer grows with the destinations' URLs: 100
/// labelled destinations with 1,900-byte paths (URLs under 2 KiB, which
/// every bound on URLs admits) make a scrape under 512 KiB; their full
/// paths made it over 5 MiB.
#[tokio::test]
async fn a_scrape_with_100_destinations_of_1900_byte_paths_stays_under_512_kib() {
    const SCRAPE_MAX: usize = 512 << 10;
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    for i in 0..100 {
        let path = format!("/{i:03}{}", "p".repeat(1_896));
        register_url(&gw, &rx.url(&path)).await;
    }
    let text = scrape_until(&gw, "100 destinations labelled", |text| {
        destination_labels(text).len() == 100
    })
    .await;
    eprintln!("a scrape of 100 destinations: {} bytes", text.len());
    assert!(
        text.len() < SCRAPE_MAX,
        "a scrape of 100 destinations is {} bytes, over {SCRAPE_MAX}",
        text.len()
    );
}

/// A webhook receiver that counts the connections it holds at once: each
/// request is answered after `delay`, and the connection is closed then.
/// The count drops before the answer is written, so a client that opens
/// its next connection on reading the answer is never counted twice.
struct SlowReceiver {
    addr: std::net::SocketAddr,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowReceiver {
    async fn start(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let (o, p, s) = (open.clone(), peak.clone(), served.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                let (o, s) = (o.clone(), s.clone());
                tokio::spawn(async move {
                    let complete = read_request(&mut conn).await;
                    tokio::time::sleep(delay).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                    if complete {
                        s.fetch_add(1, Ordering::SeqCst);
                        let _ = conn
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                            )
                            .await;
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
        Self {
            addr,
            open,
            peak,
            served,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for SlowReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request (head, then a `content-length` body), at
/// most 1 MiB; false if the connection ended first.
async fn read_request(conn: &mut tokio::net::TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return true;
            }
        }
        if buf.len() > 1 << 20 {
            return false;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// 40 destinations on one slow receiver, 4 deliveries in flight each,
/// would hold 40 connections at once; with `--max-outbound-connections 8`
/// they hold at most 8, the rest wait (counted), every event is still
/// delivered, and `/health` answers throughout.
#[tokio::test]
async fn outbound_connections_stay_within_8_for_40_slow_destinations_and_health_answers() {
    const BOUND: usize = 8;
    const DESTINATIONS: usize = 40;
    let rx = SlowReceiver::start(Duration::from_millis(400)).await;
    let gw = Gateway::start_with(|c| {
        c.max_outbound_connections = BOUND;
    })
    .await;
    for i in 0..DESTINATIONS {
        register_url(&gw, &rx.url(&format!("/slow/{i}"))).await;
    }
    // Two events each: 80 deliveries, one at a time per destination.
    publish(&gw).await;
    publish(&gw).await;
    let started = Instant::now();
    let mut in_use_peak = 0.0_f64;
    while rx.served.load(Ordering::SeqCst) < 2 * DESTINATIONS {
        assert!(
            started.elapsed() < WAIT,
            "only {} of {} deliveries arrived",
            rx.served.load(Ordering::SeqCst),
            2 * DESTINATIONS
        );
        let asked = Instant::now();
        let health = gw.get("/health").await;
        assert_eq!(health.status, 200, "/health during the deliveries");
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "/health took {:?}",
            asked.elapsed()
        );
        let text = gw.get("/metrics").await.text;
        if let Some(v) = series_value(&text, "ratatoskr_outbound_connections") {
            in_use_peak = in_use_peak.max(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak = rx.peak.load(Ordering::SeqCst);
    assert!(
        peak <= BOUND,
        "the receiver held {peak} connections at once; the bound is {BOUND}"
    );
    assert_eq!(peak, BOUND, "the load reached the bound");
    assert!(
        in_use_peak <= BOUND as f64,
        "ratatoskr_outbound_connections was {in_use_peak}"
    );
    let text = gw.get("/metrics").await.text;
    let waits = series_value(&text, "ratatoskr_outbound_waits_total").unwrap_or(0.0);
    assert!(
        waits > 0.0,
        "deliveries that waited for a connection: {waits}\n{text}"
    );
    eventually("every connection given back", WAIT, || async {
        rx.open.load(Ordering::SeqCst) == 0
            && series_value(
                &gw.get("/metrics").await.text,
                "ratatoskr_outbound_connections",
            ) == Some(0.0)
    })
    .await;
}
