//! The shipped binary as a child process: start it on a data dir, find its
//! address in its JSON log, talk to it over a real socket, stop it by PID.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ratatoskr");

/// A running gateway process.
pub struct Process {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// Every line it wrote to stdout or stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
    pub http: reqwest::Client,
}

impl crate::support::client::Api for Process {
    fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// A fresh, empty directory under the system's temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ratatoskr-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Process {
    /// Starts the binary on `data_dir` (redb store) with `args`, and waits
    /// until it logs that it listens.
    pub fn start(data_dir: &Path, args: &[&str]) -> Self {
        Self::start_under(&[], data_dir, args)
    }

    /// As [`Process::start`], run through `wrapper` (e.g. `prlimit …`).
    pub fn start_under(wrapper: &[&str], data_dir: &Path, args: &[&str]) -> Self {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--allow-destination-nets", "127.0.0.1/32"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err) as Box<dyn std::io::Read + Send>,
        ] {
            let (log, tx) = (log.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let listen = serde_json::from_str::<Value>(&line)
                        .ok()
                        .filter(|v| v["message"] == "listening")
                        .and_then(|v| v["listen"].as_str().map(str::to_owned));
                    if let Some(addr) = listen {
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the gateway never listened; its log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        // Listening comes first; wait until start-up is over too.
        let started = std::time::Instant::now();
        while !log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("\"message\":\"ready\""))
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the gateway never got ready"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Self {
            child,
            addr,
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most 5 s) until a line of its log contains every needle;
    /// the log is read from its pipes by another thread, a little later
    /// than it is written. Returns the whole log.
    pub async fn wait_log(&self, needles: &[&str]) -> String {
        let started = std::time::Instant::now();
        loop {
            let log = self.log.lock().unwrap().join("\n");
            let found = log.lines().any(|l| needles.iter().all(|n| l.contains(n)));
            if found || started.elapsed() > Duration::from_secs(5) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it (SIGKILL, by its PID) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and waits for the exit code.
    pub async fn stop(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut child = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        let code = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap()
            .code();
        code
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
