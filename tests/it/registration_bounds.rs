//! What one registration may make the gateway keep and compute: compiled
//! pattern bytes (per pattern, per registration, in all), URL and header
//! sizes, a byte budget over every registration, and compilation kept off
//! the async workers.

use std::time::{Duration, Instant};

use ratatoskr::state::store::StoreKind;
use ratatoskr::state::store::{Collection, Store};
use serde_json::{json, Value};

use crate::forward::{register, register_ok};
use crate::support::client::Api;
use crate::support::util::Gateway;

const DEVICE: &str = "mac:112233445566";

fn with_types(url: &str, types: &[String]) -> Value {
    json!({"device": DEVICE, "duration": "10m",
           "destination": {"type": "http", "url": url},
           "filter": {"types": types}})
}

fn field_of(r: &crate::support::util::Reply, i: usize) -> String {
    r.body["errors"][i]["field"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_10_byte_regex_compiling_past_256_kib_is_refused_with_422() {
    let gw = Gateway::start().await;
    // `\w{10}`: 6 bytes of pattern, over half a MiB compiled (Unicode \w).
    let r = register(
        &gw,
        &with_types("http://127.0.0.1:9/x", &[r"re:\w{10}".to_owned()]),
    )
    .await;
    r.assert_problem(422);
    assert_eq!(field_of(&r, 0), "filter.types[0]", "{}", r.text);
    assert!(r.text.contains("262144"), "names the bound: {}", r.text);
    // The xmidt hook endpoint makes registrations too: 400 there, as
    // Caduceus answers.
    let hook = json!({"config": {"url": "http://127.0.0.1:9/h"}, "events": [r"\w{10}"],
                      "duration": 60});
    let r = gw.post("/hook", "application/json", hook.to_string()).await;
    r.assert_problem(400);
    assert!(r.text.contains("262144"), "{}", r.text);
    let hook = json!({"config": {"url": "http://127.0.0.1:9/h"}, "events": [".*"],
                      "matcher": {"device_id": [r"\w{10}"]}, "duration": 60});
    let r = gw.post("/hook", "application/json", hook.to_string()).await;
    r.assert_problem(400);
}

#[tokio::test]
async fn patterns_compiling_past_2_mib_in_one_registration_are_refused_with_422() {
    let gw = Gateway::start().await;
    // 64 patterns of 7 bytes, each about 240 KiB compiled: 15 MiB for one
    // registration of about 1 KiB.
    let types: Vec<String> = (0..64).map(|i| format!(r"re:\w{{4}}{i}")).collect();
    let r = register(&gw, &with_types("http://127.0.0.1:9/x", &types)).await;
    r.assert_problem(422);
    assert!(
        r.text
            .contains("2097152 bytes of compiled patterns per registration"),
        "{}",
        r.text
    );
    // A few such patterns fit.
    register_ok(&gw, &with_types("http://127.0.0.1:9/x", &types[..4])).await;
}

#[tokio::test]
async fn compiled_patterns_count_in_the_all_registrations_byte_budget() {
    let gw = Gateway::start_with(|c| c.max_registration_bytes = 4 << 20).await;
    // About 1.9 MiB compiled each: two fit in 4 MiB, the third does not.
    let types: Vec<String> = (0..8).map(|i| format!(r"re:\w{{4}}{i}")).collect();
    let mut accepted = Vec::new();
    let mut refused = None;
    for _ in 0..4 {
        let r = register(&gw, &with_types("http://127.0.0.1:9/x", &types)).await;
        if r.status == 201 {
            accepted.push(r.body["id"].as_str().unwrap().to_owned());
        } else {
            refused = Some(r);
            break;
        }
    }
    assert_eq!(accepted.len(), 2, "two of 1.9 MiB in a 4 MiB budget");
    let r = refused.expect("the budget refused one");
    r.assert_problem(422);
    assert!(
        r.text.contains("--max-registration-bytes") && r.text.contains("4194304"),
        "names the budget: {}",
        r.text
    );
    // Deleting one frees its share.
    let d = gw
        .http
        .delete(gw.url(&format!("/api/registrations/{}", accepted[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(d.status(), 204);
    register_ok(&gw, &with_types("http://127.0.0.1:9/x", &types)).await;
}

#[tokio::test]
async fn urls_over_4_kib_and_headers_over_8_kib_are_refused_with_422() {
    let gw = Gateway::start().await;
    let long = format!("http://127.0.0.1:9/{}", "a".repeat(64 * 1024));
    let r = register(&gw, &with_types(&long, &[])).await;
    r.assert_problem(422);
    assert_eq!(field_of(&r, 0), "destination.url", "{}", r.text);
    assert!(r.text.contains("4096"), "{}", r.text);
    let body = json!({"device": DEVICE, "duration": "10m",
        "destination": {"type": "http", "url": "http://127.0.0.1:9/x",
                        "headers": {"x-big": "v".repeat(16 * 1024)}}});
    let r = register(&gw, &body).await;
    r.assert_problem(422);
    assert_eq!(field_of(&r, 0), "destination.headers.x-big", "{}", r.text);
    assert!(r.text.contains("8192"), "{}", r.text);
    // Several headers under 8 KiB each, 24 KiB in all: over 16 KiB.
    let headers: serde_json::Map<String, Value> = (0..3)
        .map(|i| (format!("x-h{i}"), json!("v".repeat(8000))))
        .collect();
    let body = json!({"device": DEVICE, "duration": "10m",
        "destination": {"type": "http", "url": "http://127.0.0.1:9/x", "headers": headers}});
    let r = register(&gw, &body).await;
    r.assert_problem(422);
    assert!(r.text.contains("16384"), "{}", r.text);
    let hook = json!({"config": {"url": long}, "events": [".*"], "duration": 60});
    let r = gw.post("/hook", "application/json", hook.to_string()).await;
    r.assert_problem(400);
    assert!(r.text.contains("4096"), "{}", r.text);
}

#[tokio::test]
async fn registrations_past_the_256_kib_budget_are_refused_with_422_naming_it() {
    let gw = Gateway::start_with(|c| c.max_registration_bytes = 256 * 1024).await;
    // 4 KiB destinations: under every per-field bound, about 4.3 KiB kept
    // each, so at most 60 fit in 256 KiB; 100 are tried.
    let url = |i: usize| format!("http://127.0.0.1:9/{i:04}{}", "u".repeat(4000));
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..100 {
        let r = register(&gw, &with_types(&url(i), &[])).await;
        if r.status == 201 {
            accepted += 1;
        } else {
            refused = Some(r);
            break;
        }
    }
    assert!(
        (40..=60).contains(&accepted),
        "{accepted} of 100 accepted in 256 KiB"
    );
    let r = refused.expect("the budget refused one of 100");
    r.assert_problem(422);
    assert!(
        r.text.contains("--max-registration-bytes") && r.text.contains("262144"),
        "{}",
        r.text
    );
    let kept = gw.metric("ratatoskr_registration_bytes").await;
    assert!(
        kept > (accepted * 4000) as f64 && kept <= 262144.0,
        "{kept} bytes kept by {accepted} registrations, within 256 KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_within_100_ms_while_8_heavy_registrations_compile() {
    let gw = Gateway::start().await;
    // Heavy but accepted or refused only once compiled: a few hundred KiB
    // of NFA each, up to the per-registration budget.
    let types: Vec<String> = (0..64).map(|i| format!(r"re:\w{{3}}{i}")).collect();
    let body = with_types("http://127.0.0.1:9/x", &types).to_string();
    // Connected before the posts start, so a probe measures the answer
    // only.
    let probe = reqwest::Client::new();
    assert_eq!(
        probe.get(gw.url("/health")).send().await.unwrap().status(),
        200
    );
    let posts: Vec<_> = (0..8)
        .map(|_| {
            let http = gw.http.clone();
            let url = gw.url("/api/registrations");
            let body = body.clone();
            tokio::spawn(async move {
                http.post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    let mut times = Vec::new();
    let started = Instant::now();
    while posts.iter().any(|p| !p.is_finished()) && started.elapsed() < Duration::from_secs(60) {
        let t = Instant::now();
        let r = probe.get(gw.url("/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        times.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    times.sort();
    eprintln!("/health while compiling: {} probes, {times:?}", times.len());
    let worst = times.last().copied().unwrap_or_default();
    for p in posts {
        let status = p.await.unwrap().unwrap();
        assert!(status == 201 || status == 422, "{status}");
    }
    assert!(
        worst < Duration::from_millis(100),
        "/health took {worst:?} (over 100 ms) while registrations compiled"
    );
}

#[tokio::test]
async fn a_stored_registration_past_the_new_bounds_loads_disabled() {
    if crate::support::util::embedded_only("it restarts on a redb data dir") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ratatoskr-it-{}", uuid::Uuid::new_v4()));
    let start = |d: std::path::PathBuf| {
        Gateway::start_with(move |c| {
            c.store = StoreKind::Redb;
            c.data_dir = d;
        })
    };
    let gw = start(dir.clone()).await;
    let big_url = register_ok(&gw, &with_types("http://127.0.0.1:9/a", &[])).await;
    let big_regex = register_ok(&gw, &with_types("http://127.0.0.1:9/b", &[])).await;
    assert!(gw.shutdown().await);
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
        let store = store.unwrap();
        let plant = |id: &str, change: &dyn Fn(&mut Value)| {
            let (_, doc) = store
                .load(Collection::Registrations)
                .unwrap()
                .into_iter()
                .find(|(i, _)| i == id)
                .unwrap();
            let mut doc: Value = serde_json::from_slice(&doc).unwrap();
            change(&mut doc);
            store
                .put(
                    Collection::Registrations,
                    id,
                    &serde_json::to_vec(&doc).unwrap(),
                )
                .unwrap();
        };
        plant(big_url["id"].as_str().unwrap(), &|d| {
            d["destination"]["url"] = json!(format!("http://127.0.0.1:9/{}", "a".repeat(65536)));
        });
        plant(big_regex["id"].as_str().unwrap(), &|d| {
            d["filter"]["types"] = json!([r"re:\w{10}"]);
        });
    }
    let gw = start(dir.clone()).await;
    for (created, bound) in [(&big_url, "4096"), (&big_regex, "262144")] {
        let id = created["id"].as_str().unwrap();
        let r = gw.get(&format!("/api/registrations/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["status"], "disabled", "{}", r.text);
        let reason = r.body["disabled_reason"].as_str().unwrap();
        assert!(reason.contains(bound), "{reason}");
    }
    let metrics = gw.get("/metrics").await.text;
    assert_eq!(
        crate::support::util::series_value(
            &metrics,
            "ratatoskr_stored_disabled_total{kind=\"registration\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert!(gw.shutdown().await);
    std::fs::remove_dir_all(&dir).unwrap();
}
