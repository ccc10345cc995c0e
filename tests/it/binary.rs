//! The shipped binary: configuration errors and signals.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ratatoskr");

#[test]
fn invalid_configuration_exits_2_with_a_clear_message() {
    let out = Command::new(BIN)
        .args(["--heartbeat", "10ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--heartbeat must be at least 1s"));
    let out = Command::new(BIN)
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .env("RATATOSKR_MAX_BODY", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lots"));
}

#[tokio::test]
async fn sigterm_tells_subscribers_and_exits_0() {
    // The default store (redb), in a directory of its own.
    let data = std::env::temp_dir().join(format!("ratatoskr-bin-{}", uuid::Uuid::new_v4()));
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("a log line").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON logs");
        if v["message"] == "listening" {
            break v["listen"].as_str().unwrap().to_owned();
        }
    };
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("http://{addr}/events"))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    use futures_util::StreamExt;
    let mut text = String::new();
    // How the body ended, for the failure message.
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), body.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
            Ok(Some(Err(e))) => break format!("error: {e:?}"),
            Ok(None) => break "end".to_owned(),
            Err(_) => break "nothing for 10 s".to_owned(),
        }
    };
    assert!(
        text.contains("event: shutdown"),
        "body ended with {ended}; text: {text:?}"
    );
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    assert!(
        data.join("ratatoskr.redb").exists(),
        "the store was created"
    );
    std::fs::remove_dir_all(&data).unwrap();
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    // A receiver that refuses everything, so deliveries fail and get logged.
    let rx = crate::support::receiver::Receiver::start().await;
    rx.script("/x", &[500; 16]);
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log",
            "debug",
        ])
        .args([
            "--store",
            "memory",
            "--allow-destination-nets",
            "127.0.0.1/32",
        ])
        .args(["--retry-backoff", "1ms", "--notice-interval", "0s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let addr = loop {
        let line = lines.next().expect("a log line").unwrap();
        log.push_str(&line);
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON logs");
        if v["message"] == "listening" {
            break v["listen"].as_str().unwrap().to_owned();
        }
    };
    let http = reqwest::Client::new();
    let body = serde_json::json!({
        "device": "mac:112233445566", "duration": 60,
        "destination": {"type": "http", "url": format!("{}?token=TOPSECRET-Q", rx.url("/x")),
                        "secret": "TOPSECRET-S", "headers": {"Authorization": "Bearer TOPSECRET-H"}}});
    let r = http
        .post(format!("http://{addr}/api/registrations"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for i in 0..3 {
        let r = http
            .post(format!("http://{addr}/api/events?device=mac:112233445566"))
            .json(&i)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    rx.wait_for("/x", 9, Duration::from_secs(10)).await;
    // A failed attempt is logged once the gateway has read the 500: read up to
    // that line before stopping it (a busy machine may take a moment).
    let (mut lines, mut log) = tokio::task::spawn_blocking(move || {
        for line in lines.by_ref() {
            let line = line.unwrap();
            log.push_str(&line);
            log.push('\n');
            if line.contains("\"retrying\"") {
                break;
            }
        }
        (lines, log)
    })
    .await
    .unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        for line in lines.by_ref() {
            text.push_str(&line.unwrap());
            text.push('\n');
        }
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        child.wait().unwrap();
        text + &out
    })
    .await
    .unwrap();
    log.push_str(&rest);
    assert!(
        log.contains("\"retrying\""),
        "the failures were logged: {log}"
    );
    assert!(
        !log.contains("TOPSECRET"),
        "a secret reached the logs:\n{log}"
    );
}

#[test]
fn healthcheck_exits_0_on_a_live_gateway_and_1_on_a_dead_port() {
    let dir = crate::support::process::temp_dir("healthcheck");
    let p = crate::support::process::Process::start(&dir, &[]);
    let port = p.addr.rsplit(':').next().unwrap().to_owned();
    let live = Command::new(BIN)
        .args(["healthcheck", "--listen", &format!("0.0.0.0:{port}")])
        .output()
        .unwrap();
    assert_eq!(live.status.code(), Some(0), "{live:?}");
    drop(p);
    let dead = Command::new(BIN)
        .args([
            "healthcheck",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(dead.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dead.stderr).contains("unhealthy"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn new_api_key_ends_quietly_when_its_reader_is_gone() {
    // `ratatoskr new-api-key x | head -0`: the pipe's read end is closed
    // before the command writes, so its first write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .args(["new-api-key", "plant-7"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "exit code on a closed stdout (101 is a panic): {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_stdout_that_closes_ends_the_sink_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    // Port 0: the sink says where it listens.
    let mut child = Command::new(BIN)
        .args(["sink", "--listen", "127.0.0.1:0"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .rsplit_once("listening on http://")
        .map(|(_, a)| a.to_owned())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    // One request: its line cannot be written, so the sink stops.
    let mut conn = std::net::TcpStream::connect(addr.as_str()).unwrap();
    use std::io::Write as _;
    conn.write_all(
        b"POST /hook HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
    )
    .unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut conn, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the sink kept running with nobody reading its output");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(!rest.contains("panicked"), "{rest}");
}
