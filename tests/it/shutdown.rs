//! Graceful shutdown: streams are told and ended, the drain completes.

use std::time::Duration;

use serde_json::json;

use crate::support::client::Api;
use crate::support::util::Gateway;

#[tokio::test]
async fn shutdown_tells_subscribers_ends_streams_and_drains() {
    let gw = Gateway::start().await;
    let addr = gw.addr;
    let mut a = gw.subscribe("/events").await;
    let mut b = gw.subscribe("/events?device=x").await;
    gw.publish_json(&serde_json::json!("before")).await;
    assert_eq!(a.expect_event().await.data, "\"before\"");
    let drained = tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
        .await
        .expect("shutdown within the grace period");
    assert!(drained, "every connection finished within the grace period");
    for sub in [&mut a, &mut b] {
        let last = sub.expect_event().await;
        assert_eq!(last.event.as_deref(), Some("shutdown"));
        assert!(sub.next_event(Duration::from_secs(2)).await.is_none());
        assert!(sub.ended, "the stream ended");
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn shutdown_with_no_clients_is_immediate() {
    let gw = Gateway::start().await;
    assert_eq!(gw.get("/ready").await.status, 200);
    let started = std::time::Instant::now();
    assert!(gw.shutdown().await);
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// SIGTERM keeps delivering what is queued for destinations within the
/// grace period; what is still undelivered then is logged per destination.
#[tokio::test]
async fn queued_deliveries_finish_within_the_grace_period() {
    use crate::support::process::{temp_dir, Process};
    use crate::support::receiver::Receiver;
    let dir = temp_dir("shutdown-forward");
    // Two receivers: logs name a destination by host and port (never its
    // path, which may be a secret), so the two are told apart by port.
    let rx = Receiver::start().await;
    let stuck = Receiver::start().await;
    rx.delay("/slowish", Duration::from_millis(200));
    stuck.delay("/stuck", Duration::from_secs(30));
    let gw = Process::start(&dir, &["--store", "memory", "--shutdown-grace", "3s"]);
    for url in [rx.url("/slowish"), stuck.url("/stuck")] {
        let body = json!({"device": "mac:112233445566", "duration": 60,
                          "destination": {"type": "http", "url": url}});
        assert_eq!(gw.post_json("/api/registrations", &body).await.status, 201);
    }
    for i in 0..12 {
        let r = gw
            .post_json("/api/events?device=mac:112233445566&type=t", &json!(i))
            .await;
        assert_eq!(r.status, 202);
    }
    let log = gw.log.clone();
    let started = std::time::Instant::now();
    assert_eq!(gw.stop().await, Some(0));
    // 12 events at 200 ms, 4 at a time: well within the 3 s grace.
    assert_eq!(
        rx.received("/slowish").len(),
        12,
        "every queued event was delivered"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let log = log.lock().unwrap().join("\n");
    let abandoned = log
        .lines()
        .find(|l| l.contains("events for this destination abandoned"))
        .unwrap_or_else(|| panic!("no abandonment logged:\n{log}"));
    let (stuck_at, slowish_at) = (
        format!(":{}/", stuck.addr.port()),
        format!(":{}/", rx.addr.port()),
    );
    assert!(abandoned.contains(&stuck_at), "{stuck_at} in {abandoned}");
    assert!(!log.contains("/stuck"), "no path in the log: {log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("abandoned") && l.contains(&slowish_at)),
        "{log}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
