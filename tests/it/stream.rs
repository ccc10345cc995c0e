//! GET /events: filters, framing, headers, heartbeats, protocols.

use std::time::Duration;

use serde_json::json;

use crate::support::client::Api;
use crate::support::util::{Gateway, SseItem};

#[tokio::test]
async fn stream_headers_and_retry() {
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events").await;
    assert_eq!(sub.headers["content-type"], "text/event-stream");
    assert_eq!(sub.headers["cache-control"], "no-cache");
    assert_eq!(sub.headers["x-accel-buffering"], "no");
    assert_eq!(
        sub.next_item(Duration::from_secs(2)).await,
        Some(SseItem::Retry(3000))
    );
}

#[tokio::test]
async fn device_filters_are_ored_and_unfiltered_subscribers_get_everything() {
    let gw = Gateway::start().await;
    let mut ab = gw.subscribe("/events?device=a&device=b").await;
    let mut c = gw.subscribe("/events?device=c").await;
    let mut all = gw.subscribe("/events").await;
    for d in ["a", "b", "c", "d"] {
        gw.post(
            &format!("/api/events?device={d}"),
            "application/json",
            json!({"d": d}).to_string(),
        )
        .await;
    }
    gw.post(
        "/api/events",
        "application/json",
        json!({"d": null}).to_string(),
    )
    .await;
    assert_eq!(ab.expect_event().await.json()["d"], "a");
    assert_eq!(ab.expect_event().await.json()["d"], "b");
    assert_eq!(c.expect_event().await.json()["d"], "c");
    for d in [json!("a"), json!("b"), json!("c"), json!("d"), json!(null)] {
        assert_eq!(all.expect_event().await.json()["d"], d);
    }
    ab.expect_silence(Duration::from_millis(200)).await;
    c.expect_silence(Duration::from_millis(1)).await;
}

#[tokio::test]
async fn type_globs_combine_with_devices() {
    let gw = Gateway::start().await;
    let mut sub = gw
        .subscribe("/events?type=device-*&type=online&device=x")
        .await;
    for (dev, ty) in [
        ("x", "device-status"),
        ("y", "device-status"),
        ("x", "online"),
        ("x", "offline"),
        ("x", "device-x"),
    ] {
        gw.post(
            &format!("/api/events?device={dev}&type={ty}"),
            "application/json",
            json!({"dev": dev, "ty": ty}).to_string(),
        )
        .await;
    }
    let got: Vec<String> = [
        sub.expect_event().await,
        sub.expect_event().await,
        sub.expect_event().await,
    ]
    .iter()
    .map(|e| e.json()["ty"].as_str().unwrap().to_owned())
    .collect();
    assert_eq!(got, ["device-status", "online", "device-x"]);
    sub.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn invalid_filters_are_refused_before_the_stream_starts() {
    let gw = Gateway::start().await;
    for q in [
        "device=mac:12",
        "device=",
        "type=a[b",
        "type=",
        "format=xml",
        "lastEventId=zz",
        "colour=red",
        "format=data&format=envelope",
    ] {
        gw.get(&format!("/events?{q}")).await.assert_problem(400);
    }
    let r = gw
        .http
        .get(gw.url("/events"))
        .header("last-event-id", "not-an-id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(gw.subscribers().await, 0);
}

#[tokio::test]
async fn hostile_payloads_cannot_forge_frames() {
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events").await;
    // Raw newlines between JSON tokens are legal JSON whitespace; a client
    // could try to use them to end the event and write fields of its own.
    // They are insignificant, so the gateway drops them: one data line.
    let hostile = "{\"a\":1,\n\n\"id: 999\":\r\n\"event: admin\",\r\"data: forged\":\n\n0}";
    let r = gw.post("/api/events", "application/json", hostile).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let ev = sub.expect_event().await;
    assert_eq!(ev.id.as_deref(), r.body["id"].as_str());
    assert_eq!(ev.event, None);
    assert_eq!(
        ev.data,
        "{\"a\":1,\"id: 999\":\"event: admin\",\"data: forged\":0}"
    );
    // Strings with escaped newlines and SSE-looking text stay one data line.
    let id2 = gw
        .publish_json(&json!({"x": "a\nid: 1\n\ndata: evil"}))
        .await;
    let ev = sub.expect_event().await;
    assert_eq!(ev.id.as_deref(), Some(id2.as_str()));
    assert_eq!(ev.json()["x"], "a\nid: 1\n\ndata: evil");
    sub.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn idle_streams_get_heartbeat_comments() {
    let gw = Gateway::start_with(|c| c.heartbeat = Duration::from_secs(1)).await;
    let mut sub = gw.subscribe("/events").await;
    let mut comments = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(3500);
    while let Some(item) = sub
        .next_item(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        if let SseItem::Comment(c) = item {
            assert_eq!(c, "keep-alive");
            comments += 1;
        }
    }
    assert!(
        (2..=4).contains(&comments),
        "{comments} heartbeats in 3.5 s at 1 s"
    );
}

#[tokio::test]
async fn heartbeats_go_on_after_an_event_one_interval_after_the_last_write() {
    let gw = Gateway::start_with(|c| c.heartbeat = Duration::from_secs(1)).await;
    let mut sub = gw.subscribe("/events").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.publish_json(&json!({"n": 1})).await;
    sub.expect_event().await;
    let written = tokio::time::Instant::now();
    // The timer set at the start fires at 1 s, half an interval after the
    // event: it must wait for 1.5 s, then keep beating.
    let mut beats = Vec::new();
    while beats.len() < 3 {
        match sub.next_item(Duration::from_secs(3)).await {
            Some(SseItem::Comment(c)) => {
                assert_eq!(c, "keep-alive");
                beats.push(written.elapsed().as_secs_f64());
            }
            Some(other) => panic!("only heartbeats after the event, got {other:?}"),
            None => panic!("heartbeats stopped after {beats:?} s"),
        }
    }
    for (i, at) in beats.iter().enumerate() {
        let expected = (i + 1) as f64;
        assert!(
            (expected - 0.15..expected + 0.6).contains(at),
            "heartbeat {i} at {at} s after the event: {beats:?}"
        );
    }
}

#[tokio::test]
async fn cors_allows_any_origin_by_default_and_can_be_restricted() {
    let gw = Gateway::start().await;
    let r = gw
        .http
        .get(gw.url("/events?lastEventId=0"))
        .header("origin", "https://app.example")
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    drop(r);

    let gw = Gateway::start_with(|c| c.cors_origins = vec!["https://ok.example".into()]).await;
    let ok = gw
        .http
        .get(gw.url("/events"))
        .header("origin", "https://ok.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://ok.example"
    );
    let other = gw
        .http
        .get(gw.url("/events"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn h2c_prior_knowledge_streams_too() {
    let gw = Gateway::start().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(gw.url("/events")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    use futures_util::StreamExt;
    let mut seen = String::new();
    let post = h2
        .post(gw.url("/api/events"))
        .header("content-type", "application/json")
        .body("{\"h2\":true}")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 202);
    while !seen.contains("{\"h2\":true}") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn many_subscribers_each_get_every_event_once_in_order() {
    let gw = Gateway::start().await;
    let mut subs = Vec::new();
    for _ in 0..50 {
        subs.push(gw.subscribe("/events").await);
    }
    for n in 0..100 {
        gw.publish_json(&json!({"n": n})).await;
    }
    for sub in &mut subs {
        for n in 0..100 {
            assert_eq!(sub.expect_event().await.json()["n"], n);
        }
        sub.expect_silence(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_burst_of_large_events_arrives_whole_and_in_order() {
    // Larger than one write chunk together: written in several chunks,
    // each event whole, none lost or reordered.
    let gw = Gateway::start().await;
    let mut sub = gw.subscribe("/events").await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let text = format!("{i:03}{}", "x".repeat(100 * 1024));
        ids.push(gw.publish_json(&json!(text)).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let ev = sub.expect_event().await;
        assert_eq!(ev.id.as_deref(), Some(id.as_str()));
        let text: String = serde_json::from_str(&ev.data).unwrap();
        assert!(text.starts_with(&format!("{i:03}")) && text.len() == 3 + 100 * 1024);
    }
}

/// Sends `request` raw and returns what came back within `wait` (the
/// stream stays open, so reading stops at the deadline).
async fn raw(gw: &Gateway, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut s, mut w) = s.into_split();
    // Written on its own: a server that refuses a huge head stops reading.
    let request = request.to_vec();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&request).await;
        w
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn raw_http1_edge_cases_over_a_real_socket() {
    let gw = Gateway::start().await;
    let wait = Duration::from_millis(500);
    // HTTP/1.0 (no Host needed) gets a stream in HTTP/1.0.
    let r = raw(&gw, b"GET /events HTTP/1.0\r\n\r\n", wait).await;
    assert!(r.starts_with("HTTP/1.0 200"), "{r}");
    assert!(
        r.contains("text/event-stream") && r.contains("\r\ndate: "),
        "{r}"
    );
    // HTTP/1.1 without Host is refused.
    let r = raw(&gw, b"GET /events HTTP/1.1\r\n\r\n", wait).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // A GET with a chunked body is hyper's to answer, and it does.
    let r = raw(
        &gw,
        b"GET /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        wait,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 "), "answered: {r:?}");
    // A head past the lean path's 8 KiB goes to hyper; one past hyper's
    // buffer is refused, not hung on.
    let mut big = b"GET /events HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let r = raw(&gw, &big, Duration::from_secs(2)).await;
    assert!(
        r.starts_with("HTTP/1.1 431") || r.starts_with("HTTP/1.1 400"),
        "{r:?}"
    );
    // Pipelined: a finite request first, then the stream, on one connection.
    let r = raw(
        &gw,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /events HTTP/1.1\r\nHost: x\r\n\r\n",
        wait,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("\"status\":\"ok\""), "{r}");
    assert!(r.contains("text/event-stream"), "the stream follows: {r}");
}

/// Decodes an HTTP/1.1 chunked body as far as it is complete: the data,
/// and how many bytes of `raw` that took.
fn dechunk(raw: &[u8]) -> (Vec<u8>, usize) {
    let (mut out, mut at) = (Vec::new(), 0);
    loop {
        let Some(eol) = raw[at..].windows(2).position(|w| w == b"\r\n") else {
            return (out, at);
        };
        let size = std::str::from_utf8(&raw[at..at + eol]).unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        let start = at + eol + 2;
        if raw.len() < start + size + 2 {
            return (out, at);
        }
        assert_eq!(&raw[start + size..start + size + 2], b"\r\n", "chunk end");
        out.extend_from_slice(&raw[start..start + size]);
        at = start + size + 2;
    }
}

/// Reads an HTTP/1.1 chunked SSE stream from `s` until `n` events came:
/// their `data` (JSON strings), checking the chunks' framing on the way.
/// `pause` between reads makes a slow reader.
async fn read_chunked_events(
    s: &mut tokio::net::TcpStream,
    n: usize,
    pause: Duration,
) -> Vec<String> {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let (mut at, mut data, mut events) = (None, Vec::new(), Vec::new());
    while events.len() < n {
        tokio::time::sleep(pause).await;
        let got = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("every event arrives")
            .unwrap();
        assert!(got > 0, "the stream ended after {} events", events.len());
        raw.extend_from_slice(&buf[..got]);
        let from = match at {
            Some(from) => from,
            None => match raw.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(p) => {
                    let head = String::from_utf8_lossy(&raw[..p]).to_lowercase();
                    assert!(head.contains("transfer-encoding: chunked"), "{head}");
                    p + 4
                }
                None => continue,
            },
        };
        let (more, used) = dechunk(&raw[from..]);
        at = Some(from + used);
        data.extend_from_slice(&more);
        while let Some(end) = data.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8(data.drain(..end + 2).collect()).unwrap();
            if let Some(line) = block.lines().find(|l| l.starts_with("data: ")) {
                events.push(serde_json::from_str::<String>(&line[6..]).unwrap());
            }
        }
    }
    events
}

/// Opens a raw stream with a small receive buffer (so that it fills).
async fn raw_stream(gw: &Gateway) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(gw.addr).await.unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    s
}

fn inline_gateway(events: usize) -> impl FnOnce(&mut ratatoskr::config::Config) {
    move |c| {
        c.inline_writes = ratatoskr::config::InlineWrites::On;
        c.subscriber_buffer = events;
        c.subscriber_buffer_bytes = 64 << 20;
        c.heartbeat = Duration::from_secs(1);
    }
}

/// With inline writes (a publish writing to an idle stream's socket
/// itself), a reader that stops until its socket is full gets, once it
/// reads again, every event whole, in order, in well-formed chunks: what a
/// publish could not write whole, the stream's task finishes, and the
/// events after it wait behind it.
#[tokio::test]
async fn inline_writes_into_a_full_socket_are_finished_whole_and_in_order() {
    const EVENTS: usize = 400;
    let gw = Gateway::start_with(inline_gateway(EVENTS)).await;
    let mut s = raw_stream(&gw).await;
    gw.wait_subscribers(1).await;
    // Not read while they are published: the socket fills up mid-event.
    for i in 0..EVENTS {
        let text = format!("{i:04}{}", "y".repeat(32 * 1024 + i));
        gw.publish_json(&json!(text)).await;
    }
    let events = read_chunked_events(&mut s, EVENTS, Duration::ZERO).await;
    for (i, text) in events.iter().enumerate() {
        assert!(
            text.starts_with(&format!("{i:04}")) && text.len() == 4 + 32 * 1024 + i,
            "event {i} is whole and in its place"
        );
    }
}

/// The same on several threads, with spaced events (each written by its
/// publish where it can) and a reader that falls behind: publishes and the
/// stream's task write at once on different threads, and both streams stay
/// whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_writes_and_the_streams_own_writes_on_several_threads_stay_in_order() {
    const EVENTS: usize = 120;
    let gw = Gateway::start_with(inline_gateway(EVENTS)).await;
    let mut slow = raw_stream(&gw).await;
    let mut fast = raw_stream(&gw).await;
    gw.wait_subscribers(2).await;
    let publisher = {
        let (http, url) = (gw.http.clone(), gw.url("/api/events"));
        tokio::spawn(async move {
            for i in 0..EVENTS {
                let text = format!("{i:04}{}", "z".repeat(24 * 1024 + i * 97));
                let r = http.post(&url).json(&json!(text)).send().await.unwrap();
                assert_eq!(r.status(), 202);
                // Spaced past the hub's quiet gap, so that publishes write.
                tokio::time::sleep(Duration::from_millis(12 + (i % 5) as u64 * 4)).await;
            }
        })
    };
    let fast_events = read_chunked_events(&mut fast, EVENTS, Duration::ZERO).await;
    let slow_events = read_chunked_events(&mut slow, EVENTS, Duration::from_millis(3)).await;
    publisher.await.unwrap();
    for events in [fast_events, slow_events] {
        for (i, text) in events.iter().enumerate() {
            assert!(
                text.starts_with(&format!("{i:04}")) && text.len() == 4 + 24 * 1024 + i * 97,
                "event {i} is whole and in its place"
            );
        }
    }
}
