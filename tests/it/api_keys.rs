//! Publisher API keys (`--api-keys-file`), through the shipped binary: a key
//! publishes only inside its scope, the file holds digests only, the key
//! never reaches the log, and SIGHUP swaps the file in (a broken one is
//! refused and the old keys stay).

use std::process::Command;

use serde_json::{json, Value};

use crate::support::client::Api;
use crate::support::process::{temp_dir, Process, BIN};
use crate::support::util::series_value;

const MINE: &str = "mac:112233445566";
const NOT_MINE: &str = "mac:665544332211";

/// A new key and its entry, made by the binary's own subcommand.
fn new_key(id: &str, claim: Value) -> (String, Value) {
    let out = Command::new(BIN)
        .args(["new-api-key", id])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let key = lines.next().unwrap().to_owned();
    let mut entry: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert!(!entry.to_string().contains(&key), "the entry holds no key");
    entry["ratatoskr"] = claim;
    (key, entry)
}

async fn publish(p: &Process, key: Option<&str>, device: &str, ty: &str) -> u16 {
    let mut req = p
        .http
        .post(p.url(&format!("/api/events?device={device}&type={ty}")))
        .header("content-type", "application/json")
        .body("{\"n\":1}");
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap().status().as_u16()
}

fn hangup(p: &Process) {
    let ok = Command::new("kill")
        .args(["-HUP", &p.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test]
async fn keys_publish_within_their_scope_and_reload_on_sighup() {
    let dir = temp_dir("api-keys");
    let file = dir.join("keys.json");
    let (key, entry) = new_key("plant-7", json!({"publish": [MINE], "types": ["status*"]}));
    let (admin_key, admin_entry) = new_key("ops", json!({"admin": true}));
    std::fs::write(&file, json!({"keys": [entry, admin_entry]}).to_string()).unwrap();
    let p = Process::start(
        &dir,
        &["--api-keys-file", file.to_str().unwrap(), "--log", "debug"],
    );

    assert_eq!(publish(&p, Some(&key), MINE, "status").await, 202);
    assert_eq!(
        publish(&p, Some(&key), MINE, "reboot").await,
        403,
        "type outside"
    );
    assert_eq!(
        publish(&p, Some(&key), NOT_MINE, "status").await,
        403,
        "device outside"
    );
    assert_eq!(publish(&p, None, MINE, "status").await, 401);
    assert_eq!(publish(&p, Some("rtk_guess"), MINE, "status").await, 401);
    let digest = entry_digest(&file, "plant-7");
    assert_eq!(
        publish(&p, Some(&digest), MINE, "status").await,
        401,
        "the digest is no key"
    );
    // A publisher key manages nothing; an admin key does.
    let regs = |k: &str| {
        p.http
            .get(p.url("/api/event-types"))
            .bearer_auth(k.to_owned())
            .send()
    };
    assert_eq!(regs(&key).await.unwrap().status(), 403);
    assert_eq!(regs(&admin_key).await.unwrap().status(), 200);

    // Rotation: plant-7 gets a new key, the old one goes.
    let (rotated, entry) = new_key("plant-7", json!({"publish": [MINE]}));
    std::fs::write(&file, json!({"keys": [entry]}).to_string()).unwrap();
    hangup(&p);
    p.wait_log(&["credentials reloaded"]).await;
    assert_eq!(publish(&p, Some(&rotated), MINE, "reboot").await, 202);
    assert_eq!(
        publish(&p, Some(&key), MINE, "status").await,
        401,
        "the old key is gone"
    );

    // A broken file is refused: the keys in force stay.
    std::fs::write(&file, "{\"keys\": [{\"id\": \"x\"").unwrap();
    hangup(&p);
    p.wait_log(&["credentials not reloaded"]).await;
    assert_eq!(publish(&p, Some(&rotated), MINE, "status").await, 202);
    let metrics = p.get("/metrics").await.text;
    for result in ["ok", "failed"] {
        let series = format!("ratatoskr_credentials_reloads_total{{result=\"{result}\"}}");
        assert_eq!(
            series_value(&metrics, &series),
            Some(1.0),
            "{series} in\n{metrics}"
        );
    }

    let log = p.log.lock().unwrap().join("\n");
    for secret in [&key, &admin_key, &rotated] {
        assert!(!log.contains(secret.as_str()), "a key reached the log");
    }
    drop(p);
    std::fs::remove_dir_all(dir).unwrap();
}

fn entry_digest(file: &std::path::Path, id: &str) -> String {
    let doc: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_bad_keys_file_stops_the_start_with_the_entry_named() {
    let dir = temp_dir("api-keys-bad");
    let file = dir.join("keys.json");
    std::fs::write(
        &file,
        json!({"keys": [{"id": "plant-7", "sha256": "abc"}]}).to_string(),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--store", "memory"])
        .arg("--api-keys-file")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plant-7") && err.contains("64 hexadecimal"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A client bound to `local` (another loopback address, so that each has
/// its own per-address allowance), sending `key`.
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some(local.parse().unwrap()))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_key_has_one_allowance_whatever_address_it_comes_from() {
    let dir = temp_dir("api-keys-rate");
    let file = dir.join("keys.json");
    let (shared, a) = new_key("shared", json!({"publish": ["*"]}));
    let (other, b) = new_key("other", json!({"publish": ["*"]}));
    std::fs::write(&file, json!({"keys": [a, b]}).to_string()).unwrap();
    let gw = crate::support::util::Gateway::start_with(|c| {
        c.api_keys_file = Some(file.clone());
        c.rate_limit_ingest = 3;
    })
    .await;
    // Built before the burst: building a client takes long enough on a
    // busy machine for the allowance to refill between the posts.
    let clients: std::collections::HashMap<&str, reqwest::Client> =
        ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
            .into_iter()
            .map(|from| (from, client_from(from)))
            .collect();
    let post = |from: &str, key: &str| {
        let req = clients[from]
            .post(gw.url(&format!("/api/events?device={MINE}")))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body("{}");
        async move { req.send().await.unwrap() }
    };
    // The same key from two addresses: each address is under its own
    // allowance, the key is not.
    let mut statuses = Vec::new();
    for from in [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.2",
    ] {
        statuses.push(post(from, &shared).await.status().as_u16());
    }
    assert_eq!(&statuses[..3], [202, 202, 202], "{statuses:?}");
    let refused = post("127.0.0.3", &shared).await;
    assert_eq!(refused.status(), 429, "{statuses:?}");
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // Another key, from a fresh address, is not held back by it.
    assert_eq!(post("127.0.0.4", &other).await.status(), 202);
    let metrics = gw.get("/metrics").await.text;
    assert!(
        series_value(
            &metrics,
            r#"ratatoskr_rate_limited_total{limit="ingest",by="key"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Sends SIGHUP to this test's own process: the gateway in it reloads
/// (nextest runs each test in a process of its own).
fn hangup_self() {
    let ok = Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test]
async fn a_stream_opened_with_a_key_a_reload_removed_ends_with_revoked_and_the_key_gets_401() {
    use std::time::Duration;
    let dir = temp_dir("api-keys-revoke");
    let file = dir.join("keys.json");
    let claim = json!({"subscribe": [MINE], "publish": [MINE]});
    let (gone, mut gone_entry) = ratatoskr::auth::keys::new_key("gone").unwrap();
    let (kept, mut kept_entry) = ratatoskr::auth::keys::new_key("kept").unwrap();
    gone_entry["ratatoskr"] = claim.clone();
    kept_entry["ratatoskr"] = claim;
    std::fs::write(
        &file,
        json!({"keys": [gone_entry, kept_entry.clone()]}).to_string(),
    )
    .unwrap();
    let keys_file = file.clone();
    let gw = crate::support::util::Gateway::start_with(|c| c.api_keys_file = Some(keys_file)).await;
    async fn open(
        gw: &crate::support::util::Gateway,
        key: &str,
    ) -> crate::support::util::SseClient {
        gw.subscribe_with(
            &format!("/events?device={MINE}"),
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await
    }
    async fn post(gw: &crate::support::util::Gateway, key: &str, n: i64) -> u16 {
        gw.post_with(
            &format!("/api/events?device={MINE}"),
            "application/json",
            json!({"n": n}).to_string(),
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await
        .status
    }
    let mut doomed = open(&gw, &gone).await;
    let mut staying = open(&gw, &kept).await;
    assert_eq!(post(&gw, &kept, 1).await, 202);
    assert_eq!(doomed.expect_event().await.json()["n"], 1);
    assert_eq!(staying.expect_event().await.json()["n"], 1);

    std::fs::write(&file, json!({"keys": [kept_entry]}).to_string()).unwrap();
    hangup_self();
    let revoked = doomed
        .next_event(Duration::from_secs(5))
        .await
        .expect("a revoked notice within 5 s of the reload that removed the key");
    assert_eq!(revoked.event.as_deref(), Some("revoked"), "{revoked:?}");
    assert!(revoked.json()["last_event_id"].is_string(), "{revoked:?}");
    assert!(
        doomed.next_item(Duration::from_secs(2)).await.is_none() && doomed.ended,
        "the stream closes after revoked"
    );
    let again = gw
        .http
        .get(gw.url(&format!("/events?device={MINE}")))
        .bearer_auth(&gone)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 401, "the reconnect with the removed key");
    assert_eq!(post(&gw, &kept, 2).await, 202);
    assert_eq!(
        staying.expect_event().await.json()["n"],
        2,
        "the key the reload kept keeps its stream"
    );
    drop(gw);
    std::fs::remove_dir_all(dir).unwrap();
}
