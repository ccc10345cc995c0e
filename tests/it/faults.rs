//! Store faults on a real file system: a loop-mounted ext4 image, frozen
//! with `fsfreeze`. These need root and loop devices (as in CI); elsewhere
//! they say so and skip.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::client::Api;
use crate::support::process::{temp_dir, Process};
use crate::support::receiver::Receiver;

/// An ext4 image mounted on a directory of its own; unmounted and removed
/// on drop.
struct LoopFs {
    dir: PathBuf,
    mount: PathBuf,
}

/// The file system frozen until this is dropped. Declare it after the
/// gateway process, so that it thaws first: a process blocked on a frozen
/// disk cannot be reaped.
struct Frozen(PathBuf);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = run("fsfreeze", &["-u", &self.0.to_string_lossy()]);
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl LoopFs {
    fn mount() -> Result<Self, String> {
        let dir = temp_dir("loopfs");
        let image = dir.join("fs.img");
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        let (img, mnt) = (image.to_string_lossy(), mount.to_string_lossy());
        run("truncate", &["-s", "64M", &img])?;
        run("mkfs.ext4", &["-q", "-F", &img])?;
        run("mount", &["-o", "loop", &img, &mnt])?;
        Ok(Self { dir, mount })
    }

    fn freeze(&self) -> Frozen {
        run("fsfreeze", &["-f", &self.mount.to_string_lossy()]).unwrap();
        Frozen(self.mount.clone())
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = run("umount", &[&self.mount.to_string_lossy()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_frozen_disk_stalls_only_the_write_that_waits_for_it() {
    let fs = match LoopFs::mount() {
        Ok(fs) => fs,
        Err(e) => {
            crate::support::skip::skip(&format!(
                "cannot mount a loop file system here ({e}); CI runs this as root"
            ));
            return;
        }
    };
    let rx = Receiver::start().await;
    let gw = Process::start(&fs.mount.join("data"), &[]);
    let mut sub = gw.subscribe("/events?device=mac:112233445566").await;
    let frozen = fs.freeze();
    // A write that must wait for the disk.
    let registration = {
        let (http, url) = (gw.http.clone(), gw.url("/api/registrations"));
        let body = json!({"device": "mac:112233445566", "duration": 60,
                          "destination": {"type": "http", "url": rx.url("/r")}});
        tokio::spawn(async move { http.post(url).json(&body).send().await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!registration.is_finished(), "the write waits for the disk");
    // Meanwhile (and past the sweeper's next tick) everything else answers.
    for _ in 0..3 {
        let started = Instant::now();
        let health = tokio::time::timeout(Duration::from_secs(1), gw.get("/health")).await;
        assert!(health.is_ok_and(|r| r.status == 200), "/health answered");
        let posted = tokio::time::timeout(
            Duration::from_secs(1),
            gw.post_json(
                "/api/events?device=mac:112233445566&type=t",
                &json!({"n": 1}),
            ),
        )
        .await
        .expect("ingest answered within 1 s");
        assert_eq!(posted.status, 202);
        let event = sub.next_event(Duration::from_secs(1)).await;
        assert!(event.is_some(), "live delivery within 1 s");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    drop(frozen);
    let done = tokio::time::timeout(Duration::from_secs(10), registration)
        .await
        .expect("the write finishes once the disk thaws")
        .unwrap()
        .unwrap();
    assert_eq!(done.status(), 201);
    assert_eq!(gw.stop().await, Some(0));
}

#[tokio::test]
async fn a_deleted_data_dir_refuses_writes_instead_of_losing_them() {
    let dir = temp_dir("deleted-store");
    let gw = Process::start(&dir, &[]);
    let body = json!({"device": "mac:112233445566", "duration": 60,
                      "destination": {"type": "http", "url": "http://127.0.0.1:9/x"}});
    assert_eq!(gw.post_json("/api/registrations", &body).await.status, 201);
    assert_eq!(gw.get("/ready").await.status, 200);
    std::fs::remove_dir_all(&dir).unwrap();
    let r = gw.post_json("/api/registrations", &body).await;
    r.assert_problem(503);
    let r = gw
        .post_json("/api/event-types", &json!({"name": "t"}))
        .await;
    r.assert_problem(503);
    let ready = gw.get("/ready").await;
    ready.assert_problem(503);
    assert!(ready.text.contains("deleted or replaced"), "{}", ready.text);
    // Events, which keep nothing on disk, still flow.
    let r = gw.post_json("/api/events", &json!(1)).await;
    assert_eq!(r.status, 202);
    let log = gw.wait_log(&["refusing writes", "ratatoskr.redb"]).await;
    assert!(
        log.contains("refusing writes") && log.contains("ratatoskr.redb"),
        "{log}"
    );
}

/// Fills the file system with one file, in 1 MiB writes, until it is full.
fn fill(path: &std::path::Path) -> std::fs::File {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..128 {
        if f.write_all(&chunk).and_then(|()| f.sync_all()).is_err() {
            break;
        }
    }
    // Fill what is left, byte-sized pieces at the end.
    for size in [65_536, 4096, 512, 1] {
        while f
            .write_all(&chunk[..size])
            .and_then(|()| f.sync_all())
            .is_ok()
        {}
    }
    f
}

#[tokio::test]
async fn a_full_disk_refuses_writes_with_retry_after_and_recovers_without_a_restart() {
    let fs = match LoopFs::mount() {
        Ok(fs) => fs,
        Err(e) => {
            crate::support::skip::skip(&format!(
                "cannot mount a loop file system here ({e}); CI runs this as root"
            ));
            return;
        }
    };
    let data = fs.mount.join("data");
    let gw = Process::start(&data, &[]);
    let metadata: serde_json::Map<String, serde_json::Value> = (0..32)
        .map(|i| (format!("k{i}"), json!("x".repeat(1000))))
        .collect();
    let body = |n: usize| {
        json!({"device": format!("mac:1122334455{:02x}", n % 256), "duration": 600,
               "metadata": metadata,
               "destination": {"type": "http", "url": format!("http://127.0.0.1:9/{n}")}})
    };
    let mut accepted = 0;
    assert_eq!(
        gw.post_json("/api/registrations", &body(0)).await.status,
        201
    );
    accepted += 1;
    let filler = fill(&fs.mount.join("filler"));
    // Writes until one hits the full disk (redb may first use free pages).
    let mut refused = None;
    for n in 1..200 {
        let r = gw.post_json("/api/registrations", &body(n)).await;
        match r.status {
            201 => accepted += 1,
            _ => {
                refused = Some(r);
                break;
            }
        }
    }
    let refused = refused.expect("a write fails on a full disk");
    refused.assert_problem(503);
    assert!(
        refused.headers.get("retry-after").is_some(),
        "{:?}",
        refused.headers
    );
    // Every later write is refused the same way, and /ready says so.
    let again = gw.post_json("/api/registrations", &body(500)).await;
    again.assert_problem(503);
    assert!(again.headers.get("retry-after").is_some());
    let ready = gw.get("/ready").await;
    ready.assert_problem(503);
    assert!(ready.text.contains("cannot be written"), "{}", ready.text);
    // Events keep nothing on disk: they still flow.
    assert_eq!(gw.post_json("/api/events", &json!(1)).await.status, 202);
    // Space comes back: within seconds, with no restart, writes work again.
    drop(filler);
    std::fs::remove_file(fs.mount.join("filler")).unwrap();
    let started = Instant::now();
    let mut recovered = false;
    while started.elapsed() < Duration::from_secs(15) {
        if gw.get("/ready").await.status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "/ready turned 200 again on its own");
    let r = gw.post_json("/api/registrations", &body(600)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    accepted += 1;
    assert_eq!(gw.stop().await, Some(0));
    // Nothing answered 201 was lost.
    let gw = Process::start(&data, &[]);
    let list = gw.get("/api/registrations?limit=1000").await;
    assert_eq!(
        list.body["items"].as_array().map(Vec::len),
        Some(accepted),
        "{}",
        list.text
    );
    assert_eq!(gw.stop().await, Some(0));
}
