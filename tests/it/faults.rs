//! Store faults on a real file system: a loop-mounted ext4 image, frozen
//! with `fsfreeze`. These need root and loop devices (as in CI); elsewhere
//! they say so and skip.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::process::{temp_dir, Process};
use crate::receiver::Receiver;

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
            eprintln!("skipped: cannot mount a loop file system here ({e}); CI runs this as root");
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
    let log = gw.log.lock().unwrap().join("\n");
    assert!(
        log.contains("refusing writes") && log.contains("ratatoskr.redb"),
        "{log}"
    );
}
