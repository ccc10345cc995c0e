//! `--redis-partitions`: the event stream split over several Redis
//! streams, on a real three-primary Redis Cluster (and on one Redis),
//! with the shipped binary. Every node publishes every partition's
//! events in one order with the same ids, a device's events keep theirs,
//! and a `Last-Event-ID` resumes on any node with every missed event once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;

use crate::cluster::take;
use crate::support::client::Api;
use crate::support::process::{temp_dir, Process};
use crate::support::redis::{Redis, RedisCluster};
use crate::support::util::eventually;

fn node(args: &[&str]) -> Process {
    Process::start(&temp_dir("node"), args)
}

fn cluster_node(cluster: &RedisCluster, partitions: &str) -> Process {
    let seeds = cluster.seeds(2);
    node(&[
        "--redis-mode",
        "cluster",
        "--redis-url",
        &seeds,
        "--redis-prefix",
        "pt",
        "--redis-partitions",
        partitions,
    ])
}

fn device(k: usize) -> String {
    format!("mac:{k:012x}")
}

/// Posts `{"n": i}` for `device`: its id.
async fn post(n: &Process, device: &str, i: i64) -> String {
    crate::cluster::post(n, device, &json!({ "n": i })).await
}

/// Each device's numbers, in the order they came.
fn per_device(
    seen: &[(String, i64)],
    device_of: &BTreeMap<i64, usize>,
) -> BTreeMap<usize, Vec<i64>> {
    let mut out: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    for (_, n) in seen {
        out.entry(device_of[n]).or_default().push(*n);
    }
    out
}

#[tokio::test]
async fn three_partitions_on_a_redis_cluster_keep_one_order_and_resume_on_any_node() {
    let Some(cluster) = RedisCluster::start(3, 0) else {
        return;
    };
    let nodes = [
        cluster_node(&cluster, "3"),
        cluster_node(&cluster, "3"),
        cluster_node(&cluster, "3"),
    ];
    let mut subs = Vec::new();
    for n in &nodes {
        subs.push(n.subscribe("/events").await);
    }
    let one = device(5);
    let mut only_one = nodes[2].subscribe(&format!("/events?device={one}")).await;

    // 60 events of 12 devices, posted round-robin to the three nodes.
    let mut posted = BTreeSet::new();
    let mut device_of = BTreeMap::new();
    for i in 0..60i64 {
        let d = (i as usize * 7) % 12;
        device_of.insert(i, d);
        let id = post(&nodes[i as usize % 3], &device(d), i).await;
        assert!(
            id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{id}"
        );
        posted.insert(id);
    }
    let mut seen = Vec::new();
    for s in &mut subs {
        seen.push(take(s, 60).await);
    }
    assert_eq!(seen[0], seen[1], "same events, ids and order on A and B");
    assert_eq!(seen[0], seen[2], "same events, ids and order on A and C");
    let ns: BTreeSet<i64> = seen[0].iter().map(|e| e.1).collect();
    assert_eq!(ns, (0..60).collect(), "every event, once");
    let ids: Vec<&String> = seen[0].iter().map(|e| &e.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids rise: {ids:?}");
    assert_eq!(
        ids.iter().map(|s| (*s).clone()).collect::<BTreeSet<_>>(),
        posted,
        "the 202s' ids are the delivered ids"
    );
    for (d, ns) in per_device(&seen[0], &device_of) {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "device {d} in order: {ns:?}"
        );
    }
    let of_one: Vec<i64> = (0..60).filter(|i| device_of[i] == 5).collect();
    let got: Vec<i64> = take(&mut only_one, of_one.len())
        .await
        .iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(got, of_one, "a device's stream: its events, in order");

    // The three partitions are on the three primaries.
    let mut holders = 0;
    for n in &cluster.nodes {
        let keys = n.query("EVAL \"return #redis.call('KEYS', '*:events')\" 0");
        match keys.trim() {
            ":1" => holders += 1,
            ":0" => {}
            other => panic!("a primary holds {other} event streams"),
        }
    }
    assert_eq!(holders, 3, "one partition per primary");

    // A client that saw 30 events on A resumes on B, and on a node that
    // starts now (its ring is empty: the resume reads every partition).
    let after = seen[0][29].0.clone();
    let mut on_b = nodes[1]
        .subscribe_with("/events", &[("Last-Event-ID", &after)])
        .await;
    assert_eq!(take(&mut on_b, 30).await, seen[0][30..].to_vec());
    let late = cluster_node(&cluster, "3");
    let mut on_late = late
        .subscribe_with("/events", &[("Last-Event-ID", &after)])
        .await;
    assert_eq!(take(&mut on_late, 30).await, seen[0][30..].to_vec());
    // ... and goes on live, in the same order as everyone.
    post(&nodes[0], &device(1), 60).await;
    post(&nodes[1], &device(2), 61).await;
    let next = take(&mut subs[0], 2).await;
    assert_eq!(take(&mut on_late, 2).await, next);
    assert_eq!(take(&mut on_b, 2).await, next);
    assert_eq!(take(&mut subs[1], 2).await, next);
    assert_eq!(take(&mut subs[2], 2).await, next);

    // An Idempotency-Key holds across nodes (it lives in its event's partition).
    let keyed_path = format!("/api/events?device={}&type=t", device(9));
    let key = [("Idempotency-Key", "k-1")];
    let first = nodes[0]
        .post_with(&keyed_path, "application/json", "{\"n\":99}", &key)
        .await;
    assert_eq!(first.status, 202, "{}", first.text);
    let again = nodes[1]
        .post_with(&keyed_path, "application/json", "{\"n\":99}", &key)
        .await;
    assert_eq!(again.status, 202, "{}", again.text);
    assert_eq!(again.body["id"], first.body["id"]);

    // An NDJSON batch of many devices: a result per line, all stored.
    let lines: String = (100..112)
        .map(|i| format!("{{\"n\":{i},\"device\":\"{}\"}}\n", device(i as usize % 12)))
        .collect();
    let batch = nodes[2]
        .post("/api/events?type=t", "application/x-ndjson", lines)
        .await;
    assert_eq!(batch.status, 202, "{}", batch.text);
    assert_eq!(batch.body["accepted"], 12, "{}", batch.text);
    let got = take(&mut subs[1], 13).await;
    assert_eq!(take(&mut subs[0], 13).await, got);
    assert_eq!(take(&mut subs[2], 13).await, got);
    let ns: BTreeSet<i64> = got.iter().map(|e| e.1).collect();
    assert_eq!(ns, std::iter::once(99).chain(100..112).collect());
    let batch_ids: BTreeSet<String> = batch.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(batch_ids.iter().all(|id| got.iter().any(|e| &e.0 == id)));

    // Posted at once from every node to every partition: each node still
    // publishes all of them, in one order (the merge holds an event until
    // no partition can bring an earlier one).
    let burst = futures_util::future::join_all((0..12).map(|w| {
        let n = &nodes[w % 3];
        async move {
            for k in 0..25 {
                let i = 1000 + (w * 25 + k) as i64;
                post(n, &device(w), i).await;
            }
        }
    }));
    burst.await;
    let mut bursts = Vec::new();
    for s in &mut subs {
        bursts.push(take(s, 300).await);
    }
    let ns: BTreeSet<i64> = bursts[0].iter().map(|e| e.1).collect();
    assert_eq!(ns.len(), 300, "every event of the burst, once");
    assert_eq!(bursts[0], bursts[1]);
    assert_eq!(bursts[0], bursts[2]);
    assert!(bursts[0].windows(2).all(|w| w[0].0 < w[1].0), "ids rise");

    // A registration forwards a device's events once, in order.
    let rx = crate::support::receiver::Receiver::start().await;
    let created = nodes[1]
        .post_json(
            "/api/registrations",
            &json!({"device": device(3), "duration": 600,
                    "destination": {"type": "http", "url": rx.url("/p")}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let path = format!(
        "/api/registrations/{}",
        created.body["id"].as_str().unwrap()
    );
    for n in &nodes {
        eventually(
            "the registration everywhere",
            Duration::from_secs(3),
            || async { n.get(&path).await.status == 200 },
        )
        .await;
    }
    for i in 200..206i64 {
        // Interleaved with other devices' events, on every node.
        post(&nodes[i as usize % 3], &device(3), i).await;
        post(&nodes[(i as usize + 1) % 3], &device(4), i + 1000).await;
    }
    rx.wait_for("/p", 6, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let forwarded = rx.numbers("/p");
    assert_eq!(
        forwarded,
        (200..206).collect::<Vec<_>>(),
        "once each, in order"
    );
    for n in nodes {
        n.stop().await;
    }
    late.stop().await;
}

/// Partitions on one Redis (no cluster): two streams with their own keys,
/// one order on both nodes, and a resume on a node started later.
#[tokio::test]
async fn two_partitions_on_one_redis_keep_one_order() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let args = ["--redis-url", &url, "--redis-partitions", "2"];
    let (a, b) = (node(&args), node(&args));
    let mut subs = [a.subscribe("/events").await, b.subscribe("/events").await];
    // One device only, so one partition: the other, never written, lost
    // nothing, and a resume on a node started later says no `gap`.
    for i in -3..0i64 {
        post(&a, &device(0), i).await;
    }
    let first = take(&mut subs[0], 3).await;
    assert_eq!(take(&mut subs[1], 3).await, first);
    let early = node(&args);
    let mut resumed = early
        .subscribe_with("/events", &[("Last-Event-ID", &first[0].0)])
        .await;
    assert_eq!(take(&mut resumed, 2).await, first[1..].to_vec());
    early.stop().await;
    for i in 0..30i64 {
        let n = if i % 2 == 0 { &a } else { &b };
        post(n, &device(i as usize % 5), i).await;
    }
    let seen_a = take(&mut subs[0], 30).await;
    assert_eq!(take(&mut subs[1], 30).await, seen_a);
    let keys = redis.query("EXISTS ratatoskr:p0:events ratatoskr:p1:events ratatoskr:events");
    assert_eq!(keys.trim(), ":2", "a stream per partition, and no other");
    let c = node(&args);
    let mut resumed = c
        .subscribe_with("/events", &[("Last-Event-ID", &seen_a[9].0)])
        .await;
    assert_eq!(take(&mut resumed, 20).await, seen_a[10..].to_vec());

    // One batch of more events of one partition than a millisecond's ids
    // hold (4,096 in a split stream): every one stored, with ids that rise.
    let lines: String = (0..5000)
        .map(|i| format!("{{\"n\":{},\"device\":\"{}\"}}\n", 10_000 + i, device(1)))
        .collect();
    let batch = a
        .post("/api/events?type=t", "application/x-ndjson", lines)
        .await;
    assert_eq!(batch.status, 202, "{}", batch.text);
    assert_eq!(batch.body["accepted"], 5000);
    let got = take(&mut subs[1], 5000).await;
    assert!(got
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 + 1 == w[1].1));
    let ids: Vec<&str> = batch.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, got.iter().map(|e| e.0.as_str()).collect::<Vec<_>>());
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// The primary of one partition dies (kill -9) under load on every
/// partition, and its replica is promoted. Meanwhile the other partitions
/// go on accepting (their events wait, on every node, for the dead one's
/// promise, so that the order holds); afterwards every event answered 202
/// reaches a subscriber once, and ingest goes on.
#[tokio::test]
async fn a_partitions_failover_loses_nothing_acknowledged_and_the_others_go_on() {
    let Some(cluster) = RedisCluster::start(3, 1) else {
        return;
    };
    let seeds = cluster.seeds(2);
    let args = [
        "--redis-mode",
        "cluster",
        "--redis-url",
        &seeds,
        "--redis-prefix",
        "pf",
        "--redis-partitions",
        "3",
        "--redis-ack-replicas",
        "1",
        "--heartbeat",
        "1s",
    ];
    let (a, b) = (node(&args), node(&args));
    let devices: Vec<String> = (0..12).map(device).collect();
    let devices: Vec<&str> = devices.iter().map(String::as_str).collect();
    post(&a, devices[0], -1).await;
    let mut sub = b.subscribe("/events").await;
    // The first three servers are the primaries, one partition each.
    let dead = 0;
    let until = std::time::Instant::now() + Duration::from_secs(9);
    let (killer, publishers) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.nodes[dead].signal("-KILL");
        },
        futures_util::future::join(
            crate::redis_modes::publish_spread(&a, 0, until, &devices),
            crate::redis_modes::publish_spread(&b, 1_000_000, until, &devices)
        ),
    );
    let () = killer;
    let ((mut stored, refused_a), (stored_b, refused_b)) = publishers;
    stored.extend(stored_b);
    assert!(
        refused_a + refused_b > 0,
        "the dead partition's events were refused meanwhile"
    );
    let late: Vec<i64> = stored
        .iter()
        .copied()
        .filter(|n| n % 1_000_000 > 120)
        .collect();
    assert!(!late.is_empty(), "events were stored after the kill");
    for (i, d) in devices.iter().enumerate() {
        stored.push(5_000_000 + i as i64);
        post(&a, d, 5_000_000 + i as i64).await;
    }
    crate::redis_modes::read_all(&mut sub, &stored, Duration::from_secs(30)).await;
    a.stop().await;
    b.stop().await;
}

/// A node that would split the stream otherwise than the cluster's
/// first node is refused at start, naming the fix.
#[tokio::test]
async fn a_node_with_another_partition_count_is_refused_at_start() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let first = node(&["--redis-url", &url, "--redis-partitions", "3"]);
    // Refused once it reaches Redis, which is after binding (as every
    // check that needs the cluster, for now): not with `assert_fatal`.
    let refused = |args: &[&str], needles: &[&str]| {
        let r = crate::setup::run(args, &[]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.code().is_some_and(|c| c != 0 && c != 101), "{err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("ratatoskr: cannot start"))
            .unwrap_or_else(|| panic!("no fatal line: {err}"));
        for n in needles {
            assert!(line.contains(n), "{n:?} in {line}");
        }
    };
    refused(
        &["--redis-url", &url, "--redis-partitions", "2"],
        &[
            "over 3 partitions",
            "not --redis-partitions 2",
            "same number",
        ],
    );
    refused(&["--redis-url", &url], &["not --redis-partitions 1"]);
    first.stop().await;
}

/// The partition the docs say a device goes to: 64-bit FNV-1a of its id,
/// modulo the partitions.
fn partition_of(device: &str, partitions: u64) -> u64 {
    let h = device.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    h % partitions
}

/// A node whose only stream is filtered to one device reads that
/// device's partition alone (once the others linger out), and a stream
/// that needs every partition joins them there and then, with a resume
/// from before that gets every missed event once.
#[tokio::test]
async fn a_node_reads_only_the_partitions_its_streams_need() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let args = ["--redis-url", &url, "--redis-partitions", "3"];
    // Three devices in each partition.
    let mut devices: Vec<String> = Vec::new();
    for p in 0..3 {
        devices.extend(
            (0..)
                .map(device)
                .filter(|d| partition_of(d, 3) == p)
                .take(3),
        );
    }
    let (a, b) = (node(&args), node(&args));
    let mut all_b = b.subscribe("/events").await;
    let mine = &devices[0];
    let mut only_mine = a.subscribe(&format!("/events?device={mine}")).await;
    // The partitions A's stream does not need linger, then go.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let read = "ratatoskr_cluster_read_bytes_total";
    let (a0, b0) = (
        crate::cluster::metric(&a, read).await,
        crate::cluster::metric(&b, read).await,
    );
    for i in 0..36i64 {
        post(&b, &devices[i as usize % 9], i).await;
    }
    let seen = take(&mut all_b, 36).await;
    let mine_n: Vec<i64> = (0..36).filter(|i| i % 9 == 0).collect();
    let got: Vec<i64> = take(&mut only_mine, mine_n.len())
        .await
        .iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(got, mine_n);
    let (a1, b1) = (
        crate::cluster::metric(&a, read).await,
        crate::cluster::metric(&b, read).await,
    );
    let (by_a, by_b) = (a1 - a0, b1 - b0);
    assert!(by_b > 0.0, "B read the events");
    assert!(
        by_a * 2.0 < by_b,
        "A read one partition of three: {by_a} bytes against B's {by_b}"
    );
    // A stream of every device on A, resuming from before: A joins the
    // other partitions, and the resume reads the stream.
    let mut all_a = a
        .subscribe_with("/events", &[("Last-Event-ID", &seen[4].0)])
        .await;
    assert_eq!(take(&mut all_a, 31).await, seen[5..].to_vec());
    for i in 36..42i64 {
        post(&b, &devices[i as usize % 9], i).await;
    }
    let next = take(&mut all_b, 6).await;
    assert_eq!(
        take(&mut all_a, 6).await,
        next,
        "then live, in the same order"
    );
    for n in [a, b] {
        n.stop().await;
    }
}
