//! Rotating a webhook secret with a grace period (`PUT` with a new
//! `destination.secret` and `previous_secret_ttl`), checked by a receiver
//! that verifies with the official Standard Webhooks library (PyPI's
//! `standardwebhooks`, from the test virtualenv, through
//! tests/clients/standard_webhooks_verify.py), as a consumer would.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use ratatoskr::state::store::StoreKind;
use serde_json::{json, Value};

use crate::forward::{publish, register_ok};
use crate::support::client::Api;
use crate::support::receiver::{Received, Receiver};
use crate::support::util::{Gateway, Reply};

const DEVICE: &str = "mac:112233445566";
const WAIT: Duration = Duration::from_secs(10);

/// A fresh `whsec_` secret: 24 random bytes, base64 (no padding), as the
/// library and the gateway both read it.
fn whsec() -> String {
    let mut key = uuid::Uuid::new_v4().as_bytes().to_vec();
    key.extend_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// What the library says of one request: whether each named secret
/// verifies it, and for each signature in `webhook-signature` (in order)
/// the secrets that verify it alone.
#[derive(Debug, serde::Deserialize)]
struct Verdict {
    verifies: BTreeMap<String, bool>,
    parts: Vec<Vec<String>>,
}

/// Verifies `request` with each of `secrets` through the library.
async fn verify(secrets: &[(&str, &str)], request: &Received) -> Verdict {
    let python = crate::support::skip::venv_tool("python")
        .expect("each test that verifies checks for the virtualenv first");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/standard_webhooks_verify.py"
    );
    let input = json!({
        "secrets": secrets.iter().copied().collect::<BTreeMap<_, _>>(),
        "requests": [{
            "body": base64::engine::general_purpose::STANDARD.encode(&request.body),
            "headers": {
                "webhook-id": request.header("webhook-id"),
                "webhook-timestamp": request.header("webhook-timestamp"),
                "webhook-signature": request.header("webhook-signature"),
            },
        }],
    });
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut verdicts: Vec<Verdict> = serde_json::from_slice(&out.stdout).unwrap();
    verdicts.remove(0)
}

/// `sha1=<hex>` of HMAC-SHA1 over `body`, keyed with the secret as given.
fn xmidt(secret: &str, body: &[u8]) -> String {
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(body);
    format!("sha1={}", hex::encode(m.finalize().into_bytes()))
}

async fn put(gw: &Gateway, id: &str, body: &Value) -> Reply {
    gw.put_json(&format!("/api/registrations/{id}"), body).await
}

/// Registers `path` of `rx` with `secret`; returns the registration's id.
async fn register_with(gw: &Gateway, rx: &Receiver, path: &str, secret: &str) -> String {
    let created = register_ok(
        gw,
        &json!({"device": DEVICE, "duration": "10m",
                "destination": {"type": "http", "url": rx.url(path), "secret": secret}}),
    )
    .await;
    created["id"].as_str().unwrap().to_owned()
}

/// Publishes one event and returns its delivery, the `n`th to `path`.
async fn deliver(gw: &Gateway, rx: &Receiver, path: &str, n: usize) -> Received {
    publish(gw, DEVICE, "t", &json!({"n": n})).await;
    rx.wait_for(path, n, WAIT).await[n - 1].clone()
}

fn signatures(r: &Received) -> usize {
    r.header("webhook-signature").split(' ').count()
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_new_one_until_its_grace_ends() {
    if crate::support::skip::venv_tool("python").is_none() {
        return;
    }
    let (old, new) = (whsec(), whsec());
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    let id = register_with(&gw, &rx, "/r", &old).await;
    let rotated = put(
        &gw,
        &id,
        &json!({"device": DEVICE, "duration": "10m",
                "destination": {"type": "http", "url": rx.url("/r"), "secret": new,
                                "previous_secret_ttl": "8s"}}),
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let d = &rotated.body["destination"];
    assert_eq!(d["has_secret"], true);
    assert_eq!(d["has_previous_secret"], true, "{d}");
    let until: chrono::DateTime<chrono::Utc> = d["previous_secret_expires_at"]
        .as_str()
        .unwrap_or_else(|| panic!("{d}"))
        .parse()
        .unwrap();
    let left = until - chrono::Utc::now();
    assert!(
        left <= chrono::Duration::seconds(8) && left > chrono::Duration::zero(),
        "{until}"
    );

    // During the grace: both secrets verify, the new one's signature first.
    // The grace is long enough for a loaded CI machine to deliver within it.
    let during = deliver(&gw, &rx, "/r", 1).await;
    let signed_at: i64 = during.header("webhook-timestamp").parse().unwrap();
    assert!(
        signed_at <= until.timestamp(),
        "signed after the grace: {until}"
    );
    assert_eq!(signatures(&during), 2, "{:?}", during.headers);
    let v = &verify(&[("old", &old), ("new", &new)], &during).await;
    assert!(v.verifies["new"], "{v:?}");
    assert!(v.verifies["old"], "{v:?}");
    assert_eq!(v.parts, [vec!["new"], vec!["old"]], "new first: {v:?}");
    // xmidt carries the new one only.
    assert_eq!(
        during.header("x-webpa-signature"),
        xmidt(&new, &during.body)
    );
    assert_ne!(
        during.header("x-webpa-signature"),
        xmidt(&old, &during.body)
    );

    // Neither secret is ever shown.
    for text in [
        rotated.text.clone(),
        gw.get(&format!("/api/registrations/{id}")).await.text,
        gw.get("/api/registrations").await.text,
    ] {
        for secret in [&old, &new] {
            let key = secret.trim_start_matches("whsec_");
            assert!(!text.contains(key), "a secret leaked: {text}");
        }
        assert!(!text.contains("previous_secret_ttl"), "{text}");
    }

    // After it: the new one only, one signature.
    let wait = (until - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    let after = deliver(&gw, &rx, "/r", 2).await;
    assert_eq!(signatures(&after), 1, "{:?}", after.headers);
    let v = &verify(&[("old", &old), ("new", &new)], &after).await;
    assert!(v.verifies["new"], "{v:?}");
    assert!(!v.verifies["old"], "the grace is over: {v:?}");
    assert_eq!(after.header("x-webpa-signature"), xmidt(&new, &after.body));
    let shown = gw.get(&format!("/api/registrations/{id}")).await.body;
    assert_eq!(shown["destination"]["has_previous_secret"], false);
    assert!(shown["destination"]["previous_secret_expires_at"].is_null());
}

#[tokio::test]
async fn a_new_secret_without_a_ttl_retires_the_old_one_at_once() {
    if crate::support::skip::venv_tool("python").is_none() {
        return;
    }
    let (old, new) = (whsec(), whsec());
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    let id = register_with(&gw, &rx, "/n", &old).await;
    let before = deliver(&gw, &rx, "/n", 1).await;
    let v = &verify(&[("old", &old), ("new", &new)], &before).await;
    assert_eq!(
        (v.verifies["old"], v.verifies["new"]),
        (true, false),
        "{v:?}"
    );
    let r = put(
        &gw,
        &id,
        &json!({"device": DEVICE, "duration": "10m",
                "destination": {"type": "http", "url": rx.url("/n"), "secret": new}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["destination"]["has_previous_secret"], false);
    let after = deliver(&gw, &rx, "/n", 2).await;
    assert_eq!(signatures(&after), 1, "{:?}", after.headers);
    let v = &verify(&[("old", &old), ("new", &new)], &after).await;
    assert_eq!(
        (v.verifies["old"], v.verifies["new"]),
        (false, true),
        "{v:?}"
    );
}

#[tokio::test]
async fn a_put_that_leaves_the_secret_out_keeps_it_and_the_running_grace() {
    if crate::support::skip::venv_tool("python").is_none() {
        return;
    }
    let (old, new) = (whsec(), whsec());
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    let id = register_with(&gw, &rx, "/k", &old).await;
    let rotated = put(
        &gw,
        &id,
        &json!({"device": DEVICE, "duration": "10m",
                "destination": {"type": "http", "url": rx.url("/k"), "secret": new,
                                "previous_secret_ttl": 300}}),
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let until = rotated.body["destination"]["previous_secret_expires_at"].clone();
    assert!(until.is_string(), "{}", rotated.text);
    // A renewal without the secret (and with a ttl, which then rotates
    // nothing): the same secrets, the same end of the grace.
    let renewed = put(
        &gw,
        &id,
        &json!({"device": DEVICE, "duration": "20m",
                "destination": {"type": "http", "url": rx.url("/k"),
                                "previous_secret_ttl": "10m"}}),
    )
    .await;
    assert_eq!(renewed.status, 200, "{}", renewed.text);
    let d = &renewed.body["destination"];
    assert_eq!(
        (&d["has_secret"], &d["has_previous_secret"]),
        (&json!(true), &json!(true)),
        "{d}"
    );
    assert_eq!(d["previous_secret_expires_at"], until, "the grace runs on");
    let r = deliver(&gw, &rx, "/k", 1).await;
    let v = &verify(&[("old", &old), ("new", &new)], &r).await;
    assert_eq!(v.parts, [vec!["new"], vec!["old"]], "{v:?}");
}

#[tokio::test]
async fn drop_notices_carry_both_signatures_during_the_grace() {
    if crate::support::skip::venv_tool("python").is_none() {
        return;
    }
    let (old, new) = (whsec(), whsec());
    let rx = Receiver::start().await;
    rx.delay("/slow", Duration::from_secs(3));
    let gw = Gateway::start_with(|c| {
        c.destination_buffer = 2;
        c.destination_concurrency = 1;
        c.notice_interval = Duration::from_secs(60);
    })
    .await;
    let created = register_ok(
        &gw,
        &json!({"device": DEVICE, "duration": "10m",
                "destination": {"type": "http", "url": rx.url("/slow"),
                                "failure_url": rx.url("/notice"), "secret": old}}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let r = put(
        &gw,
        id,
        &json!({"device": DEVICE, "duration": "10m",
                "destination": {"type": "http", "url": rx.url("/slow"),
                                "failure_url": rx.url("/notice"), "secret": new,
                                "previous_secret_ttl": "5m"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for i in 0..10 {
        publish(&gw, DEVICE, "t", &json!(i)).await;
    }
    let notice = rx.wait_for("/notice", 1, WAIT).await[0].clone();
    assert_eq!(notice.header("x-ratatoskr-notice"), "dropped");
    assert_eq!(
        notice.header("x-webpa-signature"),
        xmidt(&new, &notice.body)
    );
    let v = &verify(&[("old", &old), ("new", &new)], &notice).await;
    assert_eq!(v.parts, [vec!["new"], vec!["old"]], "{v:?}");
}

#[tokio::test]
async fn bad_previous_secret_ttls_are_refused_naming_the_field() {
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    let id = register_with(&gw, &rx, "/b", &whsec()).await;
    let new = whsec();
    for (ttl, needle) in [
        (json!("soon"), "not a duration"),
        (json!(0), "more than 0"),
        (json!("-5m"), "negative"),
        (json!(1.5), "positive"),
        (json!("2h"), "maximum"),
        (json!("11m"), "longer than the registration's duration"),
        (json!([1]), "not an array"),
    ] {
        let r = put(
            &gw,
            &id,
            &json!({"device": DEVICE, "duration": "10m",
                    "destination": {"type": "http", "url": rx.url("/b"), "secret": new,
                                    "previous_secret_ttl": ttl}}),
        )
        .await;
        r.assert_problem(422);
        assert_eq!(
            r.body["errors"][0]["field"], "destination.previous_secret_ttl",
            "{ttl}: {}",
            r.text
        );
        let message = r.body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{ttl}: {}", r.text);
    }
    // The gateway keeps the previous secret; a request cannot name one.
    let r = put(
        &gw,
        &id,
        &json!({"device": DEVICE, "duration": "10m",
                "destination": {"type": "http", "url": rx.url("/b"), "secret": new,
                                "previous_secret": {"secret": "mine",
                                                    "expires_at": "2099-01-01T00:00:00Z"}}}),
    )
    .await;
    r.assert_problem(422);
    assert_eq!(
        r.body["errors"][0]["field"], "destination.previous_secret",
        "{}",
        r.text
    );
    // Unknown fields are still refused.
    put(
        &gw,
        &id,
        &json!({"device": DEVICE, "duration": "10m",
                "destination": {"type": "http", "url": rx.url("/b"), "secret": new,
                                "previous_secret_tll": "1m"}}),
    )
    .await
    .assert_problem(422);
    // Nothing of the refused requests took.
    let shown = gw.get(&format!("/api/registrations/{id}")).await.body;
    assert_eq!(shown["destination"]["has_previous_secret"], false);
}

#[tokio::test]
async fn a_grace_period_survives_a_restart() {
    if crate::support::skip::venv_tool("python").is_none() {
        return;
    }
    if crate::support::util::embedded_only(
        "it restarts on a redb data dir; cluster registrations live in Redis (tests/it/cluster.rs)",
    ) {
        return;
    }
    let (old, new) = (whsec(), whsec());
    let dir = std::env::temp_dir().join(format!("ratatoskr-it-{}", uuid::Uuid::new_v4()));
    let on_disk = |dir: std::path::PathBuf| {
        move |c: &mut ratatoskr::config::Config| {
            c.store = StoreKind::Redb;
            c.data_dir = dir;
        }
    };
    let rx = Receiver::start().await;
    let gw = Gateway::start_with(on_disk(dir.clone())).await;
    let id = register_with(&gw, &rx, "/p", &old).await;
    let rotated = put(
        &gw,
        &id,
        &json!({"device": DEVICE, "duration": "10m",
                "destination": {"type": "http", "url": rx.url("/p"), "secret": new,
                                "previous_secret_ttl": "5m"}}),
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    assert!(gw.shutdown().await);
    // The stopped gateway's last tasks let go of the file shortly after.
    let mut free = ratatoskr::state::store::Store::open(StoreKind::Redb, &dir).is_ok();
    for _ in 0..100 {
        if free {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        free = ratatoskr::state::store::Store::open(StoreKind::Redb, &dir).is_ok();
    }
    assert!(free, "the store is still held");

    let gw = Gateway::start_with(on_disk(dir.clone())).await;
    let again = gw.get(&format!("/api/registrations/{id}")).await;
    assert_eq!(
        again.body["destination"], rotated.body["destination"],
        "the same destination, grace and all"
    );
    let r = deliver(&gw, &rx, "/p", 1).await;
    let v = &verify(&[("old", &old), ("new", &new)], &r).await;
    assert_eq!(v.parts, [vec!["new"], vec!["old"]], "{v:?}");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
