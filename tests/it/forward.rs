//! Forwarding to webhooks: delivery, signatures, filters, expiry, drops and
//! notices, isolation between destinations, retries. Against a real
//! receiver over real sockets.

use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};

use crate::support::client::Api;
use crate::support::receiver::Receiver;
use crate::support::util::{eventually, Gateway, Reply};

const DEVICE: &str = "mac:112233445566";
const WAIT: Duration = Duration::from_secs(10);

pub async fn register(gw: &Gateway, body: &Value) -> Reply {
    gw.post("/api/registrations", "application/json", body.to_string())
        .await
}

pub async fn register_ok(gw: &Gateway, body: &Value) -> Value {
    let r = register(gw, body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body
}

pub async fn publish(gw: &Gateway, device: &str, ty: &str, payload: &Value) -> String {
    let r = gw
        .post(
            &format!("/api/events?device={device}&type={ty}"),
            "application/json",
            payload.to_string(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    r.body["id"].as_str().unwrap().to_owned()
}

/// Waits until no destination has an event queued or in flight (retries
/// included). Whatever was routed before is then delivered or given up on
/// for good: an event that arrived at a receiver after an earlier one was
/// routed proves the earlier one was routed too (the router keeps id order).
async fn settled(gw: &Gateway) -> Value {
    let started = Instant::now();
    loop {
        let stats = gw.get("/api/stats").await.body;
        let f = &stats["forwarding"];
        if f["queued"] == 0 && f["in_flight"] == 0 {
            return stats;
        }
        assert!(
            started.elapsed() < WAIT,
            "forwarding never settled: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn hmac_sha1_hex(key: &[u8], body: &[u8]) -> String {
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

#[tokio::test]
async fn webhook_receives_signed_events_for_its_device_only() {
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    let created = register_ok(
        &gw,
        &json!({
            "device": "MAC:11:22:33:44:55:66",
            "destination": {"type": "http", "url": rx.url("/hook"), "secret": "s3cret",
                            "headers": {"Authorization": "Bearer tok-123"}},
            "duration": "10m",
        }),
    )
    .await;
    assert_eq!(created["devices"], json!([DEVICE]), "canonicalised");

    publish(&gw, "mac:aabbccddeeff", "online", &json!({"other": true})).await;
    let id = publish(&gw, DEVICE, "online", &json!({"battery": 12})).await;
    let got = rx.wait_for("/hook", 1, WAIT).await;
    let r = &got[0];
    assert_eq!(&r.body[..], br#"{"battery":12}"#);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("authorization"), "Bearer tok-123");
    assert_eq!(r.header("x-webpa-device-id"), DEVICE);
    assert_eq!(r.header("x-webpa-event"), format!("online/{DEVICE}"));
    assert_eq!(r.header("x-event-id"), id);
    assert_eq!(r.header("webhook-id"), id);
    // xmidt: sha1=HMAC-SHA1(secret, body).
    assert_eq!(
        r.header("x-webpa-signature"),
        format!("sha1={}", hmac_sha1_hex(b"s3cret", &r.body))
    );
    // Standard Webhooks: v1,base64(HMAC-SHA256(secret, id.timestamp.body)).
    let ts = r.header("webhook-timestamp");
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    m.update(format!("{id}.{ts}.").as_bytes());
    m.update(&r.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
    assert_eq!(r.header("webhook-signature"), format!("v1,{expected}"));
    // Nothing for the other device arrives (it was routed first).
    settled(&gw).await;
    assert_eq!(rx.received("/hook").len(), 1);
}

#[tokio::test]
async fn msgpack_destinations_get_whole_wrp_messages() {
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    register_ok(
        &gw,
        &json!({"device": DEVICE, "duration": 60,
                "destination": {"type": "http", "url": rx.url("/m"), "content_type": "application/msgpack"}}),
    )
    .await;
    let wrp = gw.publish_vector("simple-event-online.msgpack").await;
    let got = rx.wait_for("/m", 1, WAIT).await;
    assert_eq!(got[0].header("content-type"), "application/msgpack");
    assert_eq!(&got[0].body[..], &wrp[..], "the WRP message, byte for byte");
    assert_eq!(got[0].header("x-xmidt-message-type"), "SimpleEvent");
}

#[tokio::test]
async fn filters_choose_events_by_type_metadata_and_expression() {
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    register_ok(
        &gw,
        &json!({"device": DEVICE, "duration": "5m",
                "destination": {"type": "http", "url": rx.url("/f")},
                "filter": {"types": ["online", "battery-*"],
                           "expression": "event.payload.battery < 20"}}),
    )
    .await;
    publish(&gw, DEVICE, "online", &json!({"battery": 80})).await;
    publish(&gw, DEVICE, "offline", &json!({"battery": 5})).await;
    publish(&gw, DEVICE, "battery-low", &json!({"battery": 7})).await;
    publish(&gw, DEVICE, "online", &json!({"battery": 3})).await;
    let got = rx.wait_for("/f", 2, WAIT).await;
    settled(&gw).await;
    let bodies: Vec<Value> = rx
        .received("/f")
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(
        bodies,
        [json!({"battery": 7}), json!({"battery": 3})],
        "{got:?}"
    );
}

#[tokio::test]
async fn expired_registrations_stop_receiving_and_disappear() {
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    let created = register_ok(
        &gw,
        &json!({"device": DEVICE, "duration": 1,
                "destination": {"type": "http", "url": rx.url("/e")}}),
    )
    .await;
    // A registration that outlives the test, for events of another type:
    // its delivery proves the router has routed what came before.
    register_ok(
        &gw,
        &json!({"device": DEVICE, "duration": 60, "filter": {"types": ["sentinel"]},
                "destination": {"type": "http", "url": rx.url("/sentinel")}}),
    )
    .await;
    publish(&gw, DEVICE, "t", &json!(1)).await;
    rx.wait_for("/e", 1, WAIT).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/api/registrations/{id}");
    eventually("the registration to expire", WAIT, || async {
        gw.get(&path).await.status == 404
    })
    .await;
    gw.get(&path).await.assert_problem(404);
    publish(&gw, DEVICE, "t", &json!(2)).await;
    publish(&gw, DEVICE, "sentinel", &json!(3)).await;
    rx.wait_for("/sentinel", 1, WAIT).await;
    settled(&gw).await;
    assert_eq!(rx.received("/e").len(), 1, "no delivery after expiry");
    eventually("the sweeper", WAIT, || async {
        gw.metric("ratatoskr_registrations").await == 1.0
    })
    .await;
}

#[tokio::test]
async fn full_buffer_drops_and_notifies_the_destination() {
    let rx = Receiver::start().await;
    rx.delay("/slow", Duration::from_secs(3));
    let gw = Gateway::start_with(|c| {
        c.destination_buffer = 2;
        c.notice_interval = Duration::from_secs(60);
    })
    .await;
    register_ok(
        &gw,
        &json!({"device": DEVICE, "duration": 60,
                "destination": {"type": "http", "url": rx.url("/slow"),
                                "failure_url": rx.url("/notice"), "secret": "k"}}),
    )
    .await;
    for i in 0..10 {
        publish(&gw, DEVICE, "t", &json!(i)).await;
    }
    let notices = rx.wait_for("/notice", 1, WAIT).await;
    let n: Value = serde_json::from_slice(&notices[0].body).unwrap();
    assert_eq!(n["type"], "ratatoskr.dropped");
    assert!(n["dropped"].as_u64().unwrap() >= 1, "{n}");
    assert_eq!(
        notices[0].header("x-webpa-signature"),
        format!("sha1={}", hmac_sha1_hex(b"k", &notices[0].body)),
        "notices are signed too"
    );
    // 2 buffered, plus 1 in flight once the worker has taken the first (on
    // a busy machine the nice'd worker may not have yet, nor more than
    // once); the rest dropped, with one notice.
    // The notice leaves at the first drop, maybe before the router has
    // routed the last events: wait until it has.
    let mut text = String::new();
    let mut dropped = 0.0;
    for _ in 0..100 {
        text = gw.get("/metrics").await.text;
        dropped = series(&text, "ratatoskr_destination_dropped_total");
        if dropped >= 7.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!((6.0..=8.0).contains(&dropped), "{dropped}: {text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received("/notice").len(), 1, "rate-limited");
}

/// The value of the first sample of a labelled series.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test]
async fn a_slow_destination_does_not_delay_another() {
    let slow = Receiver::start().await;
    let fast = Receiver::start().await;
    slow.delay("/s", Duration::from_secs(3));
    let gw = Gateway::start().await;
    for url in [slow.url("/s"), fast.url("/f")] {
        register_ok(
            &gw,
            &json!({"device": DEVICE, "duration": 60, "destination": {"type": "http", "url": url}}),
        )
        .await;
    }
    let started = Instant::now();
    for i in 0..20 {
        publish(&gw, DEVICE, "t", &json!(i)).await;
    }
    fast.wait_for("/f", 20, WAIT).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the fast destination got all 20 in {took:?}"
    );
    // The slow one has only its first request in flight (the receiver
    // records it on arrival): one at a time, in order.
    let in_flight = slow.received("/s").len();
    assert!(in_flight <= 1, "the slow one is still busy: {in_flight}");
}

#[tokio::test]
async fn a_receiver_that_asks_for_time_with_retry_after_gets_it() {
    let rx = Receiver::start().await;
    rx.script("/busy", &[429]);
    rx.retry_after("/busy", "2");
    rx.script("/down", &[503]);
    rx.retry_after(
        "/down",
        &httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3)),
    );
    // The backoff alone would retry within 10 ms.
    let gw = Gateway::start_with(|c| c.retry_backoff = Duration::from_millis(10)).await;
    for path in ["/busy", "/down"] {
        register_ok(
            &gw,
            &json!({"device": DEVICE, "duration": 60,
                    "destination": {"type": "http", "url": rx.url(path)}}),
        )
        .await;
    }
    publish(&gw, DEVICE, "t", &json!("x")).await;
    for (path, at_least) in [("/busy", 1900), ("/down", 1500)] {
        let got = rx.wait_for(path, 2, WAIT).await;
        assert_eq!(got.len(), 2, "{path}: refused, then delivered");
        let waited = got[1].at - got[0].at;
        assert!(
            waited >= Duration::from_millis(at_least),
            "{path} retried after {waited:?}"
        );
    }
}

#[tokio::test]
async fn retries_on_5xx_but_not_on_4xx() {
    let rx = Receiver::start().await;
    rx.script("/flaky", &[503, 500]);
    rx.script("/gone", &[404]);
    let gw = Gateway::start_with(|c| c.retry_backoff = Duration::from_millis(10)).await;
    for path in ["/flaky", "/gone"] {
        register_ok(
            &gw,
            &json!({"device": DEVICE, "duration": 60,
                    "destination": {"type": "http", "url": rx.url(path)}}),
        )
        .await;
    }
    publish(&gw, DEVICE, "t", &json!("x")).await;
    let flaky = rx.wait_for("/flaky", 3, WAIT).await;
    assert_eq!(flaky.len(), 3, "two failures, then delivered");
    let gone = rx.wait_for("/gone", 1, WAIT).await;
    settled(&gw).await;
    assert_eq!(rx.received("/gone").len(), 1, "a 404 is final: {gone:?}");
    let reg = gw.get("/api/registrations").await.body;
    let stats: Vec<(String, Value)> = reg["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["destination"]["url"].as_str().unwrap().to_owned(),
                r["delivery"].clone(),
            )
        })
        .collect();
    for (url, d) in stats {
        if url.ends_with("/flaky") {
            assert_eq!(
                (d["delivered"].as_u64(), d["retried"].as_u64()),
                (Some(1), Some(2)),
                "{d}"
            );
        } else {
            assert_eq!(
                (d["failed"].as_u64(), d["retried"].as_u64()),
                (Some(1), Some(0)),
                "{d}"
            );
        }
    }
}

#[tokio::test]
async fn internal_destinations_are_refused() {
    let gw = Gateway::start_with(|c| c.allow_destination_nets.clear()).await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://localhost:9/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://10.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://0x7f000001/",
    ] {
        let r = register(
            &gw,
            &json!({"device": DEVICE, "duration": 60, "destination": {"type": "http", "url": url}}),
        )
        .await;
        r.assert_problem(422);
        assert_eq!(
            r.body["errors"][0]["field"], "destination.url",
            "{url}: {}",
            r.text
        );
    }
    let r = register(
        &gw,
        &json!({"device": DEVICE, "duration": 60,
                "destination": {"type": "sqs", "queue_url": "http://127.0.0.1:9/1/q", "region": "us-east-1",
                                "access_key_id": "k", "secret_access_key": "s"}}),
    )
    .await;
    r.assert_problem(422);
    assert_eq!(
        r.body["errors"][0]["field"], "destination.queue_url",
        "{}",
        r.text
    );
    // An allowance is exact: 127.0.0.1/32 does not open 127.0.0.2.
    let gw = Gateway::start().await;
    register(
        &gw,
        &json!({"device": DEVICE, "duration": 60, "destination": {"type": "http", "url": "http://127.0.0.2:9/"}}),
    )
    .await
    .assert_problem(422);
}

#[tokio::test]
async fn secrets_are_never_returned() {
    let gw = Gateway::start().await;
    let rx = Receiver::start().await;
    let created = register(
        &gw,
        &json!({"device": DEVICE, "duration": 60,
                "destination": {"type": "http", "url": rx.url("/x"), "secret": "TOPSECRET-1",
                                "headers": {"Authorization": "Bearer TOPSECRET-2"}}}),
    )
    .await;
    assert_eq!(created.status, 201);
    let sqs = register(
        &gw,
        &json!({"device": DEVICE, "duration": 60,
                "destination": {"type": "sqs", "queue_url": rx.url("/1/q"), "region": "us-east-1",
                                "access_key_id": "AKIDTOPSECRET3", "secret_access_key": "TOPSECRET-4"}}),
    )
    .await;
    assert_eq!(sqs.status, 201, "{}", sqs.text);
    let id = created.body["id"].as_str().unwrap();
    let texts = [
        created.text.clone(),
        sqs.text.clone(),
        gw.get(&format!("/api/registrations/{id}")).await.text,
        gw.get("/api/registrations").await.text,
    ];
    for t in &texts {
        assert!(!t.contains("TOPSECRET"), "secret leaked: {t}");
    }
    assert_eq!(created.body["destination"]["has_secret"], true);
    assert_eq!(
        created.body["destination"]["header_names"],
        json!(["Authorization"])
    );
    assert_eq!(sqs.body["destination"]["has_credentials"], true);
}

#[tokio::test]
async fn registrations_can_be_listed_replaced_renewed_and_deleted() {
    let gw = Gateway::start().await;
    let rx = Receiver::start().await;
    let dest = json!({"type": "http", "url": rx.url("/r"), "secret": "keep-me"});
    let mut ids = Vec::new();
    for dev in ["mac:000000000001", "mac:000000000002", "mac:000000000003"] {
        let b = register_ok(
            &gw,
            &json!({"device": dev, "duration": 60, "destination": dest}),
        )
        .await;
        ids.push(b["id"].as_str().unwrap().to_owned());
    }
    let page = gw.get("/api/registrations?limit=2").await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 2);
    let cursor = page.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = gw
        .get(&format!("/api/registrations?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 1);
    assert!(rest.body["next_cursor"].is_null());
    let one = gw.get("/api/registrations?device=MAC:000000000002").await;
    assert_eq!(one.body["items"][0]["devices"], json!(["mac:000000000002"]));

    // PUT with a stale ETag is refused; with the current one it renews.
    let url = format!("/api/registrations/{}", ids[0]);
    let current = gw.get(&url).await;
    let etag = current.headers["etag"].to_str().unwrap().to_owned();
    let body = json!({"device": "mac:000000000001", "duration": "30m",
                      "destination": {"type": "http", "url": rx.url("/r")}});
    let put = |tag: &str| {
        gw.http
            .put(gw.url(&url))
            .header("content-type", "application/json")
            .header("if-match", tag.to_owned())
            .body(body.to_string())
            .send()
    };
    assert_eq!(put("\"stale-1\"").await.unwrap().status(), 412);
    let renewed = put(&etag).await.unwrap();
    assert_eq!(renewed.status(), 200);
    let renewed: Value = renewed.json().await.unwrap();
    assert_eq!(renewed["duration"], 1800);
    assert!(renewed["expires_in"].as_i64().unwrap() > 1700);
    assert_eq!(
        renewed["destination"]["has_secret"], true,
        "secret kept when omitted"
    );
    assert_ne!(renewed["etag"].as_str().unwrap(), etag);
    assert_eq!(
        put(&etag).await.unwrap().status(),
        412,
        "old ETag now stale"
    );

    let del = gw.http.delete(gw.url(&url)).send().await.unwrap();
    assert_eq!(del.status(), 204);
    gw.get(&url).await.assert_problem(404);
    let del = gw.http.delete(gw.url(&url)).send().await.unwrap();
    assert_eq!(del.status(), 404);
}

#[tokio::test]
async fn bad_registrations_get_clear_errors() {
    let gw = Gateway::start().await;
    let dest = json!({"type": "http", "url": "http://127.0.0.1:9/x"});
    for (duration, needle) in [
        (json!(0), "more than 0"),
        (json!(-1), "positive"),
        (json!(3601), "maximum"),
        (json!("2h"), "maximum"),
        (json!("soon"), "not a duration"),
        (json!("-5m"), "negative"),
    ] {
        let r = register(
            &gw,
            &json!({"device": DEVICE, "duration": duration, "destination": dest}),
        )
        .await;
        r.assert_problem(422);
        assert_eq!(r.body["errors"][0]["field"], "duration");
        assert!(r.text.contains(needle), "{duration}: {}", r.text);
    }
    let r = register(
        &gw,
        &json!({"device": DEVICE, "duration": 60, "destination": dest,
                "filter": {"expression": "event.type == \n  && true"}}),
    )
    .await;
    r.assert_problem(422);
    let e = &r.body["errors"][0];
    assert_eq!(e["field"], "filter.expression");
    assert_eq!(e["position"]["line"], 2, "{}", r.text);
    let r = register(&gw, &json!({"duration": 60, "destination": dest})).await;
    r.assert_problem(422);
    assert_eq!(r.body["errors"][0]["field"], "device");
    register(
        &gw,
        &json!({"device": "mac:not-hex", "duration": 60, "destination": dest}),
    )
    .await
    .assert_problem(422);
    register(
        &gw,
        &json!({"device": DEVICE, "duration": 60, "destination": dest, "colour": "red"}),
    )
    .await
    .assert_problem(422);
    register(
        &gw,
        &json!({"device": DEVICE, "duration": 60, "destination": {"type": "ftp"}}),
    )
    .await
    .assert_problem(422);
    gw.post("/api/registrations", "application/json", "{\"device\":")
        .await
        .assert_problem(400);
    gw.post("/api/registrations", "text/plain", "{}")
        .await
        .assert_problem(415);
    gw.post(
        "/api/registrations",
        "application/json",
        vec![b'"', 0xff, b'"'],
    )
    .await
    .assert_problem(400);
    let huge = format!("{{\"device\":\"{}\"}}", "a".repeat(2 << 20));
    gw.post("/api/registrations", "application/json", huge)
        .await
        .assert_problem(413);
    for url in ["ftp://x/", "not a url", "http://user:pw@example.com/"] {
        register(
            &gw,
            &json!({"device": DEVICE, "duration": 60, "destination": {"type": "http", "url": url}}),
        )
        .await
        .assert_problem(422);
    }
}

/// Registration writes never wait on routing: the router matches over a
/// snapshot, so a CEL-heavy route on the low-priority forwarding thread,
/// starved of CPU by busy threads at normal priority, cannot hold a lock
/// that a write needs (before, it held the index's read lock throughout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_writes_do_not_wait_for_a_starved_cel_heavy_route() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    // Each evaluation runs the comprehension until its budget is spent
    // (and so never matches): the heaviest route a client can ask for.
    let list: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let list = format!("[{}]", list.join(","));
    let heavy = format!("{list}.all(x, {list}.all(y, x >= 0))");
    for i in 0..5 {
        register_ok(
            &gw,
            &json!({"device": "mac:aabbccddee01",
                    "destination": {"type": "http", "url": rx.url(&format!("/heavy{i}"))},
                    "filter": {"expression": heavy}, "duration": "10m"}),
        )
        .await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(20);
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
        })
        .collect();
    for n in 0..10 {
        publish(&gw, "mac:aabbccddee01", "t", &json!({"n": n})).await;
    }
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let started = Instant::now();
        register_ok(
            &gw,
            &json!({"device": "mac:aabbccddee02",
                    "destination": {"type": "http", "url": rx.url(&format!("/other{i}"))},
                    "duration": "10m"}),
        )
        .await;
        slowest = slowest.max(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a registration write took {slowest:?} while routing was starved"
    );
}
