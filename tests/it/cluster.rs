//! Cluster mode: three real nodes (the shipped binary) on one real Redis,
//! which each test starts on a Unix socket of its own and stops.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::client::Api;
use crate::support::process::{temp_dir, Process};
use crate::support::redis::{free_port, Redis};
use crate::support::reply_gate::ReplyGate;
use crate::support::util::{eventually, series_value, SseClient};

fn node(redis: &Redis, extra: &[&str]) -> Process {
    let mut args = vec!["--redis-url", &*Box::leak(redis.url().into_boxed_str())];
    args.extend_from_slice(extra);
    Process::start(&temp_dir("node"), &args)
}

/// Posts `payload` for `device`, which must be accepted: its id.
pub(crate) async fn post(n: &Process, device: &str, payload: &Value) -> String {
    let r = n
        .post_json(&format!("/api/events?device={device}&type=t"), payload)
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    r.body["id"].as_str().unwrap().to_owned()
}

/// The next `n` events of a stream: (id, payload `n` field).
pub(crate) async fn take(sub: &mut SseClient, n: usize) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = sub
            .next_event(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("only {} of {n} events arrived: {out:?}", out.len()));
        if e.event.is_some() {
            panic!("unexpected {:?} event: {}", e.event, e.data);
        }
        let n = e.json()["n"].as_i64().unwrap();
        out.push((e.id.unwrap(), n));
    }
    out
}

#[tokio::test]
async fn every_node_delivers_every_nodes_events_once_in_one_order() {
    let Some(redis) = Redis::start() else { return };
    let nodes: Vec<Process> = (0..3).map(|_| node(&redis, &[])).collect();
    let mut subs = Vec::new();
    for n in &nodes {
        subs.push(n.subscribe("/events").await);
    }
    let mut posted = Vec::new();
    for i in 0..30 {
        posted.push(post(&nodes[i % 3], "mac:112233445566", &json!({"n": i})).await);
    }
    let mut seen = Vec::new();
    for sub in &mut subs {
        let got = take(sub, 30).await;
        sub.expect_silence(Duration::from_millis(300)).await;
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1], "same events, same ids, same order");
    // Every node lists the three members (each announces itself every
    // 2 s), with their subscribers; with no registration, none forwards.
    eventually("the member list", Duration::from_secs(6), || async {
        let stats = nodes[2].get("/api/stats").await.body;
        let members = stats["cluster"]["members"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        members.len() == 3
            && members.iter().all(|m| m["subscribers"] == 1)
            && members
                .iter()
                .all(|m| m["forwarding"] == false && m["destinations"] == 0)
    })
    .await;
    assert_eq!(seen[0], seen[2]);
    let ids: Vec<&String> = seen[0].iter().map(|(id, _)| id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let mut ns: Vec<i64> = seen[0].iter().map(|(_, n)| *n).collect();
    ns.sort();
    assert_eq!(ns, (0..30).collect::<Vec<_>>(), "each exactly once");
    let answered: Vec<String> = posted;
    let mut delivered: Vec<String> = seen[0].iter().map(|(id, _)| id.clone()).collect();
    delivered.sort();
    let mut answered_sorted = answered.clone();
    answered_sorted.sort();
    assert_eq!(
        delivered, answered_sorted,
        "the 202's id is the delivered id"
    );
    for n in nodes {
        assert_eq!(n.stop().await, Some(0));
    }
}

#[tokio::test]
async fn a_client_resumes_on_another_node_even_one_started_later() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &[]);
    let mut sub = a.subscribe("/events?device=mac:112233445566").await;
    for i in 0..10 {
        post(
            &a,
            if i % 2 == 0 {
                "mac:112233445566"
            } else {
                "mac:aabbccddeeff"
            },
            &json!({"n": i}),
        )
        .await;
    }
    let first = take(&mut sub, 5).await;
    let last_id = first.last().unwrap().0.clone();
    drop(sub);
    for i in 10..20 {
        post(
            &a,
            if i % 2 == 0 {
                "mac:112233445566"
            } else {
                "mac:aabbccddeeff"
            },
            &json!({"n": i}),
        )
        .await;
    }
    // A node that was not running when any of these were published.
    let b = node(&redis, &[]);
    let mut resumed = b
        .subscribe(&format!(
            "/events?device=mac:112233445566&lastEventId={last_id}"
        ))
        .await;
    let missed = take(&mut resumed, 5).await;
    assert_eq!(
        missed.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [10, 12, 14, 16, 18],
        "exactly the missed matching events, from the shared stream"
    );
    // Then live, with no gap and no duplicate.
    post(&a, "mac:112233445566", &json!({"n": 20})).await;
    let live = take(&mut resumed, 1).await;
    assert_eq!(live[0].1, 20);
    assert!(live[0].0 > missed.last().unwrap().0);
    resumed.expect_silence(Duration::from_millis(300)).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_holds_across_nodes() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let send = |n: &Process| {
        n.http
            .post(n.url("/api/events?device=mac:112233445566"))
            .header("content-type", "application/json")
            .header("idempotency-key", "order-42")
            .body("{\"n\":1}")
            .send()
    };
    let first = send(&a).await.unwrap();
    assert_eq!(first.status(), 202);
    let id: Value = first.json().await.unwrap();
    let second = send(&b).await.unwrap();
    assert_eq!(second.status(), 202);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let again: Value = second.json().await.unwrap();
    assert_eq!(again["id"], id["id"], "published once");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn without_redis_ingest_is_refused_streams_stay_and_it_recovers() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &["--heartbeat", "1s"]);
    let mut sub = a.subscribe("/events").await;
    post(&a, "mac:112233445566", &json!({"n": 1})).await;
    assert_eq!(take(&mut sub, 1).await[0].1, 1);
    let socket = redis.stop();
    // Refused, with Retry-After; /ready says so; the stream stays open.
    let started = Instant::now();
    let refused = loop {
        let r = a
            .post_json("/api/events?device=mac:112233445566", &json!({"n": 2}))
            .await;
        if r.status == 503 {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still accepted: {}",
            r.text
        );
    };
    refused.assert_problem(503);
    assert!(refused.headers.get("retry-after").is_some());
    let ready = a.get("/ready").await;
    ready.assert_problem(503);
    let mut comments = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        match sub.next_item(Duration::from_millis(500)).await {
            Some(crate::support::util::SseItem::Comment(_)) => comments += 1,
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    assert!(comments >= 1, "heartbeats go on while Redis is down");
    // Redis comes back (empty: it keeps nothing on disk).
    let _redis = Redis::start_at(socket).unwrap();
    let started = Instant::now();
    while a.get("/ready").await.status != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "/ready stayed 503"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    post(&a, "mac:112233445566", &json!({"n": 3})).await;
    let mut notices = Vec::new();
    let after = loop {
        let e = sub
            .next_event(Duration::from_secs(10))
            .await
            .expect("delivery resumes");
        match e.event.clone() {
            None => break e,
            Some(name) => notices.push((name, e.json())),
        }
    };
    assert_eq!(after.json()["n"], 3);
    // The live stream is told that what the lost stream held after event 1
    // (nothing here, but the node cannot know) may be missing.
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].0, "gap");
    assert!(notices[0].1["last_event_id"].is_string(), "{notices:?}");
    assert_eq!(
        metric(&a, "ratatoskr_cluster_history_lost_total").await,
        1.0
    );
    a.stop().await;
}

/// What one publisher of [`a_503_means_the_event_is_not_stored_even_if_redis_runs_it_later`]
/// was told: (payload `n`, the accepted id or None for a 503 it did not retry).
type Told = Vec<(i64, Option<String>)>;

/// Posts events `first..` one after another until `until` (at most 400):
/// with `keyed`, each with an Idempotency-Key and retried with it (on 503
/// and 409) until accepted; without, a 503 is final. Counts the 503s.
async fn publish_through(n: &Process, first: i64, keyed: bool, until: Instant) -> (Told, usize) {
    let (mut told, mut refused) = (Vec::new(), 0);
    for k in first..first + 400 {
        if Instant::now() >= until {
            break;
        }
        let mut outcome = None;
        for _ in 0..40 {
            let mut r = n
                .http
                .post(n.url("/api/events?device=mac:112233445566&type=t"))
                .header("content-type", "application/json")
                .body(json!({ "n": k }).to_string());
            if keyed {
                r = r.header("idempotency-key", format!("k-{k}"));
            }
            let r = r.send().await.expect("an answer");
            let status = r.status().as_u16();
            if status == 202 {
                let body: Value = r.json().await.unwrap();
                outcome = Some(body["id"].as_str().unwrap().to_owned());
                break;
            }
            assert!([503, 409].contains(&status), "{status}");
            if status == 503 {
                refused += 1;
                assert!(r.headers().get("retry-after").is_some());
            }
            if !keyed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(!keyed || outcome.is_some(), "event {k} was never accepted");
        told.push((k, outcome));
    }
    (told, refused)
}

#[tokio::test]
async fn a_503_means_the_event_is_not_stored_even_if_redis_runs_it_later() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &["--heartbeat", "1s"]);
    let mut sub = a.subscribe("/events").await;
    post(&a, "mac:112233445566", &json!({"n": -1})).await;
    assert_eq!(take(&mut sub, 1).await[0].1, -1);
    // Eight publishers, four retrying with Idempotency-Keys, keep about
    // eight appends in flight; Redis freezes under them for 3 s, longer
    // than a request waits, then runs everything that queued up.
    let until = Instant::now() + Duration::from_secs(6);
    let publishers: Vec<_> = (0..8)
        .map(|p| publish_through(&a, i64::from(p) * 1000, p % 2 == 0, until))
        .collect();
    let frozen = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        redis.freeze();
        tokio::time::sleep(Duration::from_secs(3)).await;
        redis.thaw();
    };
    // The subscriber reads all along (a reader that waited would lag).
    let publishing = async {
        let (results, ()) = tokio::join!(futures_util::future::join_all(publishers), frozen);
        // A last event, after which nothing more is coming.
        post(&a, "mac:112233445566", &json!({"n": -2})).await;
        results
    };
    let reading = async {
        let mut seen: std::collections::HashMap<i64, Vec<String>> = Default::default();
        for (n, id) in read_until(&mut sub, -2).await {
            if n != -2 {
                seen.entry(n).or_default().push(id);
            }
        }
        seen
    };
    let (results, seen) = tokio::join!(publishing, reading);
    let refused: usize = results.iter().map(|(_, r)| r).sum();
    assert!(
        refused > 0,
        "Redis froze under the publishers: some were refused"
    );
    let told: std::collections::HashMap<i64, Option<String>> =
        results.into_iter().flat_map(|(t, _)| t).collect();
    let mut accepted = 0;
    for (n, outcome) in &told {
        match outcome {
            Some(id) => {
                accepted += 1;
                assert_eq!(
                    seen.get(n),
                    Some(&vec![id.clone()]),
                    "event {n}: once, with its 202's id"
                );
            }
            None => assert_eq!(seen.get(n), None, "event {n} was answered 503 but stored"),
        }
    }
    assert_eq!(seen.len(), accepted, "nothing else was stored");
    assert!(
        metric(&a, "ratatoskr_cluster_appends_unanswered_total").await >= 1.0,
        "the appends in flight when Redis froze are counted"
    );
    a.stop().await;
}

/// A node on `redis` through a [`ReplyGate`] (open), with a stream that
/// got event 0.
async fn gated_node(redis: &Redis) -> (ReplyGate, Process, SseClient) {
    let gate = ReplyGate::start(redis);
    let a = Process::start(&temp_dir("node"), &["--redis-url", &gate.url()]);
    let mut sub = a.subscribe("/events").await;
    post(&a, "mac:112233445566", &json!({"n": 0})).await;
    assert_eq!(take(&mut sub, 1).await[0].1, 0);
    (gate, a, sub)
}

/// Posts `{"n": n}`: the status, the body, and how long the answer took.
async fn post_timed(a: &Process, n: i64) -> (u16, Value, Duration) {
    let started = Instant::now();
    let r = a
        .http
        .post(a.url("/api/events?device=mac:112233445566&type=t"))
        .header("content-type", "application/json")
        .body(json!({ "n": n }).to_string())
        .send()
        .await
        .expect("an answer");
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

/// The payloads' `n` and ids of the events a stream gets until the one
/// with `n == last` (included), skipping named events such as `gap`; each
/// within 20 s.
async fn read_until(sub: &mut SseClient, last: i64) -> Vec<(i64, String)> {
    let mut seen = Vec::new();
    loop {
        let e = sub
            .next_event(Duration::from_secs(20))
            .await
            .expect("the stream goes on");
        if e.event.is_some() {
            continue;
        }
        let n = e.json()["n"].as_i64().unwrap();
        seen.push((n, e.id.clone().unwrap()));
        if n == last {
            return seen;
        }
    }
}

#[tokio::test]
async fn a_write_redis_ran_without_answering_in_time_is_answered_202_once_it_does() {
    let Some(redis) = Redis::start() else { return };
    let (gate, a, mut sub) = gated_node(&redis).await;
    // Redis runs the append but its reply is held past the 1.5 s the
    // request waits for it, and so is the reply to the node's check.
    gate.hold();
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        // Meanwhile nothing new is sent: a 503 at once, and a true one.
        let (status, body, took) = post_timed(&a, 2).await;
        assert_eq!(status, 503, "{body}");
        assert!(took < Duration::from_millis(1000), "{took:?}");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        gate.release();
    };
    let ((status, body, took), ()) = tokio::join!(post_timed(&a, 1), meanwhile);
    assert_eq!(status, 202, "stored, so not a 503: {body}");
    assert!(
        took >= Duration::from_millis(3000),
        "answered once Redis did: {took:?}"
    );
    let id = body["id"].as_str().unwrap().to_owned();
    eventually("a 202 again", Duration::from_secs(10), || async {
        post_timed(&a, 3).await.0 == 202
    })
    .await;
    let seen = read_until(&mut sub, 3).await;
    let ns: Vec<i64> = seen.iter().map(|(n, _)| *n).collect();
    assert_eq!(ns[0], 1, "{seen:?}");
    assert_eq!(seen[0].1, id, "with its 202's id");
    assert_eq!(ns.iter().filter(|n| **n == 1).count(), 1, "once: {seen:?}");
    assert!(!ns.contains(&2), "the 503 stored nothing: {seen:?}");
    a.stop().await;
}

#[tokio::test]
async fn a_write_whose_outcome_redis_does_not_tell_in_time_is_504_not_503() {
    let Some(redis) = Redis::start() else { return };
    let (gate, a, mut sub) = gated_node(&redis).await;
    // Held for longer than the node asks (1.5 s, then 20 s): it cannot
    // know whether Redis stored the event, and says so.
    gate.hold();
    let (status, body, took) = post_timed(&a, 1).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(
        body["type"], "urn:ratatoskr:problem:outcome-unknown",
        "{body}"
    );
    assert!(took >= Duration::from_secs(20), "{took:?}");
    assert!(took < Duration::from_secs(25), "{took:?}");
    gate.release();
    // It was stored (Redis ran it): a 503 would have been a lie.
    eventually("a 202 again", Duration::from_secs(10), || async {
        post_timed(&a, 2).await.0 == 202
    })
    .await;
    let seen = read_until(&mut sub, 2).await;
    let ones = seen.iter().filter(|(n, _)| *n == 1).count();
    assert_eq!(ones, 1, "{seen:?}");
    a.stop().await;
}

#[test]
fn a_cluster_node_or_a_replica_is_refused_at_start_naming_why() {
    // A replica (of a primary that is not there): it would refuse writes.
    let Some(replica) = Redis::start() else {
        return;
    };
    assert!(replica.command("REPLICAOF 127.0.0.1 1").starts_with("+OK"));
    let r = crate::setup::run(&["--redis-url", &replica.url()], &[]);
    crate::setup::assert_fatal(&r, &["--redis-url", "is a replica", "--redis-mode single"]);
    // A node of a Redis Cluster: it would answer MOVED for most keys. It
    // needs a TCP port, and its cluster bus takes the port 10000 above.
    let dir = temp_dir("cluster-node");
    let node = loop {
        let port = free_port();
        if port > 55_000 {
            continue;
        }
        let conf = dir.join(format!("nodes-{port}.conf")).display().to_string();
        let args = [
            "--port",
            &port.to_string(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &conf,
        ];
        match Redis::try_start_with(dir.join(format!("redis-{port}.sock")), &args) {
            None => return,
            Some(Ok(node)) => break node,
            Some(Err(_)) => continue,
        }
    };
    let r = crate::setup::run(&["--redis-url", &node.url()], &[]);
    crate::setup::assert_fatal(
        &r,
        &["--redis-url", "Redis Cluster", "give --redis-mode cluster"],
    );
}

#[tokio::test]
async fn a_resume_across_an_emptied_redis_gets_a_gap() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &[]);
    let old = post(&a, "mac:112233445566", &json!({"n": 1})).await;
    let socket = redis.stop();
    let _redis = Redis::start_at(socket).unwrap();
    // A node started on the emptied Redis cannot vouch for what came after.
    let b = node(&_redis, &[]);
    let mut sub = b.subscribe(&format!("/events?lastEventId={old}")).await;
    let first = sub
        .next_event(Duration::from_secs(5))
        .await
        .expect("an event");
    assert_eq!(first.event.as_deref(), Some("gap"), "{first:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_reconnect_that_lost_nothing_sends_no_gap_even_if_the_stream_was_trimmed_empty() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &["--redis-prefix", "quiet"]);
    let mut sub = a.subscribe("/events").await;
    post(&a, "mac:112233445566", &json!({"n": 1})).await;
    post(&a, "mac:112233445566", &json!({"n": 2})).await;
    assert_eq!(take(&mut sub, 2).await.len(), 2);
    // Age trimming of a quiet stream removes what every node has read; then
    // the connections drop (a network blip), and the reader reconnects.
    assert!(redis
        .command("XTRIM quiet:events MAXLEN 0")
        .starts_with(':'));
    redis.command("CLIENT KILL TYPE normal");
    eventually("the reader reconnects", Duration::from_secs(10), || async {
        metric(&a, "ratatoskr_cluster_reader_reconnects_total").await >= 1.0
    })
    .await;
    // The command connection may answer its first request after the blip
    // with a 503 (nothing stored); a client retries.
    eventually(
        "an event is accepted again",
        Duration::from_secs(10),
        || async {
            a.post_json(
                "/api/events?device=mac:112233445566&type=t",
                &json!({"n": 3}),
            )
            .await
            .status
                == 202
        },
    )
    .await;
    // `take` fails on any notice: no gap, since nothing was lost.
    assert_eq!(take(&mut sub, 1).await[0].1, 3);
    assert_eq!(
        metric(&a, "ratatoskr_cluster_history_lost_total").await,
        0.0
    );
    a.stop().await;
}

/// A certificate authority and a certificate for 127.0.0.1 signed by it,
/// made with the `openssl` command: (CA file, certificate, key).
fn test_certificates(dir: &std::path::Path) -> (String, String, String) {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (CI installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ratatoskr test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "redis.key",
        "-out",
        "redis.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "redis.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "redis.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (path("ca.pem"), path("redis.pem"), path("redis.key"))
}

#[tokio::test]
async fn a_node_joins_over_tls_and_refuses_a_certificate_it_cannot_verify() {
    if !crate::support::skip::redis_server() {
        return;
    }
    let dir = temp_dir("tls");
    let (ca, cert, key) = test_certificates(&dir);
    let tls = |port: u16| {
        let port = port.to_string();
        Redis::try_start_with(
            dir.join("redis.sock"),
            &[
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "no",
            ],
        )
    };
    let (port, _redis) = (0..5)
        .find_map(|_| {
            let port = free_port();
            Some((port, tls(port)?.ok()?))
        })
        .expect("redis-server got no TLS port of its own in 5 tries");
    let url = format!("rediss://127.0.0.1:{port}/");
    // Trusting the test CA: a member like any other, over TLS.
    let trust = format!("SSL_CERT_FILE={ca}");
    let n = Process::start_under(&["env", &trust], &temp_dir("node"), &["--redis-url", &url]);
    let mut sub = n.subscribe("/events").await;
    post(&n, "mac:112233445566", &json!({"n": 1})).await;
    assert_eq!(take(&mut sub, 1).await[0].1, 1);
    assert_eq!(n.get("/ready").await.status, 200);
    n.stop().await;
    // With the system's roots only, the certificate cannot be verified:
    // the node does not start, and says why.
    let out = Command::new(crate::support::process::BIN)
        .args(["--listen", "127.0.0.1:0", "--redis-url", &url])
        .env_remove("SSL_CERT_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("certificate") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn an_event_type_created_on_two_nodes_at_once_is_created_once() {
    let Some(redis) = Redis::start() else { return };
    let nodes = [node(&redis, &[]), node(&redis, &[])];
    for round in 0..5 {
        let name = format!("race-{round}");
        let body = json!({"name": name, "description": "d"});
        let attempts = (0..8).map(|i| nodes[i % 2].post_json("/api/event-types", &body));
        let statuses: Vec<u16> = futures_util::future::join_all(attempts)
            .await
            .iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 409),
            "{statuses:?}"
        );
        // Both nodes know it at once (the loser caught up when it lost).
        for n in &nodes {
            assert_eq!(n.get(&format!("/api/event-types/{name}")).await.status, 200);
        }
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test]
async fn an_account_changed_on_one_node_scopes_streams_on_another() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let Some(redis) = Redis::start() else { return };
    const SECRET: &str = "a-cluster-accounts-secret-0123456789";
    let nodes = [
        node(&redis, &["--jwt-secret", SECRET]),
        node(&redis, &["--jwt-secret", SECRET]),
    ];
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let exp = chrono::Utc::now().timestamp() + 600;
    let mint = |claim: Value| {
        encode(
            &Header::new(Algorithm::HS256),
            &json!({"exp": exp, "ratatoskr": claim}),
            &key,
        )
        .unwrap()
    };
    let (admin, member) = (
        mint(json!({"admin": true})),
        mint(json!({"accounts": ["acme"]})),
    );
    let put = |n: &Process, path: String, body: Option<Value>| {
        let mut req = n.http.put(n.url(&path)).bearer_auth(&admin);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        req.send()
    };
    let r = put(
        &nodes[0],
        "/api/accounts/acme/devices".into(),
        Some(json!({"devices": ["mac:112233445566"]})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    // The other node hears of it through the change channel.
    eventually(
        "node 2 to learn of the account",
        Duration::from_secs(5),
        || async {
            nodes[1]
                .http
                .get(nodes[1].url("/events"))
                .bearer_auth(&member)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    let resp = nodes[1]
        .http
        .get(nodes[1].url("/events"))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap();
    let mut sub = SseClient::new(resp);
    let publish = |n: &Process, device: &str, i: i64| {
        n.http
            .post(n.url(&format!("/api/events?device={device}")))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(json!({ "n": i }).to_string())
            .send()
    };
    publish(&nodes[0], "mac:665544332211", 1).await.unwrap();
    publish(&nodes[0], "mac:112233445566", 2).await.unwrap();
    assert_eq!(take(&mut sub, 1).await[0].1, 2);
    // A device added on node 1 reaches node 2's open stream.
    put(
        &nodes[0],
        "/api/accounts/acme/devices/serial:late".into(),
        None,
    )
    .await
    .unwrap();
    let mut i = 10;
    let arrived = loop {
        publish(&nodes[0], "serial:late", i).await.unwrap();
        match sub.next_event(Duration::from_millis(300)).await {
            Some(e) => break e.json()["n"].as_i64().unwrap(),
            None if i < 40 => i += 1,
            None => panic!("the added device never reached the stream"),
        }
    };
    assert!(arrived >= 10);
    for n in nodes {
        n.stop().await;
    }
}

/// A node's unlabelled series, 0 when it has none yet.
pub(crate) async fn metric(n: &Process, name: &str) -> f64 {
    series_value(&n.get("/metrics").await.text, name).unwrap_or(0.0)
}

#[tokio::test]
async fn a_registration_made_on_one_node_forwards_once_for_events_posted_anywhere() {
    let Some(redis) = Redis::start() else { return };
    let rx = crate::support::receiver::Receiver::start().await;
    let nodes: Vec<Process> = (0..3).map(|_| node(&redis, &[])).collect();
    let created = nodes[0]
        .post_json(
            "/api/registrations",
            &json!({"device": "mac:112233445566", "duration": 600,
                    "destination": {"type": "http", "url": rx.url("/c"), "secret": "s3cret"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    for n in &nodes {
        let path = format!("/api/registrations/{id}");
        eventually(
            "the registration reaches every node",
            Duration::from_secs(2),
            || async { n.get(&path).await.status == 200 },
        )
        .await;
    }
    // Exactly one node holds the one destination's lease.
    eventually("a forwarder", Duration::from_secs(10), || async {
        let mut holders = 0.0;
        for n in &nodes {
            holders += metric(n, "ratatoskr_cluster_forwarding").await;
        }
        holders == 1.0
    })
    .await;
    for i in 0..10 {
        post(&nodes[1 + i % 2], "mac:112233445566", &json!({"n": i})).await;
    }
    let got = rx.wait_for("/c", 10, Duration::from_secs(10)).await;
    assert!(got
        .iter()
        .all(|r| r.header("x-webpa-signature").starts_with("sha1=")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ns = rx.numbers("/c");
    ns.sort();
    assert_eq!(
        ns,
        (0..10).collect::<Vec<_>>(),
        "each event once, not once per node"
    );
    // The forwarder owns the one destination. Every node keeps it ready
    // for a takeover, with its checkpoint-lag series.
    eventually("destinations owned", Duration::from_secs(5), || async {
        let mut owned = 0.0;
        for n in &nodes {
            owned += metric(n, "ratatoskr_cluster_destinations_owned").await;
        }
        owned == 1.0
    })
    .await;
    let mut lag_series = 0;
    for n in &nodes {
        let text = n.get("/metrics").await.text;
        lag_series += text
            .lines()
            .filter(|l| l.starts_with("ratatoskr_destination_checkpoint_lag_seconds{"))
            .count();
        // Each reader is caught up.
        assert_eq!(
            series_value(&text, "ratatoskr_cluster_reader_lag_entries"),
            Some(0.0)
        );
    }
    assert_eq!(lag_series, 3, "one destination, on each node");
    // If-Match holds across nodes: a stale ETag loses on any node.
    let etag = created.headers["etag"].to_str().unwrap().to_owned();
    let body = json!({"device": "mac:112233445566", "duration": 600,
                      "destination": {"type": "http", "url": rx.url("/c")}});
    let put = |n: &Process| {
        n.http
            .put(n.url(&format!("/api/registrations/{id}")))
            .header("if-match", &etag)
            .json(&body)
            .send()
    };
    assert_eq!(put(&nodes[1]).await.unwrap().status(), 200);
    eventually(
        "the change reaches node 2",
        Duration::from_secs(2),
        || async {
            nodes[2].get(&format!("/api/registrations/{id}")).await.body["etag"] != json!(etag)
        },
    )
    .await;
    assert_eq!(put(&nodes[2]).await.unwrap().status(), 412);
    for n in nodes {
        n.stop().await;
    }
}

/// Destinations owned by each node.
async fn owned(nodes: &[Process]) -> Vec<f64> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(metric(n, "ratatoskr_cluster_destinations_owned").await);
    }
    out
}

#[tokio::test]
async fn destinations_spread_over_the_nodes_and_a_dead_nodes_share_moves_to_the_others() {
    let Some(redis) = Redis::start() else { return };
    let rx = crate::support::receiver::Receiver::start().await;
    let mut nodes: Vec<Process> = (0..3).map(|_| node(&redis, &[])).collect();
    for d in 0..6 {
        let r = nodes[d % 3]
            .post_json(
                "/api/registrations",
                &json!({"device": "mac:112233445566", "duration": 600,
                        "destination": {"type": "http", "url": rx.url(&format!("/d{d}"))}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // Two each: a node that took more hands one over per round.
    eventually(
        "two destinations per node",
        Duration::from_secs(30),
        || async { owned(&nodes).await == [2.0, 2.0, 2.0] },
    )
    .await;
    for i in 0..5 {
        post(&nodes[i % 3], "mac:112233445566", &json!({"n": i})).await;
    }
    for d in 0..6 {
        let got = rx
            .wait_for(&format!("/d{d}"), 5, Duration::from_secs(10))
            .await;
        assert_eq!(got.len(), 5, "destination {d}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for d in 0..6 {
        assert_eq!(
            rx.received(&format!("/d{d}")).len(),
            5,
            "each event once to destination {d}"
        );
    }
    // A node dies: its two destinations go to the others within the lease.
    nodes[0].kill();
    let survivors = &nodes[1..];
    eventually(
        "the dead node's share taken",
        Duration::from_secs(15),
        || async { owned(survivors).await == [3.0, 3.0] },
    )
    .await;
    for i in 5..10 {
        post(&survivors[i % 2], "mac:112233445566", &json!({"n": i})).await;
    }
    for d in 0..6 {
        let got = rx
            .wait_for(&format!("/d{d}"), 10, Duration::from_secs(10))
            .await;
        let mut ns: Vec<i64> = got
            .iter()
            .map(|r| {
                serde_json::from_slice::<Value>(&r.body).unwrap()["n"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        ns.sort();
        ns.dedup();
        assert_eq!(
            ns,
            (0..10).collect::<Vec<_>>(),
            "destination {d}, at least once"
        );
    }
    for n in nodes.into_iter().skip(1) {
        n.stop().await;
    }
}

/// Two nodes with `extra` arguments and one registration forwarding to
/// `rx`'s `/t`; and which of them forwards to it.
async fn two_nodes_forwarding_to(
    redis: &Redis,
    rx: &crate::support::receiver::Receiver,
    extra: &[&str],
) -> (Vec<Process>, usize) {
    let nodes: Vec<Process> = (0..2).map(|_| node(redis, extra)).collect();
    let r = nodes[0]
        .post_json(
            "/api/registrations",
            &json!({"device": "mac:112233445566", "duration": 600,
                    "destination": {"type": "http", "url": rx.url("/t")}}),
        )
        .await;
    assert_eq!(r.status, 201);
    let dead = forwarder(&nodes).await;
    (nodes, dead)
}

/// Which node forwards (holds the one destination's lease), waiting for
/// one to, at most 10 s.
async fn forwarder(nodes: &[Process]) -> usize {
    let started = Instant::now();
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if metric(n, "ratatoskr_cluster_forwarding").await == 1.0 {
                return i;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no forwarder");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn another_node_takes_over_forwarding_when_the_forwarder_dies() {
    let Some(redis) = Redis::start() else { return };
    let rx = crate::support::receiver::Receiver::start().await;
    let (mut nodes, dead) = two_nodes_forwarding_to(&redis, &rx, &[]).await;
    let survivor = 1 - dead;
    eventually(
        "the registration on the survivor",
        Duration::from_secs(2),
        || async { nodes[survivor].get("/api/registrations").await.body["items"][0].is_object() },
    )
    .await;
    // Events keep coming, on the survivor; the forwarder dies halfway.
    for i in 0..100 {
        if i == 50 {
            nodes[dead].kill();
        }
        post(&nodes[survivor], "mac:112233445566", &json!({"n": i})).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    eventually(
        "the survivor takes the lease",
        Duration::from_secs(15),
        || async { metric(&nodes[survivor], "ratatoskr_cluster_forwarding").await == 1.0 },
    )
    .await;
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(10), "takeover in {took:?}");
    // Every event arrives at least once: the survivor replays what came
    // after the dead node's last checkpoint.
    let ns = |rx: &crate::support::receiver::Receiver| rx.numbers("/t");
    let started = Instant::now();
    loop {
        let mut got = ns(&rx);
        got.sort();
        got.dedup();
        if got.len() == 100 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "missing after failover: {:?}",
            (0..100).filter(|n| !got.contains(n)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = ns(&rx);
    let duplicates = all.len() - 100;
    eprintln!(
        "failover: 100 events, {} deliveries, {duplicates} duplicates",
        all.len()
    );
    assert!(
        duplicates <= 25,
        "duplicates are those after the last checkpoint only: {duplicates}"
    );
    nodes.remove(dead);
    for n in nodes {
        n.stop().await;
    }
}

/// A checkpoint passes only what is finished: events being retried for a
/// destination that is down when its forwarder dies are replayed from the
/// stream by the node that takes over.
#[tokio::test]
async fn events_for_a_destination_that_is_down_when_its_forwarder_dies_are_delivered_by_the_next() {
    let Some(redis) = Redis::start() else { return };
    let rx = crate::support::receiver::Receiver::start().await;
    let args = ["--retry-backoff", "50ms", "--retry-max-backoff", "300ms"];
    let (mut nodes, dead) = two_nodes_forwarding_to(&redis, &rx, &args).await;
    let survivor = 1 - dead;
    rx.down().await;
    let mut posted = Vec::new();
    for i in 0..40 {
        posted.push(post(&nodes[survivor], "mac:112233445566", &json!({"n": i})).await);
    }
    // The forwarder retries meanwhile, and checkpoints (never past them).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[dead].kill();
    rx.up().await;
    let got = rx.wait_for("/t", 40, Duration::from_secs(30)).await;
    let mut first_seen: Vec<String> = Vec::new();
    for r in &got {
        let id = r.header("webhook-id").to_owned();
        if !first_seen.contains(&id) {
            first_seen.push(id);
        }
    }
    assert_eq!(
        first_seen, posted,
        "every event, in order, after the takeover"
    );
    nodes.remove(dead);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_resume_from_the_shared_stream_stops_at_its_byte_budget_with_a_gap() {
    // 16 KiB events, a 64 KiB budget: four events at most (the budget, and
    // the one entry a page always takes), where the shared stream holds 20.
    const EVENT: usize = 16 * 1024;
    const BUDGET: usize = 64 * 1024;
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let gw = crate::support::util::Gateway::start_with(|c| {
        c.redis_url = Some(url);
        c.redis_mode = ratatoskr::redis_target::RedisMode::Single;
        c.redis_prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        // The ring keeps about one of them: the rest is the stream's part.
        c.replay_max_bytes = 64 * 1024;
        c.cluster_replay_max_bytes = BUDGET;
    })
    .await;
    let first = gw.publish_json(&json!({"n": 0})).await;
    let pad = "x".repeat(EVENT);
    for n in 1..=20 {
        gw.publish_json(&json!({"n": n, "pad": pad})).await;
    }
    let mut sub = gw
        .subscribe_with("/events", &[("last-event-id", &first)])
        .await;
    let mut before_gap = Vec::new();
    let gap = loop {
        let e = sub
            .next_event(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no gap after {} events of {EVENT} bytes: the stream's part went past the {BUDGET}-byte budget",
                    before_gap.len()
                )
            });
        if e.event.as_deref() == Some("gap") {
            break e;
        }
        before_gap.push(e.json()["n"].as_i64().unwrap());
    };
    assert!(
        !before_gap.is_empty() && before_gap.len() * EVENT <= BUDGET + EVENT,
        "the events of a {BUDGET}-byte budget (and one page's first entry), not {} of {EVENT} bytes",
        before_gap.len()
    );
    let expected: Vec<i64> = (1..=before_gap.len() as i64).collect();
    assert_eq!(before_gap, expected, "in order, with no duplicate");
    assert!(
        gap.json()["last_event_id"].is_string(),
        "the gap names the last event sent: {gap:?}"
    );
    // Then the ring's part, after the gap, and no event twice.
    let mut after = Vec::new();
    while let Some(e) = sub.next_event(Duration::from_millis(500)).await {
        after.push(e.json()["n"].as_i64().unwrap());
    }
    assert_eq!(
        after.last(),
        Some(&20),
        "the ring's part follows: {after:?}"
    );
    assert!(
        after.windows(2).all(|w| w[0] < w[1]) && after[0] > *before_gap.last().unwrap(),
        "after the gap, in order and nothing already sent: {after:?}"
    );
    drop(gw);
    redis.stop();
}
