//! The redb store: registrations and event types survive a restart, and
//! their clocks keep running.

use std::time::Duration;

use ratatoskr::state::store::StoreKind;
use serde_json::json;

use crate::forward::register_ok;
use crate::support::client::Api;
use crate::support::receiver::Receiver;
use crate::support::util::Gateway;

#[tokio::test]
async fn registrations_survive_a_restart() {
    if crate::support::util::embedded_only(
        "it restarts on a redb data dir; cluster registrations live in Redis (tests/it/cluster.rs)",
    ) {
        return;
    }
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
    // Restart only once the short registration has expired (wall clock).
    let expires: chrono::DateTime<chrono::Utc> =
        short["expires_at"].as_str().unwrap().parse().unwrap();
    while chrono::Utc::now() <= expires {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

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

#[tokio::test]
async fn ids_keep_increasing_across_a_restart_even_if_the_clock_went_back() {
    if crate::support::util::embedded_only(
        "cluster ids are the shared stream ids, not a local high-water mark",
    ) {
        return;
    }
    use ratatoskr::state::store::{Collection, Store};
    let dir = std::env::temp_dir().join(format!("ratatoskr-it-{}", uuid::Uuid::new_v4()));
    let start = |d: std::path::PathBuf| {
        Gateway::start_with(move |c| {
            c.store = StoreKind::Redb;
            c.data_dir = d;
        })
    };
    let gw = start(dir.clone()).await;
    let before = gw.publish_json(&json!(1)).await;
    assert!(gw.shutdown().await);
    // As if the previous process ran a day ahead of today's clock.
    let ahead = ratatoskr::event::EventId::floor_at(
        (chrono::Utc::now() + chrono::Duration::days(1)).timestamp_millis() as u64,
    );
    {
        // The stopped gateway's last tasks let go of the file shortly after.
        let mut store = Store::open(StoreKind::Redb, &dir);
        for _ in 0..100 {
            if store.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            store = Store::open(StoreKind::Redb, &dir);
        }
        store
            .unwrap()
            .put(
                Collection::Meta,
                "event_id_high_water",
                ahead.to_string().as_bytes(),
            )
            .unwrap();
    }
    let gw = start(dir.clone()).await;
    let after = gw.publish_json(&json!(2)).await;
    assert!(after > ahead.to_string(), "{after} continues above {ahead}");
    assert!(after > before);
    // A client holding an id from before the restart resumes from the
    // event log, with no gap: the next event it gets is the new one.
    let mut sub = gw
        .subscribe_with("/events", &[("last-event-id", &before)])
        .await;
    let next = sub.expect_event().await;
    assert_eq!(next.id.as_deref(), Some(after.as_str()), "{next:?}");
    assert!(gw.shutdown().await);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_store_written_by_the_redb_2_release_is_converted_with_a_backup_kept() {
    let dir = crate::support::process::temp_dir("redb2");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/redb2/ratatoskr.redb.gz"
    );
    let out = std::process::Command::new("gzip")
        .args(["-dc", fixture])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(dir.join("ratatoskr.redb"), &out.stdout).unwrap();

    let p = crate::support::process::Process::start(&dir, &[]);
    let log = p.wait_log(&["converted from the redb 2 format"]).await;
    assert!(log.contains("converted from the redb 2 format"), "{log}");
    assert!(dir.join("ratatoskr.redb.v2-backup").exists());
    let t = p.get("/api/event-types/online").await;
    assert_eq!(t.status, 200, "{}", t.text);
    assert_eq!(t.body["description"], "made by the redb 2 release");
    let a = p.get("/api/accounts/acme/devices").await;
    assert_eq!(
        a.body["devices"],
        serde_json::json!(["mac:112233445566", "serial:acme-7"])
    );
    // Ids go on above the old release's high-water mark.
    let r = p
        .post_json(
            "/api/events?device=mac:112233445566",
            &serde_json::json!({"n": 4}),
        )
        .await;
    assert_eq!(r.status, 202);
    assert!(r.body["id"].as_str().unwrap() > "01a22c7b93010000");
    assert_eq!(p.stop().await, Some(0));

    // The next start opens the converted file as it is.
    let p = crate::support::process::Process::start(&dir, &[]);
    assert_eq!(p.get("/api/event-types/online").await.status, 200);
    let log = p.log.lock().unwrap().join("\n");
    assert!(!log.contains("converted from the redb 2 format"), "{log}");
    drop(p);
    std::fs::remove_dir_all(dir).unwrap();
}
