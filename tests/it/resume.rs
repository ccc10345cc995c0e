//! Last-Event-ID resume from the replay ring.

use std::time::Duration;

use serde_json::json;

use crate::support::client::Api;
use crate::support::util::{Gateway, SseItem};

#[tokio::test]
async fn reconnect_with_last_event_id_gets_exactly_the_missed_matching_events() {
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events?device=a").await;
    gw.post("/api/events?device=a", "application/json", "1")
        .await;
    let last = sub.expect_event().await.id.unwrap();
    drop(sub);
    gw.wait_subscribers(0).await;
    for (d, n) in [("a", 2), ("b", 3), ("a", 4)] {
        gw.post(
            &format!("/api/events?device={d}"),
            "application/json",
            n.to_string(),
        )
        .await;
    }
    let mut back = gw
        .subscribe_with("/events?device=a", &[("last-event-id", &last)])
        .await;
    assert_eq!(back.expect_event().await.data, "2");
    assert_eq!(back.expect_event().await.data, "4");
    gw.post("/api/events?device=a", "application/json", "5")
        .await;
    assert_eq!(back.expect_event().await.data, "5");
    back.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn query_last_event_id_works_and_the_header_wins() {
    let gw = Gateway::start().await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(gw.publish_json(&json!(n)).await);
    }
    let mut q = gw
        .subscribe(&format!("/events?lastEventId={}", ids[1]))
        .await;
    assert_eq!(q.expect_event().await.data, "2");
    assert_eq!(q.expect_event().await.data, "3");
    let mut h = gw
        .subscribe_with(
            &format!("/events?lastEventId={}", ids[0]),
            &[("last-event-id", &ids[2])],
        )
        .await;
    assert_eq!(h.expect_event().await.data, "3");
    h.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn an_id_older_than_the_ring_gets_a_gap_notice_then_what_is_left() {
    if crate::support::util::embedded_only(
        "the shared stream still holds what the ring evicted, so there is no gap",
    ) {
        return;
    }
    let gw = Gateway::start_with(|c| c.replay_capacity = 3).await;
    let first = gw.publish_json(&json!(0)).await;
    for n in 1..6 {
        gw.publish_json(&json!(n)).await;
    }
    let mut sub = gw
        .subscribe_with("/events", &[("last-event-id", &first)])
        .await;
    let gap = sub.expect_event().await;
    assert_eq!(gap.event.as_deref(), Some("gap"));
    assert_eq!(gap.json()["last_event_id"], first.as_str());
    for n in 3..6 {
        assert_eq!(sub.expect_event().await.data, n.to_string());
    }
}

#[tokio::test]
async fn an_id_from_before_this_process_started_gets_a_gap_notice() {
    if crate::support::util::embedded_only(
        "events from before the node started are in the shared stream",
    ) {
        return;
    }
    let gw = Gateway::start().await;
    gw.publish_json(&json!("new")).await;
    let mut sub = gw
        .subscribe_with("/events", &[("last-event-id", "0000000000000001")])
        .await;
    assert_eq!(sub.expect_event().await.event.as_deref(), Some("gap"));
    assert_eq!(sub.expect_event().await.data, "\"new\"");
}

#[tokio::test]
async fn the_newest_id_resumes_with_nothing_and_no_gap() {
    let gw = Gateway::start().await;
    let id = gw.publish_json(&json!(1)).await;
    let mut sub = gw
        .subscribe_with("/events", &[("last-event-id", &id)])
        .await;
    let mut items = Vec::new();
    while let Some(i) = sub.next_item(Duration::from_millis(300)).await {
        items.push(i);
    }
    assert_eq!(items, [SseItem::Retry(3000)]);
}

#[tokio::test]
async fn events_older_than_the_max_age_are_not_replayed() {
    if crate::support::util::embedded_only(
        "the stream is trimmed by age once a second, approximately",
    ) {
        return;
    }
    let gw = Gateway::start_with(|c| c.replay_max_age = Duration::from_millis(300)).await;
    let id = gw.publish_json(&json!("old")).await;
    gw.publish_json(&json!("expires")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.publish_json(&json!("fresh")).await;
    let mut sub = gw
        .subscribe_with("/events", &[("last-event-id", &id)])
        .await;
    assert_eq!(sub.expect_event().await.event.as_deref(), Some("gap"));
    assert_eq!(sub.expect_event().await.data, "\"fresh\"");
}
