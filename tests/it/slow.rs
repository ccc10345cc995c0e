//! Slow subscribers: they lose events (and are told), never the others.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::client::Api;
use crate::support::util::Gateway;

/// An SSE subscriber that connects with a tiny receive buffer and does not read.
async fn stalled_subscriber(gw: &Gateway, path: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gw.addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream
}

/// Reads from `stream` until `needle` has been seen after `after`, or EOF/timeout.
async fn read_until(
    stream: &mut TcpStream,
    seen: &mut Vec<u8>,
    needle: &str,
    wait: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        if String::from_utf8_lossy(seen).contains(needle) {
            return true;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
}

/// Reads until the server closes the connection; false on timeout.
async fn read_to_eof(stream: &mut TcpStream, seen: &mut Vec<u8>, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return false,
        }
    }
}

fn big_event(n: usize) -> String {
    json!({"n": n, "pad": "x".repeat(64 * 1024)}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_lags_is_disconnected_and_can_resume_without_loss() {
    let gw = Gateway::start_with(|c| c.subscriber_buffer = 8).await;
    let mut slow = stalled_subscriber(&gw, "/events").await;
    let mut fast = gw.subscribe("/events").await;
    gw.wait_subscribers(2).await;
    let total = 200;
    // Lockstep: the fast subscriber reads each event before the next is
    // published, so it always keeps up while the stalled one falls behind.
    let mut got = Vec::new();
    for n in 0..total {
        let r = gw
            .post("/api/events", "application/json", big_event(n))
            .await;
        assert_eq!(r.status, 202);
        let ev = fast.expect_event().await;
        got.push(
            ev.json()["n"]
                .as_u64()
                .unwrap_or_else(|| panic!("not a test event: {ev:?}")),
        );
    }
    assert_eq!(
        got,
        (0..total as u64).collect::<Vec<_>>(),
        "the fast subscriber lost nothing"
    );
    assert!(gw.metric("ratatoskr_deliveries_dropped_total").await > 0.0);

    // Now the slow one reads: it gets what fitted, a lagged notice, and the end of the stream.
    let mut seen = Vec::new();
    assert!(
        read_until(
            &mut slow,
            &mut seen,
            "event: lagged",
            Duration::from_secs(20)
        )
        .await,
        "no lagged notice"
    );
    assert!(
        read_to_eof(&mut slow, &mut seen, Duration::from_secs(5)).await,
        "the server did not close the stream"
    );
    let text = String::from_utf8_lossy(&seen);
    let notice = text
        .split("event: lagged\ndata: ")
        .nth(1)
        .unwrap()
        .split('\n')
        .next()
        .unwrap();
    let notice: serde_json::Value = serde_json::from_str(notice).unwrap();
    assert!(notice["dropped"].as_u64().unwrap() > 0);
    assert_eq!(notice["policy"], "disconnect");
    assert_eq!(gw.metric("ratatoskr_subscribers_lagged_total").await, 1.0);

    // Resuming from the last id it got fills the hole from the replay ring:
    // every event after the ones it got, each once, in order.
    let last = notice["last_event_id"].as_str().unwrap().to_owned();
    let got_before: Vec<u64> = text
        .split("data: {\"n\":")
        .skip(1)
        .map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(
        got_before,
        (0..got_before.len() as u64).collect::<Vec<_>>(),
        "the slow one got a prefix, in order"
    );
    let mut back = gw
        .subscribe_with("/events", &[("last-event-id", &last)])
        .await;
    for expected in got_before.len() as u64..total as u64 {
        let n = back.expect_event().await.json()["n"].as_u64().unwrap();
        assert_eq!(n, expected, "resume without loss or duplicate");
    }
    back.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_resume_policy_the_stream_goes_on_after_the_notice() {
    let gw = Gateway::start_with(|c| {
        c.subscriber_buffer = 4;
        c.lag_policy = ratatoskr::hub::LagPolicy::Resume;
    })
    .await;
    let mut slow = stalled_subscriber(&gw, "/events").await;
    gw.wait_subscribers(1).await;
    for n in 0..150 {
        gw.post("/api/events", "application/json", big_event(n))
            .await;
    }
    let mut seen = Vec::new();
    assert!(
        read_until(
            &mut slow,
            &mut seen,
            "event: lagged",
            Duration::from_secs(20)
        )
        .await
    );
    gw.post("/api/events", "application/json", r#"{"after":"lag"}"#)
        .await;
    assert!(
        read_until(
            &mut slow,
            &mut seen,
            r#"{"after":"lag"}"#,
            Duration::from_secs(10)
        )
        .await
    );
    assert_eq!(gw.subscribers().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_cut_after_the_write_timeout() {
    let gw = Gateway::start_with(|c| {
        c.subscriber_buffer = 100_000;
        c.write_timeout = Duration::from_secs(1);
    })
    .await;
    let _slow = stalled_subscriber(&gw, "/events").await;
    let mut fast = gw.subscribe("/events").await;
    gw.wait_subscribers(2).await;
    for n in 0..150 {
        gw.post("/api/events", "application/json", big_event(n))
            .await;
        fast.expect_event().await;
    }
    gw.wait_subscribers(1).await;
}
