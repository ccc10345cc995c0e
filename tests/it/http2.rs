//! HTTP/2 (h2c, prior knowledge) clients that hold resources: idle
//! connections and streams that grant no flow-control window. The client is
//! the `h2` crate (the one hyper uses), for control over windows.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

use crate::support::client::Api;
use crate::support::util::Gateway;

const HOME: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Another client address (the loopback network is all of 127/8).
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// One h2c connection from `from`: the handle to open streams, and the task
/// that drives the connection (it answers PINGs, and ends when the gateway
/// closes the connection). `window`: the initial stream window this
/// client grants; it never releases any more (the test does not call
/// `release_capacity`).
struct H2c {
    send: Option<h2::client::SendRequest<Bytes>>,
    driver: JoinHandle<Result<(), h2::Error>>,
}

async fn h2c(gw: &Gateway, from: IpAddr, window: u32) -> H2c {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = socket.connect(gw.addr).await.unwrap();
    match h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, Bytes>(tcp)
        .await
    {
        Ok((send, conn)) => H2c {
            send: Some(send),
            driver: tokio::spawn(conn),
        },
        // Closed before the handshake was through: as closed as can be.
        Err(e) => H2c {
            send: None,
            driver: tokio::spawn(async move { Err(e) }),
        },
    }
}

/// Reads `body`, granting window for what it takes, until what it read
/// holds `needle` (true) or the body ends or `wait` passes (false); and
/// what it read.
async fn read_until(body: &mut h2::RecvStream, needle: &str, wait: Duration) -> (bool, Vec<u8>) {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(wait, async {
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            seen.extend_from_slice(&chunk);
            if String::from_utf8_lossy(&seen).contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    (found == Ok(true), seen)
}

/// A stream on a connection that grants 64 bytes of window and never
/// releases any (the preamble fits, the first event does not), then
/// `events` events of 4 KiB published to it.
async fn stalled_stream(gw: &Gateway, events: usize) -> (H2c, h2::RecvStream) {
    let mut client = h2c(gw, HOME, 64).await;
    let response = client.get("/events").await;
    assert_eq!(response.status(), 200);
    let body = response.into_body();
    gw.wait_subscribers(1).await;
    let pad = "x".repeat(4096);
    for n in 0..events {
        gw.publish_json(&json!({"n": n, "pad": pad})).await;
    }
    (client, body)
}

impl H2c {
    /// Opens `GET path`; returns the response (head and body stream).
    async fn get(&mut self, path: &str) -> http::Response<h2::RecvStream> {
        let send = self.send.clone().expect("an open connection");
        let mut send = send.ready().await.expect("stream slot");
        let request = http::Request::get(format!("http://127.0.0.1{path}"))
            .body(())
            .unwrap();
        let (response, _) = send.send_request(request, true).expect("send request");
        tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("response head in time")
            .expect("response")
    }

    /// Whether the gateway has closed this connection by `within`.
    async fn closed_within(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, &mut self.driver).await.is_ok()
    }
}

#[tokio::test]
async fn idle_h2c_connections_are_closed_after_the_1s_idle_timeout_but_a_stream_keeps_one() {
    let gw = Gateway::start_with(|c| c.h2_idle_timeout = Duration::from_secs(1)).await;
    let mut busy = h2c(&gw, HOME, 65_535).await;
    let stream = busy.get("/events").await;
    assert_eq!(stream.status(), 200);
    let mut stream = stream.into_body();
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(h2c(&gw, HOME, 65_535).await);
    }
    for (n, c) in idle.iter_mut().enumerate() {
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "idle h2c connection {n} of 20 still open 5 s after a 1 s --h2-idle-timeout"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the 1 s idle timeout: {:?}",
        started.elapsed()
    );
    // The connection with an SSE stream open is not idle: it outlives the
    // timeout and still delivers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !busy.closed_within(Duration::ZERO).await,
        "an h2 connection with a stream open was closed as idle"
    );
    gw.publish_json(&json!({"n": "after the idle timeout"}))
        .await;
    let (got, seen) = read_until(
        &mut stream,
        "after the idle timeout",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        got,
        "the stream on the busy connection: {}",
        String::from_utf8_lossy(&seen)
    );
}

#[tokio::test]
async fn h2c_connections_count_under_max_streams_per_ip_2_and_do_not_lock_out_others() {
    // Four connections in all: without the per-address count, four idle
    // h2c connections from one address take every one.
    let gw = Gateway::start_with(|c| {
        c.max_streams_per_ip = 2;
        c.max_connections = 4;
    })
    .await;
    let mut home = Vec::new();
    for _ in 0..4 {
        home.push(h2c(&gw, HOME, 65_535).await);
    }
    let mut closed = Vec::new();
    for c in &mut home {
        closed.push(c.closed_within(Duration::from_millis(500)).await);
    }
    assert_eq!(
        closed,
        [false, false, true, true],
        "the first 2 idle h2c connections from one address are kept (cap 2), the others closed at once"
    );
    // Another address still gets in, over HTTP/1.1 and over h2.
    let other = reqwest::Client::builder()
        .local_address(OTHER)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let health = other.get(gw.url("/health")).send().await;
    assert_eq!(
        health.map(|r| r.status().as_u16()).ok(),
        Some(200),
        "a client from another address with 2 idle h2c connections open from 127.0.0.1 (cap 2, 4 connections)"
    );
    drop(other);
    let mut theirs = h2c(&gw, OTHER, 65_535).await;
    assert_eq!(theirs.get("/health").await.status(), 200);
    drop(theirs);
    // A closed connection frees its place.
    let first = home.remove(0);
    drop(first.send);
    first.driver.abort();
    let mut again = None;
    for _ in 0..50 {
        let mut c = h2c(&gw, HOME, 65_535).await;
        if !c.closed_within(Duration::from_millis(100)).await {
            again = Some(c);
            break;
        }
    }
    let mut again = again.expect("a place freed by a closed h2c connection");
    assert_eq!(again.get("/health").await.status(), 200);
}

#[tokio::test]
async fn an_h2_stream_that_grants_no_window_is_reset_after_the_1s_write_timeout() {
    let gw = Gateway::start_with(|c| c.write_timeout = Duration::from_secs(1)).await;
    // 64 bytes of window, never released: the preamble fits, the first
    // event does not. The connection stays alive (the driver answers PINGs).
    let (mut client, mut body) = stalled_stream(&gw, 20).await;
    let started = Instant::now();
    // Takes what the window let through (without releasing it) until the
    // stream ends.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match body.data().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
    .expect("an h2 stream that grants no window still open 10 s after a 1 s --write-timeout");
    let waited = started.elapsed();
    let reason = end.as_ref().and_then(h2::Error::reason);
    assert_eq!(
        reason,
        Some(h2::Reason::CANCEL),
        "the stalled stream ends with RST_STREAM(CANCEL): {end:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "reset {waited:?} after the publish, with a 1 s --write-timeout"
    );
    // Its subscription is gone, and the connection is still usable.
    gw.wait_subscribers(0).await;
    assert!(!client.closed_within(Duration::ZERO).await);
    assert_eq!(client.get("/health").await.status(), 200);
}

#[tokio::test]
async fn an_h2_stream_stalled_on_window_past_its_8_event_queue_gets_lagged_when_it_reads_again() {
    let gw = Gateway::start_with(|c| {
        c.subscriber_buffer = 8;
        c.write_timeout = Duration::from_secs(30);
    })
    .await;
    let (_client, mut body) = stalled_stream(&gw, 50).await;
    // Reads again, granting window for what it takes.
    let (lagged, seen) = read_until(&mut body, "event: lagged", Duration::from_secs(10)).await;
    assert!(
        lagged,
        "50 events into an 8-event queue while the window was shut: {} bytes read",
        seen.len()
    );
}
