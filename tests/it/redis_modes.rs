//! Cluster mode past one Redis primary: the shipped binary on a real
//! Redis Cluster (three primaries started by the test, on free ports) and
//! on a real Sentinel set-up, including the death of the primary.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::take;
use crate::support::client::Api;
use crate::support::process::{temp_dir, Process};
use crate::support::redis::{RedisCluster, SentinelSet, SENTINEL_MASTER};
use crate::support::util::{eventually, SseClient};

fn node(args: &[&str]) -> Process {
    Process::start(&temp_dir("node"), args)
}

fn cluster_node(cluster: &RedisCluster, prefix: &str, extra: &[&str]) -> Process {
    // Two seeds of three: the client finds the third from them.
    let seeds = cluster.seeds(2);
    let mut args = vec![
        "--redis-mode",
        "cluster",
        "--redis-url",
        &seeds,
        "--redis-prefix",
        prefix,
    ];
    args.extend_from_slice(extra);
    node(&args)
}

fn sentinel_node(set: &SentinelSet, extra: &[&str]) -> Process {
    let url = set.url();
    let mut args = vec![
        "--redis-mode",
        "sentinel",
        "--redis-url",
        &url,
        "--redis-sentinel-master",
        SENTINEL_MASTER,
    ];
    args.extend_from_slice(extra);
    node(&args)
}

async fn post(n: &Process, device: &str, i: i64) -> String {
    crate::cluster::post(n, device, &json!({ "n": i })).await
}

/// Two nodes on one Redis Cluster: every event once, in one order, on
/// both; a resume on the other node; a registration forwarding once; and
/// every key the gateway wrote on one primary, hash-tagged.
#[tokio::test]
async fn two_nodes_on_a_redis_cluster_deliver_resume_and_forward_once() {
    let Some(cluster) = RedisCluster::start(3, 0) else {
        return;
    };
    let (a, b) = (
        cluster_node(&cluster, "rc", &[]),
        cluster_node(&cluster, "rc", &[]),
    );
    let mut subs = [a.subscribe("/events").await, b.subscribe("/events").await];
    let mut posted = Vec::new();
    for i in 0..20 {
        let n = if i % 2 == 0 { &a } else { &b };
        posted.push(post(n, "mac:112233445566", i).await);
    }
    let seen_a = take(&mut subs[0], 20).await;
    let seen_b = take(&mut subs[1], 20).await;
    assert_eq!(seen_a, seen_b, "same events, same ids, same order");
    let ns: Vec<i64> = seen_a.iter().map(|(_, n)| *n).collect();
    assert_eq!(ns, (0..20).collect::<Vec<_>>(), "each once, in order");
    let ids: Vec<String> = seen_a.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, posted, "the 202's id is the delivered id");

    // A client that saw ten events on A resumes on B.
    let mut resumed = b
        .subscribe_with("/events", &[("Last-Event-ID", &ids[9])])
        .await;
    let rest = take(&mut resumed, 10).await;
    assert_eq!(rest, seen_a[10..].to_vec());

    // A registration made on B forwards events posted on A, once.
    let rx = crate::support::receiver::Receiver::start().await;
    let created = b
        .post_json(
            "/api/registrations",
            &json!({"device": "mac:112233445566", "duration": 600,
                    "destination": {"type": "http", "url": rx.url("/c")}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let path = format!(
        "/api/registrations/{}",
        created.body["id"].as_str().unwrap()
    );
    eventually(
        "the registration reaches A",
        Duration::from_secs(3),
        || async { a.get(&path).await.status == 200 },
    )
    .await;
    for i in 100..105 {
        post(&a, "mac:112233445566", i).await;
    }
    rx.wait_for("/c", 5, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = rx.numbers("/c");
    assert_eq!(got, (100..105).collect::<Vec<_>>(), "once each, in order");

    // Both nodes list each other.
    eventually("the member list", Duration::from_secs(6), || async {
        b.get("/api/stats").await.body["cluster"]["members"]
            .as_array()
            .is_some_and(|m| m.len() == 2)
    })
    .await;

    // Every key is on the primary of `{rc}`'s slot, and tagged.
    let owner = cluster.owner_of("{rc}:events");
    for (i, n) in cluster.nodes.iter().enumerate() {
        let keys = n.query("KEYS *");
        if i == owner {
            assert!(!keys.starts_with("*0"), "the owner holds the keys: {keys}");
        }
    }
    let all = cluster.nodes[owner].query("DBSIZE");
    let tagged = cluster.nodes[owner].query("EVAL \"return #redis.call('KEYS', '{rc}:*')\" 0");
    assert_eq!(
        all.trim().trim_start_matches(':'),
        tagged.trim().trim_start_matches(':')
    );
    for (i, n) in cluster.nodes.iter().enumerate() {
        if i != owner {
            assert_eq!(
                n.query("DBSIZE").trim(),
                ":0",
                "node {i} holds none of the gateway's keys"
            );
        }
    }
    a.stop().await;
    b.stop().await;
}

/// Publishes `{"n": i}` for i from `first` on, one every 25 ms until
/// `until` whatever the answers (as many publishers would: one whose request
/// waits does not hold up the others): the numbers answered 202, and how
/// many were answered 503 (each with `Retry-After`).
async fn publish_until(n: &Process, first: i64, until: Instant) -> (Vec<i64>, usize) {
    publish_spread(n, first, until, &["mac:112233445566"]).await
}

/// As [`publish_until`], the events going to `devices` in turn.
pub(crate) async fn publish_spread(
    n: &Process,
    first: i64,
    until: Instant,
    devices: &[&str],
) -> (Vec<i64>, usize) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let (mut stored, mut refused) = (Vec::new(), 0);
    let mut pending = FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    let mut i = first;
    let mut answered = |(i, r): (i64, crate::support::util::Reply)| match r.status {
        202 => stored.push(i),
        503 => {
            assert!(
                r.headers.get("retry-after").is_some(),
                "a 503 says when to retry: {}",
                r.text
            );
            refused += 1;
        }
        other => panic!("answered {other}: {}", r.text),
    };
    while Instant::now() < until {
        tokio::select! {
            _ = tick.tick() => {
                let device = devices[(i - first) as usize % devices.len()];
                pending.push(async move {
                    let r = n
                        .post_json(&format!("/api/events?device={device}&type=t"), &json!({"n": i}))
                        .await;
                    (i, r)
                });
                i += 1;
            }
            Some(done) = pending.next() => answered(done),
        }
    }
    while let Some(done) = pending.next().await {
        answered(done);
    }
    (stored, refused)
}

/// Reads `sub` until every number in `wanted` arrived (each at most once),
/// allowing `gap` notices; fails after `within`.
pub(crate) async fn read_all(sub: &mut SseClient, wanted: &[i64], within: Duration) {
    let deadline = Instant::now() + within;
    let mut seen = std::collections::BTreeSet::new();
    let mut dupes = Vec::new();
    while !wanted.iter().all(|n| seen.contains(n)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(e) = sub.next_event(left).await else {
            let missing: Vec<&i64> = wanted.iter().filter(|n| !seen.contains(*n)).collect();
            panic!("acknowledged events never arrived: {missing:?}");
        };
        if e.event.is_some() {
            continue; // a gap notice (an unacknowledged entry lost)
        }
        let n = e.json()["n"].as_i64().unwrap();
        if !seen.insert(n) {
            dupes.push(n);
        }
    }
    assert!(dupes.is_empty(), "delivered twice: {dupes:?}");
}

/// The primary that holds the gateway's keys dies (kill -9) under load,
/// just after its replica fell behind; the replica is promoted. Ingest
/// answers 503 with `Retry-After` meanwhile, every event answered 202
/// reaches the subscribers (with `--redis-ack-replicas 0`, those the
/// replica never got are lost, and this fails), and ingest goes on after
/// on the promoted primary alone.
#[tokio::test]
async fn a_redis_cluster_failover_loses_nothing_acknowledged() {
    let Some(cluster) = RedisCluster::start(3, 1) else {
        return;
    };
    let a = cluster_node(
        &cluster,
        "fo",
        &["--redis-ack-replicas", "1", "--heartbeat", "1s"],
    );
    let b = cluster_node(
        &cluster,
        "fo",
        &["--redis-ack-replicas", "1", "--heartbeat", "1s"],
    );
    post(&a, "mac:112233445566", -1).await;
    let mut sub = b.subscribe("/events").await;
    let owner = cluster.owner_of("{fo}:events");
    let replica = cluster.replica_of(owner);
    let until = Instant::now() + Duration::from_secs(9);
    let (killer, publishers) = tokio::join!(
        async {
            // The replica falls behind (frozen), the primary dies, the
            // replica comes back and is promoted: what it never got was
            // never acknowledged.
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.nodes[replica].freeze();
            tokio::time::sleep(Duration::from_millis(700)).await;
            cluster.nodes[owner].signal("-KILL");
            cluster.nodes[replica].thaw();
        },
        futures_util::future::join(
            publish_until(&a, 0, until),
            publish_until(&b, 1_000_000, until)
        ),
    );
    let () = killer;
    let ((mut stored, refused_a), (stored_b, refused_b)) = publishers;
    stored.extend(stored_b);
    assert!(refused_a + refused_b > 0, "the election was seen as 503s");
    assert!(!stored.is_empty());
    let after = post(&a, "mac:112233445566", 5_000_000).await;
    assert!(!after.is_empty());
    stored.push(5_000_000);
    read_all(&mut sub, &stored, Duration::from_secs(20)).await;
    a.stop().await;
    b.stop().await;
}

/// A node on Sentinel follows its primary through a failover: 503 with
/// `Retry-After` meanwhile, nothing acknowledged lost, ingest on the new
/// primary after.
#[tokio::test]
async fn a_node_on_sentinel_follows_a_failover_and_loses_nothing_acknowledged() {
    let Some(set) = SentinelSet::start() else {
        return;
    };
    let a = sentinel_node(&set, &["--redis-ack-replicas", "1", "--heartbeat", "1s"]);
    post(&a, "mac:112233445566", -1).await;
    let mut sub = a.subscribe("/events").await;
    let until = Instant::now() + Duration::from_secs(10);
    let (killer, (mut stored, refused)) = tokio::join!(
        async {
            // As on the cluster: the replica behind, then the primary gone.
            tokio::time::sleep(Duration::from_secs(2)).await;
            set.replica.freeze();
            tokio::time::sleep(Duration::from_millis(700)).await;
            set.primary.signal("-KILL");
            set.replica.thaw();
        },
        publish_until(&a, 0, until),
    );
    let () = killer;
    assert!(refused > 0, "the failover was seen as 503s");
    eventually("the replica promoted", Duration::from_secs(10), || async {
        set.primary_port() == Some(set.ports.1)
            && set
                .replica
                .query("INFO replication")
                .contains("role:master")
    })
    .await;
    eventually(
        "ingest on the new primary",
        Duration::from_secs(10),
        || async {
            a.post_json(
                "/api/events?device=mac:112233445566&type=t",
                &json!({"n": 5_000_000}),
            )
            .await
            .status
                == 202
        },
    )
    .await;
    stored.push(5_000_000);
    read_all(&mut sub, &stored, Duration::from_secs(20)).await;
    a.stop().await;
}

/// A sentinel URL without its master's name, seeds in single mode, and a
/// cluster refusing a single-mode node are each refused at start, saying
/// what to give instead.
#[test]
fn a_mode_that_does_not_fit_is_refused_at_start_naming_the_fix() {
    let r = crate::setup::run(
        &[
            "--redis-mode",
            "sentinel",
            "--redis-url",
            "redis://127.0.0.1:26379",
        ],
        &[],
    );
    crate::setup::assert_fatal(&r, &["--redis-sentinel-master"]);
    let r = crate::setup::run(
        &[
            "--redis-url",
            "redis://127.0.0.1:7001,redis://127.0.0.1:7002",
        ],
        &[],
    );
    crate::setup::assert_fatal(&r, &["--redis-mode cluster"]);
    let r = crate::setup::run(&["--redis-mode", "cluster"], &[]);
    crate::setup::assert_fatal(&r, &["--redis-mode cluster needs --redis-url"]);
}

/// With `--redis-ack-replicas 1`, an event is answered 202 only once the
/// replica holds it: while the replica is frozen, ingest answers 503 and
/// takes the event back out of the stream; once it thaws, 202 again.
#[tokio::test]
async fn an_event_is_acknowledged_only_once_a_replica_holds_it() {
    let Some(set) = SentinelSet::start() else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", set.ports.0);
    let a = node(&[
        "--redis-url",
        &url,
        "--redis-prefix",
        "acked",
        "--redis-ack-replicas",
        "1",
    ]);
    eventually("the replica counted", Duration::from_secs(5), || async {
        crate::support::util::series_value(
            &a.get("/metrics").await.text,
            "ratatoskr_cluster_replicas_acking",
        ) == Some(1.0)
    })
    .await;
    post(&a, "mac:112233445566", 1).await;
    set.replica.freeze();
    let r = a
        .post_json(
            "/api/events?device=mac:112233445566&type=t",
            &json!({"n": 2}),
        )
        .await;
    set.replica.thaw();
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.headers.get("retry-after").is_some());
    assert!(r.text.contains("replicas"), "{}", r.text);
    // Taken back: the stream holds the first event only.
    assert_eq!(set.primary.query("XLEN acked:events").trim(), ":1");
    post(&a, "mac:112233445566", 3).await;
    assert_eq!(set.primary.query("XLEN acked:events").trim(), ":2");
    a.stop().await;
}
