//! A damaged or mistaken setup, as an operator's bad day would go: the
//! binary says what is wrong in one plain line on stderr (the path, what,
//! what to do) and exits non-zero, without a panic; the log goes to
//! stderr without colour when it is not a terminal.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::client::Api;
use crate::support::process::{temp_dir, Process, BIN};

/// Runs the binary to its exit (it must exit by itself, within 20 s).
pub(crate) fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the gateway did not exit with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Asserts a clean fatal error: non-zero, one line, no panic, no colour,
/// not "listening", and every `needle` in it.
pub(crate) fn assert_fatal(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    assert!(code.is_some_and(|c| c != 0 && c != 101), "{code:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains('\u{1b}'), "no ANSI colour: {err:?}");
    assert!(
        !err.contains("listening"),
        "it failed before binding: {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} in {err}");
    }
}

#[tokio::test]
async fn a_damaged_store_is_named_and_explained() {
    let dir = temp_dir("setup-store");
    // A real store with something in it.
    let out = {
        let p = Process::start(&dir, &[]);
        let def = serde_json::json!({"name": "t", "schema": {"type": "object"}});
        assert_eq!(p.post_json("/api/event-types", &def).await.status, 201);
        assert_eq!(p.stop().await, Some(0));
        std::fs::read(dir.join("ratatoskr.redb")).unwrap()
    };
    let file = dir.join("ratatoskr.redb");
    let path = file.to_string_lossy().into_owned();
    let data = dir.to_string_lossy().into_owned();
    for keep in [100, 4096, out.len() / 2] {
        std::fs::write(&file, &out[..keep]).unwrap();
        let r = run(&["--data-dir", &data], &[]);
        assert_fatal(&r, &[&path, "damaged", "restore it from a backup"]);
    }
    std::fs::write(&file, b"not a database, just some text that is long enough").unwrap();
    assert_fatal(&run(&["--data-dir", &data], &[]), &[&path, "damaged"]);
    std::fs::write(&file, b"").unwrap();
    assert_fatal(
        &run(&["--data-dir", &data], &[]),
        &[&path, "empty (0 bytes)", "gone"],
    );
    // --data-dir names a file.
    assert_fatal(
        &run(&["--data-dir", &path], &[]),
        &[&path, "is a file, not a directory"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unreachable_redis_is_named_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://user:TOPSECRET@127.0.0.1:{port}/");
    let r = run(&["--redis-url", &url], &[]);
    assert_fatal(&r, &[&format!("127.0.0.1:{port}"), "--redis-url"]);
    assert!(!String::from_utf8_lossy(&r.stderr).contains("TOPSECRET"));
}

#[test]
fn a_missing_redis_socket_is_named_and_another_scheme_is_refused() {
    let dir = temp_dir("no-redis");
    let socket = dir.join("redis.sock").display().to_string();
    let r = run(&["--redis-url", &format!("redis+unix://{socket}")], &[]);
    assert_fatal(&r, &[&socket, "--redis-url", "cannot reach Redis"]);
    let r = run(&["--redis-url", "http://127.0.0.1:6379/"], &[]);
    assert_eq!(r.status.code(), Some(2));
    assert_fatal(
        &r,
        &["--redis-url", "redis://", "rediss://", "redis+unix://"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_values_name_their_flag_or_variable() {
    let r = run(&["--heartbeat", "-5s"], &[]);
    assert_eq!(r.status.code(), Some(2));
    assert_fatal(&r, &["\"-5s\"", "--heartbeat", "negative", "15s"]);
    let r = run(&[], &[("RATATOSKR_MAX_BODY", "lots")]);
    assert_eq!(r.status.code(), Some(2));
    assert_fatal(
        &r,
        &["RATATOSKR_MAX_BODY", "--max-body", "\"lots\"", "KiB", "MB"],
    );
    let r = run(&[], &[("RATATOSKR_HEARTBEAT", "soon")]);
    assert_fatal(&r, &["RATATOSKR_HEARTBEAT", "\"soon\"", "500ms"]);
    let r = run(&["--max-body", "1TB"], &[]);
    assert_fatal(
        &r,
        &["--max-body", "\"1TB\"", "KiB, M, MB, MiB, G, GB or GiB"],
    );
}

#[test]
fn logs_go_to_stderr_without_colour_unless_a_terminal() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--store", "memory"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("ready") {
            break;
        }
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(log.contains("listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

#[tokio::test]
async fn the_first_heartbeat_comes_after_one_interval() {
    let dir = temp_dir("setup-heartbeat");
    let gw = Process::start(&dir, &["--store", "memory", "--heartbeat", "2s"]);
    let mut sub = gw.subscribe("/events").await;
    let opened = Instant::now();
    let mut beats = Vec::new();
    while beats.len() < 2 {
        match sub.next_item(Duration::from_secs(5)).await {
            Some(crate::support::util::SseItem::Comment(_)) => beats.push(opened.elapsed()),
            Some(_) => {}
            None => panic!("no heartbeat within 5 s; got {beats:?}"),
        }
    }
    let secs: Vec<f64> = beats.iter().map(Duration::as_secs_f64).collect();
    assert!((1.7..2.7).contains(&secs[0]), "first at {secs:?}");
    assert!((3.7..4.7).contains(&secs[1]), "second at {secs:?}");
    drop(gw);
    std::fs::remove_dir_all(&dir).unwrap();
}
