//! At least once and in order: a destination's events through outages,
//! 5xx, 410 Gone and final refusals, and the delivery log that shows each
//! attempt. Against a real receiver over real sockets.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::forward::register_ok;
use crate::support::client::Api;
use crate::support::receiver::{Received, Receiver};
use crate::support::util::{eventually, labelled_sum, Gateway};

const DEVICE: &str = "mac:112233445566";
const WAIT: Duration = Duration::from_secs(20);

/// Posts event `{"n": i}` for [`DEVICE`] to any gateway; its id.
async fn publish(gw: &impl Api, i: usize) -> String {
    let r = gw
        .post(
            &format!("/api/events?device={DEVICE}&type=t"),
            "application/json",
            json!({ "n": i }).to_string(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn register(gw: &Gateway, url: String, failure_url: Option<String>) -> String {
    let mut destination = json!({"type": "http", "url": url});
    if let Some(f) = failure_url {
        destination["failure_url"] = json!(f);
    }
    let r = register_ok(
        gw,
        &json!({"device": DEVICE, "duration": 300, "destination": destination}),
    )
    .await;
    r["id"].as_str().unwrap().to_owned()
}

/// The `webhook-id` of each request, in arrival order.
fn ids(got: &[Received]) -> Vec<String> {
    got.iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect()
}

/// Each id once, in the order first seen.
fn first_seen(ids: &[String]) -> Vec<String> {
    let mut seen = Vec::new();
    for id in ids {
        if !seen.contains(id) {
            seen.push(id.clone());
        }
    }
    seen
}

async fn deliveries(gw: &Gateway, id: &str, query: &str) -> Value {
    let r = gw
        .get(&format!("/api/registrations/{id}/deliveries{query}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

#[tokio::test]
async fn an_endpoint_down_for_a_while_gets_every_event_in_order_once_it_is_back() {
    let rx = Receiver::start().await;
    let gw = Gateway::start_with(|c| {
        c.retry_backoff = Duration::from_millis(50);
        c.retry_max_backoff = Duration::from_millis(500);
    })
    .await;
    register(&gw, rx.url("/hook"), None).await;
    let first = publish(&gw, 0).await;
    rx.wait_for("/hook", 1, WAIT).await;
    rx.down().await;
    // A rolling deploy's outage, shortened: 60 events over 3 s while no
    // one listens.
    let mut posted = vec![first];
    for i in 1..=60 {
        posted.push(publish(&gw, i).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    rx.up().await;
    let got = rx.wait_for("/hook", posted.len(), WAIT).await;
    let arrived = ids(&got);
    assert_eq!(
        first_seen(&arrived),
        posted,
        "every event, each first delivered in id order"
    );
    let text = gw.get("/metrics").await.text;
    let retried = labelled_sum(&text, "ratatoskr_destination_retried_total");
    assert!(retried >= 1.0, "the outage was retried: {text}");
    for gone in [
        "ratatoskr_destination_failed_total",
        "ratatoskr_destination_dropped_total",
    ] {
        assert_eq!(labelled_sum(&text, gone), 0.0, "{gone}");
    }
}

#[tokio::test]
async fn a_later_event_never_overtakes_one_being_retried() {
    let rx = Receiver::start().await;
    rx.script("/hook", &[503, 500, 502]);
    let gw = Gateway::start_with(|c| c.retry_backoff = Duration::from_millis(20)).await;
    let reg = register(&gw, rx.url("/hook"), None).await;
    let mut posted = Vec::new();
    for i in 0..10 {
        posted.push(publish(&gw, i).await);
    }
    let got = rx.wait_for("/hook", 13, WAIT).await;
    let arrived = ids(&got);
    // Attempts: the first event three times refused, then each in turn.
    let mut expected = vec![posted[0].clone(); 3];
    expected.extend(posted.iter().cloned());
    assert_eq!(arrived, expected);
    // The log, newest first: ten deliveries, then three retries of the first.
    eventually("the last delivery to be logged", WAIT, || async {
        deliveries(&gw, &reg, "?limit=256").await["deliveries"]
            .as_array()
            .unwrap()
            .len()
            == 13
    })
    .await;
    let log = deliveries(&gw, &reg, "?limit=256").await;
    let entries = log["deliveries"].as_array().unwrap();
    assert_eq!(entries[0]["event_id"], posted[9].as_str());
    assert_eq!(entries[0]["outcome"], "delivered");
    assert_eq!(entries[0]["status"], 200);
    let retries: Vec<(&Value, &Value, &Value)> = entries[10..]
        .iter()
        .map(|e| (&e["outcome"], &e["attempt"], &e["status"]))
        .collect();
    assert_eq!(
        retries,
        [
            (&json!("retrying"), &json!(3), &json!(502)),
            (&json!("retrying"), &json!(2), &json!(500)),
            (&json!("retrying"), &json!(1), &json!(503)),
        ]
    );
    assert_eq!(entries[9]["attempt"], 4, "the first event's fourth attempt");
    for e in entries {
        assert!(
            e["at"].as_str().is_some() && e["duration_ms"].as_u64().is_some(),
            "{e}"
        );
    }
    // Paging back with the cursor covers the same entries.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=5&cursor={c}"),
            None => "?limit=5".into(),
        };
        let page = deliveries(&gw, &reg, &q).await;
        paged.extend(page["deliveries"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(&paged, entries);
}

#[tokio::test]
async fn a_final_refusal_is_given_up_logged_and_counted_and_the_next_event_goes() {
    let rx = Receiver::start().await;
    rx.script("/hook", &[400]);
    let gw = Gateway::start().await;
    let reg = register(&gw, rx.url("/hook"), None).await;
    let refused = publish(&gw, 0).await;
    let next = publish(&gw, 1).await;
    let got = rx.wait_for("/hook", 2, WAIT).await;
    assert_eq!(ids(&got), [refused.clone(), next]);
    eventually("the give-up to be counted", WAIT, || async {
        labelled_sum(
            &gw.get("/metrics").await.text,
            "ratatoskr_destination_failed_total",
        ) == 1.0
    })
    .await;
    eventually("both attempts to be logged", WAIT, || async {
        deliveries(&gw, &reg, "").await["deliveries"][1].is_object()
    })
    .await;
    let log = deliveries(&gw, &reg, "").await;
    let failed = &log["deliveries"][1];
    assert_eq!(
        (&failed["event_id"], &failed["outcome"], &failed["status"]),
        (&json!(refused), &json!("failed"), &json!(400))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received("/hook").len(), 2, "never retried");
}

#[tokio::test]
async fn a_410_disables_the_registration_and_tells_its_failure_url_once() {
    let rx = Receiver::start().await;
    rx.script("/hook", &[410]);
    let gw = Gateway::start().await;
    let reg = register(&gw, rx.url("/hook"), Some(rx.url("/failure"))).await;
    publish(&gw, 0).await;
    let notices = rx.wait_for("/failure", 1, WAIT).await;
    let n: Value = serde_json::from_slice(&notices[0].body).unwrap();
    assert_eq!(n["type"], "ratatoskr.disabled", "{n}");
    assert_eq!(notices[0].header("x-ratatoskr-notice"), "disabled");
    eventually("the registration to be disabled", WAIT, || async {
        gw.get(&format!("/api/registrations/{reg}")).await.body["status"] == "disabled"
    })
    .await;
    let r = gw.get(&format!("/api/registrations/{reg}")).await.body;
    assert!(
        r["disabled_reason"].as_str().unwrap().contains("410"),
        "{r}"
    );
    assert_eq!(
        gw.metric("ratatoskr_registrations_disabled_total").await,
        1.0
    );
    for i in 1..4 {
        publish(&gw, i).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received("/hook").len(), 1, "nothing after the 410");
    assert_eq!(rx.received("/failure").len(), 1, "one notice");
    // Replacing it starts it again.
    let put = gw
        .put_json(
            &format!("/api/registrations/{reg}"),
            &json!({"device": DEVICE, "duration": 300,
                    "destination": {"type": "http", "url": rx.url("/hook")}}),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    assert_eq!(put.body["status"], "active");
    publish(&gw, 9).await;
    rx.wait_for("/hook", 2, WAIT).await;
}

#[tokio::test]
async fn the_delivery_log_is_its_owners_and_refuses_bad_queries() {
    let gw = Gateway::start().await;
    let rx = Receiver::start().await;
    let reg = register(&gw, rx.url("/hook"), None).await;
    let empty = deliveries(&gw, &reg, "").await;
    assert_eq!(empty["deliveries"], json!([]));
    gw.get("/api/registrations/nope/deliveries")
        .await
        .assert_problem(404);
    for bad in ["?limit=0", "?limit=257", "?cursor=x", "?other=1"] {
        gw.get(&format!("/api/registrations/{reg}/deliveries{bad}"))
            .await
            .assert_problem(400);
    }
    let started = Instant::now();
    publish(&gw, 0).await;
    eventually("the delivery to be logged", WAIT, || async {
        deliveries(&gw, &reg, "").await["deliveries"][0]["outcome"] == "delivered"
    })
    .await;
    assert!(started.elapsed() < WAIT);
}

/// Posts `n` events to a gateway; their ids.
async fn post_events(gw: &impl Api, n: usize) -> Vec<String> {
    let mut posted = Vec::new();
    for i in 0..n {
        posted.push(publish(gw, i).await);
    }
    posted
}

/// What a restart must not lose: 20 events queued for a destination that
/// is down, then the gateway stopped (SIGTERM, or killed with SIGKILL);
/// once it is started again and the destination is back, all 20 arrive,
/// first seen in id order.
async fn queued_events_survive(
    stop: impl FnOnce(crate::support::process::Process) -> Option<crate::support::process::Process>,
) {
    use crate::support::process::{temp_dir, Process};
    let dir = temp_dir("durable");
    let rx = Receiver::start().await;
    let args = [
        "--retry-backoff",
        "50ms",
        "--retry-max-backoff",
        "300ms",
        "--shutdown-grace",
        "2s",
    ];
    let gw = Process::start(&dir, &args);
    let r = gw
        .post_json(
            "/api/registrations",
            &json!({"device": DEVICE, "duration": 300,
                    "destination": {"type": "http", "url": rx.url("/hook")}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    rx.down().await;
    let posted = post_events(&gw, 20).await;
    // Some attempts fail meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(mut left) = stop(gw) {
        left.kill();
    }
    rx.up().await;
    let again = Process::start(&dir, &args);
    let got = rx.wait_for("/hook", 20, WAIT).await;
    assert_eq!(first_seen(&ids(&got)), posted, "every event, in id order");
    drop(again);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn queued_deliveries_survive_a_kill_9_of_the_gateway() {
    if crate::support::util::embedded_only("the process runs on its own data dir") {
        return;
    }
    queued_events_survive(Some).await;
}

#[tokio::test]
async fn queued_deliveries_survive_a_sigterm_of_the_gateway() {
    if crate::support::util::embedded_only("the process runs on its own data dir") {
        return;
    }
    queued_events_survive(|p| {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &p.pid().to_string()])
            .status();
        // It drains for its grace period, then stops; wait for that.
        let started = Instant::now();
        let mut p = p;
        while p.alive() && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(p)
    })
    .await;
}

#[tokio::test]
async fn an_sse_stream_resumes_across_a_restart_without_a_gap() {
    use crate::support::process::{temp_dir, Process};
    if crate::support::util::embedded_only("the process runs on its own data dir") {
        return;
    }
    let dir = temp_dir("resume");
    let mut gw = Process::start(&dir, &[]);
    let posted = post_events(&gw, 5).await;
    // No registration wants them, so their POSTs did not wait for the log:
    // it writes them within a few milliseconds.
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.kill();
    let gw = Process::start(&dir, &[]);
    let mut sse = gw
        .subscribe(&format!(
            "/events?device={DEVICE}&lastEventId={}",
            posted[1]
        ))
        .await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = sse
            .next_event(Duration::from_secs(5))
            .await
            .expect("an event");
        assert_ne!(e.event.as_deref(), Some("gap"), "no gap: {e:?}");
        got.push(e.id.clone().unwrap());
    }
    assert_eq!(got, posted[2..]);
    let r = gw
        .post(
            &format!("/api/events?device={DEVICE}&type=t"),
            "application/json",
            "6",
        )
        .await;
    let newer = r.body["id"].as_str().unwrap().to_owned();
    let e = sse
        .next_event(Duration::from_secs(5))
        .await
        .expect("the live one");
    assert_eq!(e.id.as_deref(), Some(newer.as_str()));
    assert!(newer > posted[4], "ids go on above the restored ones");
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_replay_sends_the_events_after_a_point_again_marked_and_with_their_first_ids() {
    let dir = crate::support::process::temp_dir("replay");
    let d = dir.clone();
    let gw = Gateway::start_with(move |c| {
        c.store = ratatoskr::state::store::StoreKind::Redb;
        c.data_dir = d;
    })
    .await;
    let rx = Receiver::start().await;
    let reg = register(&gw, rx.url("/hook"), None).await;
    let mut posted = Vec::new();
    for i in 0..5 {
        posted.push(publish(&gw, i).await);
    }
    rx.wait_for("/hook", 5, WAIT).await;
    rx.delay("/hook", Duration::from_millis(300));
    let path = format!("/api/registrations/{reg}/replay");
    let r = gw
        .post(
            &path,
            "application/json",
            json!({"from": posted[1]}).to_string(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["replaying"], 3);
    // While it runs, another is refused.
    gw.post(
        &path,
        "application/json",
        json!({"from": posted[0]}).to_string(),
    )
    .await
    .assert_problem(409);
    let got = rx.wait_for("/hook", 8, WAIT).await;
    let again = &got[5..];
    assert_eq!(
        ids(again),
        posted[2..].to_vec(),
        "the same webhook-ids, in order"
    );
    for r in again {
        assert_eq!(r.header("x-ratatoskr-replay"), "true");
    }
    assert!(got[..5]
        .iter()
        .all(|r| r.headers.get("x-ratatoskr-replay").is_none()));
    // Once it is over, a replay by time goes.
    eventually("the replay to end", WAIT, || async {
        gw.post(
            &path,
            "application/json",
            json!({"since": "2020-01-01T00:00:00Z"}).to_string(),
        )
        .await
        .status
            != 409
    })
    .await;
    for bad in [
        json!({}),
        json!({"from": posted[0], "since": "2020-01-01T00:00:00Z"}),
        json!({"from": "not an id"}),
        json!({"since": "yesterday"}),
    ] {
        gw.post(&path, "application/json", bad.to_string())
            .await
            .assert_problem(422);
    }
    gw.post(&path, "application/json", "{\"from\":")
        .await
        .assert_problem(400);
    gw.post(
        "/api/registrations/nope/replay",
        "application/json",
        json!({"from": posted[0]}).to_string(),
    )
    .await
    .assert_problem(404);
    assert!(gw.shutdown().await);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_replay_from_before_what_the_log_holds_is_refused() {
    if crate::support::util::embedded_only("the embedded log's bounds") {
        return;
    }
    let gw = Gateway::start().await;
    let rx = Receiver::start().await;
    let reg = register(&gw, rx.url("/hook"), None).await;
    let path = format!("/api/registrations/{reg}/replay");
    // --store memory keeps no log at all.
    gw.post(
        &path,
        "application/json",
        json!({"since": "2020-01-01T00:00:00Z"}).to_string(),
    )
    .await
    .assert_problem(422);
    let dir = crate::support::process::temp_dir("replay-old");
    let d = dir.clone();
    let gw = Gateway::start_with(move |c| {
        c.store = ratatoskr::state::store::StoreKind::Redb;
        c.data_dir = d;
    })
    .await;
    let reg = register(&gw, rx.url("/hook"), None).await;
    let old = ratatoskr::event::EventId::floor_at(1_000).to_string();
    let r = gw
        .post(
            &format!("/api/registrations/{reg}/replay"),
            "application/json",
            json!({ "from": old }).to_string(),
        )
        .await;
    r.assert_problem(422);
    assert!(
        r.text.contains("older than the event log holds"),
        "{}",
        r.text
    );
    assert!(gw.shutdown().await);
    let _ = std::fs::remove_dir_all(dir);
}
