//! Hostile and mistaken input against the real binary: refused with a
//! clear 4xx, never a crash; a stored object that breaks a limit loads
//! disabled and the gateway still starts on the same data dir.

use std::time::Duration;

use ratatoskr::state::store::StoreKind;
use ratatoskr::state::store::{Collection, Store};
use serde_json::{json, Value};

use crate::support::client::Api;
use crate::support::process::{temp_dir, Process};
use crate::support::receiver::Receiver;
use crate::support::util::series_value;

/// The expressions that used to abort the process with a stack overflow.
pub fn stack_killers() -> Vec<String> {
    vec![
        vec!["1"; 2000].join("+"),
        format!("event.payload{}", ".a".repeat(1990)),
        format!("{}1{}", "(".repeat(1500), ")".repeat(1500)),
        "!".repeat(3000) + "true",
        format!("{}1{}", "[".repeat(1000), "]".repeat(1000)),
    ]
}

fn registration(url: &str, expression: &str) -> Value {
    json!({"device": "mac:112233445566", "duration": "10m",
           "destination": {"type": "http", "url": url},
           "filter": {"expression": expression}})
}

/// Rewrites the stored registration `id`'s expression, as an older
/// version of the gateway (with fewer limits) could have stored it.
fn plant_expression(dir: &std::path::Path, id: &str, expression: &str) {
    let store = Store::open(StoreKind::Redb, dir).unwrap();
    let (_, doc) = store
        .load(Collection::Registrations)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == id)
        .expect("stored registration");
    let mut doc: Value = serde_json::from_slice(&doc).unwrap();
    doc["filter"]["expression"] = json!(expression);
    store
        .put(
            Collection::Registrations,
            id,
            &serde_json::to_vec(&doc).unwrap(),
        )
        .unwrap();
}

#[tokio::test]
async fn hostile_cel_is_refused_and_a_stored_one_loads_disabled() {
    let dir = temp_dir("hostile-cel");
    let rx = Receiver::start().await;
    let mut gw = Process::start(&dir, &[]);
    for src in stack_killers() {
        assert!(src.len() <= 4096);
        let r = gw
            .post_json("/api/registrations", &registration(&rx.url("/x"), &src))
            .await;
        r.assert_problem(422);
        assert_eq!(
            r.body["errors"][0]["field"], "filter.expression",
            "{}",
            r.text
        );
        assert!(gw.alive(), "the gateway died on {}", &src[..40]);
    }
    // Macros bind their own variables, and run end to end.
    let created = gw
        .post_json(
            "/api/registrations",
            &registration(&rx.url("/ok"), "event.payload.readings.exists(r, r > 30)"),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    for readings in [json!([10, 20]), json!([10, 40])] {
        let r = gw
            .post_json(
                "/api/events?device=mac:112233445566&type=t",
                &json!({ "readings": readings }),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let got = rx.wait_for("/ok", 1, Duration::from_secs(10)).await;
    assert!(std::str::from_utf8(&got[0].body).unwrap().contains("40"));
    assert_eq!(gw.stop().await, Some(0));

    // A registration stored before the limits existed: the start survives.
    plant_expression(&dir, &id, &stack_killers()[0]);
    let mut gw = Process::start(&dir, &[]);
    let r = gw.get(&format!("/api/registrations/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "disabled");
    let reason = r.body["disabled_reason"].as_str().unwrap();
    assert!(reason.contains("filter.expression"), "{reason}");
    let listed = gw.get("/api/registrations").await;
    assert_eq!(listed.body["items"][0]["status"], "disabled");
    let metrics = gw.get("/metrics").await.text;
    assert!(
        series_value(
            &metrics,
            "ratatoskr_stored_disabled_total{kind=\"registration\"}"
        ) == Some(1.0),
        "{metrics}"
    );
    assert!(gw
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("loaded disabled")));
    let r = gw
        .post_json(
            "/api/events?device=mac:112233445566&type=t",
            &json!({"readings": [99]}),
        )
        .await;
    assert_eq!(r.status, 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(gw.alive());
    assert_eq!(
        rx.received("/ok").len(),
        1,
        "a disabled registration receives nothing"
    );
    // Replacing it with a valid filter brings it back.
    let r = gw
        .http
        .put(gw.url(&format!("/api/registrations/{id}")))
        .json(&registration(&rx.url("/ok"), "true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw.get(&format!("/api/registrations/{id}")).await;
    assert_eq!(r.body["status"], "active");
    assert_eq!(gw.stop().await, Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn cyclic_schemas_are_refused_and_a_stored_one_loads_disabled() {
    let dir = temp_dir("hostile-schema");
    let gw = Process::start(&dir, &[]);
    for (schema, cycle) in [
        (json!({"allOf": [{"$ref": "#"}]}), "# → #/allOf/0 → #"),
        (
            json!({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}}),
            "#/$defs/a → #/$defs/b → #/$defs/a",
        ),
        (
            json!({"$dynamicAnchor": "n", "anyOf": [{"$dynamicRef": "#n"}]}),
            "# → #/anyOf/0 → #",
        ),
    ] {
        let r = gw
            .post_json(
                "/api/event-types",
                &json!({"name": "loop", "schema": schema}),
            )
            .await;
        r.assert_problem(422);
        assert!(r.text.contains(cycle), "{cycle} in {}", r.text);
    }
    let ok = gw
        .post_json(
            "/api/event-types",
            &json!({"name": "tree", "schema": {"type": "object"}}),
        )
        .await;
    assert_eq!(ok.status, 201, "{}", ok.text);
    assert_eq!(gw.stop().await, Some(0));

    // Stored by an older version: loads disabled, and the start survives.
    {
        let store = Store::open(StoreKind::Redb, &dir).unwrap();
        let (_, doc) = store.load(Collection::EventTypes).unwrap().remove(0);
        let mut doc: Value = serde_json::from_slice(&doc).unwrap();
        doc["schema"] = json!({"allOf": [{"$ref": "#"}]});
        let doc = serde_json::to_vec(&doc).unwrap();
        store.put(Collection::EventTypes, "tree", &doc).unwrap();
    }
    let mut gw = Process::start(&dir, &[]);
    let r = gw.get("/api/event-types/tree").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body["disabled"]
            .as_str()
            .unwrap()
            .contains("# → #/allOf/0 → #"),
        "{}",
        r.text
    );
    let metrics = gw.get("/metrics").await.text;
    assert_eq!(
        series_value(
            &metrics,
            "ratatoskr_stored_disabled_total{kind=\"event_type\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    let r = gw
        .post_json("/api/events?type=tree", &json!({"a": [1, 2, 3]}))
        .await;
    r.assert_problem(422);
    assert!(r.text.contains("disabled"), "{}", r.text);
    assert!(gw.alive());
    assert_eq!(gw.stop().await, Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn costly_type_globs_are_refused_with_the_limit() {
    let dir = temp_dir("hostile-globs");
    let mut gw = Process::start(&dir, &["--store", "memory"]);
    let hostile = "*a".repeat(120);
    let query: Vec<String> = (0..32).map(|_| format!("type={hostile}")).collect();
    let path = format!("/events?{}", query.join("&"));
    for _ in 0..50 {
        let r = gw.get(&path).await;
        r.assert_problem(400);
        assert!(r.text.contains("at most 8 per pattern"), "{}", r.text);
    }
    // Within the caps, in total too.
    let five: Vec<String> = (0..5).map(|i| format!("type={i}*a*b*c*d*e*f*")).collect();
    let r = gw.get(&format!("/events?{}", five.join("&"))).await;
    r.assert_problem(400);
    assert!(r.text.contains("per subscription"), "{}", r.text);
    // Registrations have the same cap.
    let r = gw
        .post_json(
            "/api/registrations",
            &json!({"device": "mac:112233445566", "duration": 60,
                    "destination": {"type": "http", "url": "http://127.0.0.1:9/x"},
                    "filter": {"types": [hostile]}}),
        )
        .await;
    r.assert_problem(422);
    assert!(gw.alive());
    drop(gw);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn hostile_payloads_are_refused_or_kept_small() {
    let dir = temp_dir("hostile-payloads");
    let mut gw = Process::start(&dir, &["--store", "memory"]);
    let mut sub = gw.subscribe("/events?device=mac:112233445566").await;
    let at = "/api/events?device=mac:112233445566&type=t";
    // 100,000 levels of nesting, under the body limit.
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let r = gw.post(at, "application/json", deep.clone()).await;
    r.assert_problem(400);
    assert!(r.text.contains("at most 64"), "{}", r.text);
    let r = gw.post(at, "application/x-ndjson", deep).await;
    assert_eq!(r.status, 400, "{}", r.text);
    // Values no consumer can represent.
    for bad in [r#"{"t":1e400}"#, r#"["\ud800"]"#, r#"{"s":"\udc00"}"#] {
        let r = gw.post(at, "application/json", bad).await;
        r.assert_problem(400);
        assert!(
            r.text.contains("cannot be represented"),
            "{bad}: {}",
            r.text
        );
    }
    // A msgpack message with bytes after it.
    let mut wrp = crate::support::util::vector("simple-event-online.msgpack");
    wrp.extend_from_slice(&[0xc0, 0xc0]);
    let r = gw.post("/api/events", "application/msgpack", wrp).await;
    r.assert_problem(400);
    assert!(r.text.contains("2 bytes follow"), "{}", r.text);
    // Whitespace is not kept: one `data:` line, the value as posted.
    let padded = "{ \"a\" :\n 1.50 ,\t\"b\":\"x  y\" }".to_owned() + &"\n".repeat(1_000_000);
    let r = gw.post(at, "application/json", padded).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let ev = sub.expect_event().await;
    assert_eq!(ev.data, r#"{"a":1.50,"b":"x  y"}"#);
    assert!(gw.alive());
    drop(gw);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_fast_reader_takes_a_large_batch_without_lagging() {
    use futures_util::StreamExt;
    let dir = temp_dir("hostile-batch");
    let gw = Process::start(&dir, &["--store", "memory"]);
    let resp = gw
        .http
        .get(gw.url("/events"))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let lines: Vec<String> = (0..10_000).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    let body = lines.join("\n");
    let post = gw.post(
        "/api/events?device=mac:112233445566&type=t",
        "application/x-ndjson",
        body,
    );
    let read = async {
        let (mut ids, mut text_tail, mut lagged) = (0usize, String::new(), false);
        while ids < 10_000 {
            let chunk = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .expect("events keep coming")
                .expect("the stream stays open")
                .unwrap();
            text_tail.push_str(std::str::from_utf8(&chunk).unwrap());
            let cut = text_tail.rfind('\n').map_or(0, |i| i + 1);
            for line in text_tail[..cut].lines() {
                ids += usize::from(line.starts_with("id:"));
                lagged |= line == "event: lagged";
            }
            text_tail.drain(..cut);
            assert!(
                !lagged,
                "a fast reader was told it lagged after {ids} events"
            );
        }
        ids
    };
    let (r, ids) = tokio::join!(post, read);
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["accepted"], 10_000);
    assert_eq!(ids, 10_000);
    drop(gw);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_connection_cap_fits_the_descriptor_limit() {
    let dir = temp_dir("hostile-fds");
    let gw = Process::start_under(
        &["prlimit", "--nofile=1024:1024", "--"],
        &dir,
        &["--store", "memory", "--max-connections", "60000"],
    );
    let said = |what: &str| gw.log.lock().unwrap().iter().any(|l| l.contains(what));
    assert!(
        said("connection cap lowered"),
        "{:?}",
        gw.log.lock().unwrap()
    );
    assert!(said("\"cap\":512"));
    // More idle connections than the cap: the extra ones are closed at
    // once, the process never runs out of descriptors.
    let mut held = Vec::new();
    for _ in 0..600 {
        held.push(tokio::net::TcpStream::connect(&gw.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held);
    let mut health = None;
    for _ in 0..50 {
        let r = gw.get("/health").await;
        if r.status == 200 {
            health = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(health.is_some(), "the gateway serves again once they close");
    let metrics = gw.get("/metrics").await.text;
    let rejected: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ratatoskr_connections_rejected_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(rejected >= 88.0, "{rejected}");
    assert!(!said("accept failed"), "the descriptor table never filled");
    drop(gw);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn checks_cannot_be_bypassed() {
    let dir = temp_dir("hostile-bypass");
    let token = "a-test-token-of-some-length";
    let gw = Process::start(&dir, &["--store", "memory", "--api-token", token]);
    let auth = format!("Bearer {token}");
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = gw.http.request(method, gw.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        req
    };
    // IPv6 forms that embed an internal IPv4 address, at registration.
    for host in [
        "[64:ff9b:1::a9fe:a9fe]",
        "[2002:a9fe:a9fe::]",
        "[2002:7f00:1::]",
        "[::ffff:0:a9fe:a9fe]",
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
        "192.88.99.1",
    ] {
        let body = json!({"device": "mac:112233445566", "duration": 60,
                          "destination": {"type": "http", "url": format!("http://{host}/x")}});
        let r = send(reqwest::Method::POST, "/api/registrations", Some(body))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        let r = crate::support::util::Reply::read(r).await;
        r.assert_problem(422);
        assert!(r.text.contains("must be public"), "{host}: {}", r.text);
    }
    // ?access_token= only where a header cannot be set.
    let q = format!("?access_token={token}");
    let r = send(
        reqwest::Method::POST,
        &format!("/api/events{q}"),
        Some(json!(1)),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let r = send(
        reqwest::Method::GET,
        &format!("/api/registrations{q}"),
        None,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let r = send(
        reqwest::Method::DELETE,
        &format!("/api/registrations/x{q}"),
        None,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let r = send(reqwest::Method::GET, &format!("/events{q}"), None)
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    // A CORS preflight from another origin, for a header-carrying
    // EventSource polyfill.
    let r = gw
        .http
        .request(reqwest::Method::OPTIONS, gw.url("/events"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization, last-event-id",
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("authorization") && allowed.contains("last-event-id"));
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("GET"));

    // A /hook registration keeps its device patterns through a PUT of
    // what GET shows.
    let hook = json!({"config": {"url": "http://127.0.0.1:9/h", "content_type": "application/json"},
                      "events": [".*"], "matcher": {"device_id": ["mac:1122.*"]}, "duration": "1m"});
    let r = send(reqwest::Method::POST, "/hook", Some(hook))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = send(reqwest::Method::GET, "/api/registrations", None)
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shown = list["items"][0].clone();
    assert_eq!(shown["device_patterns"], json!(["mac:1122.*"]));
    let id = shown["id"].as_str().unwrap();
    let dest = &shown["destination"];
    for body in [
        // The same fields, as GET shows them.
        json!({"devices": shown["devices"], "device_patterns": shown["device_patterns"],
               "destination": {"type": "http", "url": dest["url"], "content_type": dest["content_type"]},
               "filter": shown["filter"], "metadata": shown["metadata"], "duration": shown["duration"]}),
        // Left out: kept, as secrets are.
        json!({"destination": {"type": "http", "url": dest["url"]},
               "filter": shown["filter"], "duration": shown["duration"]}),
    ] {
        let r = send(
            reqwest::Method::PUT,
            &format!("/api/registrations/{id}"),
            Some(body),
        )
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        let after: Value = r.json().await.unwrap();
        assert_eq!(after["device_patterns"], json!(["mac:1122.*"]), "{after}");
        assert_eq!(after["devices"], shown["devices"]);
        assert_eq!(after["filter"], shown["filter"]);
    }
    drop(gw);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_costly_expression_cannot_hold_the_forwarding_thread() {
    let dir = temp_dir("hostile-budget");
    let rx = Receiver::start().await;
    let gw = Process::start(&dir, &["--store", "memory"]);
    let quadratic = "event.payload.l.all(x, event.payload.l.all(y, y >= 0))";
    for (path, expression) in [("/costly", quadratic), ("/plain", "true")] {
        let r = gw
            .post_json(
                "/api/registrations",
                &registration(&rx.url(path), expression),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // 20,000 elements: 400 million steps without a budget.
    let list: Vec<u32> = (0..20_000).collect();
    let started = std::time::Instant::now();
    for _ in 0..5 {
        let r = gw
            .post_json(
                "/api/events?device=mac:112233445566&type=t",
                &json!({ "l": list }),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    rx.wait_for("/plain", 5, Duration::from_secs(20)).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "forwarding kept up: {:?}",
        started.elapsed()
    );
    assert!(rx.received("/costly").is_empty(), "out of budget: no match");
    drop(gw);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_stored_device_that_no_longer_parses_loads_disabled() {
    let dir = temp_dir("hostile-device");
    let rx = Receiver::start().await;
    let gw = Process::start(&dir, &[]);
    let created = gw
        .post_json("/api/registrations", &registration(&rx.url("/d"), "true"))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(gw.stop().await, Some(0));
    {
        let store = Store::open(StoreKind::Redb, &dir).unwrap();
        let (_, doc) = store.load(Collection::Registrations).unwrap().remove(0);
        let mut doc: Value = serde_json::from_slice(&doc).unwrap();
        doc["devices"] = json!(["mac:12"]);
        store
            .put(
                Collection::Registrations,
                &id,
                &serde_json::to_vec(&doc).unwrap(),
            )
            .unwrap();
    }
    let gw = Process::start(&dir, &[]);
    let r = gw.get(&format!("/api/registrations/{id}")).await;
    assert_eq!(r.body["status"], "disabled", "{}", r.text);
    assert!(r.body["disabled_reason"]
        .as_str()
        .unwrap()
        .contains("devices[0]"));
    assert_eq!(gw.stop().await, Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}
