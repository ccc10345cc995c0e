//! The redb store: registrations and event types survive a restart, and
//! their clocks keep running.

use std::time::Duration;

use ratatoskr::config::StoreKind;
use serde_json::json;

use crate::forward::register_ok;
use crate::receiver::Receiver;
use crate::util::Gateway;

#[tokio::test]
async fn registrations_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("ratatoskr-it-{}", uuid::Uuid::new_v4()));
    let rx = Receiver::start().await;
    let d = dir.clone();
    let gw = Gateway::start_with(move |c| {
        c.store = StoreKind::Redb;
        c.data_dir = d;
    })
    .await;
    let created = register_ok(
        &gw,
        &json!({"device": "mac:112233445566", "duration": "10m",
                "destination": {"type": "http", "url": rx.url("/p"), "secret": "s"}}),
    )
    .await;
    let short = register_ok(
        &gw,
        &json!({"device": "mac:112233445566", "duration": 1,
                "destination": {"type": "http", "url": rx.url("/short")}}),
    )
    .await;
    let def = json!({"name": "typed", "schema": {"type": "integer"}});
    assert_eq!(
        gw.post("/api/event-types", "application/json", def.to_string())
            .await
            .status,
        201
    );
    assert!(gw.shutdown().await);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let d = dir.clone();
    let gw = Gateway::start_with(move |c| {
        c.store = StoreKind::Redb;
        c.data_dir = d;
    })
    .await;
    let id = created["id"].as_str().unwrap();
    let again = gw.get(&format!("/api/registrations/{id}")).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(
        again.body["expires_at"], created["expires_at"],
        "the clock kept running"
    );
    assert_eq!(again.body["destination"]["has_secret"], true);
    let short_id = short["id"].as_str().unwrap();
    gw.get(&format!("/api/registrations/{short_id}"))
        .await
        .assert_problem(404);
    gw.post("/api/events?type=typed", "application/json", "\"text\"")
        .await
        .assert_problem(422);
    let r = gw
        .post(
            "/api/events?device=mac:112233445566&type=t",
            "application/json",
            "7",
        )
        .await;
    assert_eq!(r.status, 202);
    let got = rx.wait_for("/p", 1, Duration::from_secs(10)).await;
    assert_eq!(&got[0].body[..], b"7");
    assert!(rx.received("/short").is_empty());
    assert!(gw.shutdown().await);
    std::fs::remove_dir_all(&dir).unwrap();
}
