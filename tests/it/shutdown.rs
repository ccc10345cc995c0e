//! Graceful shutdown: streams are told and ended, the drain completes.

use std::time::Duration;

use crate::util::Gateway;

#[tokio::test]
async fn shutdown_tells_subscribers_ends_streams_and_drains() {
    let gw = Gateway::start().await;
    let addr = gw.addr;
    let mut a = gw.subscribe("/events").await;
    let mut b = gw.subscribe("/events?device=x").await;
    gw.post_json(&serde_json::json!("before")).await;
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
