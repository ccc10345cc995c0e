//! Real Redis servers for the cluster tests, each started by the test on
//! ports or sockets of its own and stopped by its PID: one standalone
//! server ([`Redis`]), a Redis Cluster of several primaries with or
//! without replicas ([`RedisCluster`]), and a primary with a replica
//! watched by a Sentinel ([`SentinelSet`]).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::process::temp_dir;

/// A `redis-server` of the test's own, keeping nothing on disk, on a Unix
/// socket in a directory of its own: no TCP port to pick, so none found
/// free and raced for.
pub struct Redis {
    child: Child,
    socket: PathBuf,
}

impl Redis {
    /// Starts one, or `None` (with the reason) where redis-server is not
    /// installed; CI installs it, and there a missing one is a failure.
    pub fn start() -> Option<Self> {
        Self::start_at(temp_dir("redis").join("redis.sock"))
    }

    /// Starts one on `socket` (again, after [`Redis::stop`]).
    pub fn start_at(socket: PathBuf) -> Option<Self> {
        Self::start_with(socket, &["--port", "0"])
    }

    /// On `socket`, and on whatever else `listen` says (`--tls-port`).
    pub fn start_with(socket: PathBuf, listen: &[&str]) -> Option<Self> {
        Some(Self::try_start_with(socket, listen)?.unwrap_or_else(|why| panic!("{why}")))
    }

    /// Ready once it answers on the socket, which it opens after every
    /// other listener: a port it could not bind stops it instead (`Err`).
    pub fn try_start_with(socket: PathBuf, listen: &[&str]) -> Option<Result<Self, String>> {
        let spawned = Command::new("redis-server")
            .args(listen)
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700"])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // A replica's full sync writes an RDB file, whatever --save
            // says: in the socket's directory, named after the socket (servers
            // may share a directory).
            .arg("--dir")
            .arg(socket.parent().expect("the socket's directory"))
            .arg("--dbfilename")
            .arg(format!(
                "{}.rdb",
                socket
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("redis")
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                crate::support::skip::needs(
                    "redis-server",
                    false,
                    &format!("{e}; .ci/run installs it"),
                );
                return None;
            }
        };
        let started = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(Err(format!(
                    "redis-server stopped at start ({status}): {listen:?}"
                )));
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Ok(Self { child, socket }))
    }

    /// Runs one inline command (`XTRIM k MAXLEN 0`), returning the reply's
    /// first line.
    pub fn command(&self, line: &str) -> String {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut reply = String::new();
        std::io::BufReader::new(s).read_line(&mut reply).unwrap();
        reply
    }

    /// Runs one inline command, returning its whole reply as text (a bulk
    /// string's contents, or the first line of any other reply).
    pub fn query(&self, line: &str) -> String {
        query_socket(&self.socket, line)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// Freezes it (SIGSTOP to its PID): what is sent to it waits, unread,
    /// and runs when it is [`Redis::thaw`]ed.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    pub fn signal(&self, which: &str) {
        let done = Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(done.success(), "kill {which}");
    }

    /// Stops it (its PID, which this test started); where to start it again.
    pub fn stop(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.socket)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago, for the TLS listener alone (TLS
/// needs TCP, and redis-server cannot pick its own port): if another
/// process takes it first, redis-server stops at start and another port
/// is tried.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One inline command on the server at `socket`; its reply as text.
fn query_socket(socket: &Path, line: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    read_reply(&mut std::io::BufReader::new(s))
}

fn read_reply(r: &mut impl BufRead) -> String {
    let mut first = String::new();
    r.read_line(&mut first).unwrap();
    match first
        .strip_prefix('$')
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        Some(n) => {
            let mut body = vec![0; n + 2];
            r.read_exact(&mut body).unwrap();
            String::from_utf8_lossy(&body[..n]).into_owned()
        }
        None => first,
    }
}

/// One inline command to a TCP port on loopback; its reply as text, or
/// `None` if nothing answers there.
pub fn query_port(port: u16, line: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("{line}\r\n").as_bytes()).ok()?;
    Some(read_reply(&mut std::io::BufReader::new(s)))
}

/// A port for a server that needs TCP, with the port 10000 above it free
/// too (a cluster node's bus), at most 55000 so that one exists.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Starts a server on a TCP port of its own (and a socket, for the test's
/// commands) with `args`, trying other ports while the one picked is
/// taken first; `None` where redis-server is missing.
fn start_on_port(dir: &Path, args: impl Fn(u16) -> Vec<String>) -> Option<(Redis, u16)> {
    for _ in 0..10 {
        let port = free_cluster_port();
        let args = args(port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match Redis::try_start_with(dir.join(format!("{port}.sock")), &args)? {
            Ok(r) => return Some((r, port)),
            Err(_) => continue,
        }
    }
    panic!("redis-server got no port of its own in 10 tries");
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Redis Cluster on loopback: `masters` primaries (the slots split
/// evenly between them by `redis-cli --cluster create`), each with
/// `replicas` replicas, failing over within about a second of a primary's
/// death (`cluster-node-timeout 1000`).
pub struct RedisCluster {
    /// Every server, primaries first.
    pub nodes: Vec<Redis>,
    pub ports: Vec<u16>,
}

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> Option<Self> {
        if !crate::support::skip::redis_server() {
            return None;
        }
        let dir = temp_dir("redis-cluster");
        let (mut nodes, mut ports) = (Vec::new(), Vec::new());
        for _ in 0..masters * (1 + replicas) {
            let conf = dir.clone();
            let (node, port) = start_on_port(&dir, |port| {
                [
                    "--port",
                    &port.to_string(),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf
                        .join(format!("nodes-{port}.conf"))
                        .display()
                        .to_string(),
                    "--cluster-node-timeout",
                    "1000",
                ]
                .map(str::to_owned)
                .to_vec()
            })?;
            nodes.push(node);
            ports.push(port);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for p in &ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes, ports };
        wait_for(
            "every node says cluster_state:ok",
            Duration::from_secs(30),
            || {
                cluster
                    .nodes
                    .iter()
                    .all(|n| n.query("CLUSTER INFO").contains("cluster_state:ok"))
            },
        );
        if replicas > 0 {
            wait_for("every replica in sync", Duration::from_secs(30), || {
                cluster.nodes.iter().all(|n| {
                    let info = n.query("INFO replication");
                    info.contains("role:master")
                        && info.contains(&format!("connected_slaves:{replicas}"))
                        || info.contains("master_link_status:up")
                })
            });
        }
        Some(cluster)
    }

    /// Seed URLs for `--redis-url`: the first `n` servers, comma-separated.
    pub fn seeds(&self, n: usize) -> String {
        self.ports[..n.min(self.ports.len())]
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the primary that holds `key`'s slot now (the others
    /// answer MOVED).
    pub fn owner_of(&self, key: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| {
                n.query("INFO replication").contains("role:master")
            } && !n.query(&format!("EXISTS {key}")).starts_with("-"))
            .unwrap_or_else(|| panic!("no primary holds {key}"))
    }
}

impl RedisCluster {
    /// The index of a replica of the primary at index `primary`.
    pub fn replica_of(&self, primary: usize) -> usize {
        let wanted = format!("master_port:{}", self.ports[primary]);
        self.nodes
            .iter()
            .position(|n| n.query("INFO replication").contains(&wanted))
            .unwrap_or_else(|| panic!("the primary {primary} has no replica"))
    }
}

/// A primary, its replica, and one Sentinel watching them (quorum 1),
/// which fails over about a second after the primary stops answering.
pub struct SentinelSet {
    pub primary: Redis,
    pub replica: Redis,
    pub ports: (u16, u16),
    sentinel: Child,
    pub sentinel_port: u16,
}

/// The name the Sentinel knows the primary by.
pub const SENTINEL_MASTER: &str = "rtmaster";

impl SentinelSet {
    pub fn start() -> Option<Self> {
        if !crate::support::skip::redis_server() {
            return None;
        }
        let dir = temp_dir("redis-sentinel");
        let (primary, pp) = start_on_port(&dir, |p| vec!["--port".into(), p.to_string()])?;
        let (replica, rp) = start_on_port(&dir, |p| {
            vec![
                "--port".into(),
                p.to_string(),
                "--replicaof".into(),
                "127.0.0.1".into(),
                pp.to_string(),
            ]
        })?;
        wait_for("the replica in sync", Duration::from_secs(20), || {
            replica
                .query("INFO replication")
                .contains("master_link_status:up")
        });
        let mut tries = 0;
        let (sentinel, sentinel_port) = loop {
            tries += 1;
            assert!(
                tries <= 10,
                "the Sentinel got no port of its own in 10 tries"
            );
            let port = free_cluster_port();
            let conf = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {pp} 1\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 5000\n",
                    dir = dir.display()
                ),
            )
            .unwrap();
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel");
            let started = Instant::now();
            let up = loop {
                if query_port(port, "PING").is_some_and(|r| r.starts_with("+PONG")) {
                    break true;
                }
                if child.try_wait().unwrap().is_some()
                    || started.elapsed() > Duration::from_secs(10)
                {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if up {
                break (child, port);
            }
        };
        let set = Self {
            primary,
            replica,
            ports: (pp, rp),
            sentinel,
            sentinel_port,
        };
        // A failover needs the Sentinel to know the replica (from the
        // primary's INFO, within a few seconds).
        wait_for(
            "the Sentinel knows the replica",
            Duration::from_secs(30),
            || {
                query_port(
                    set.sentinel_port,
                    &format!("SENTINEL replicas {SENTINEL_MASTER}"),
                )
                .is_some_and(|r| !r.starts_with("*0"))
            },
        );
        Some(set)
    }

    /// The Sentinel's URL for `--redis-url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel_port)
    }

    /// The port of the server the Sentinel names as primary now.
    pub fn primary_port(&self) -> Option<u16> {
        // The reply is an array (host, port): read it element by element.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.sentinel_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(format!("SENTINEL get-master-addr-by-name {SENTINEL_MASTER}\r\n").as_bytes())
            .ok()?;
        let mut r = std::io::BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).ok()?; // *2
        let _host = read_reply(&mut r);
        read_reply(&mut r).trim().parse().ok()
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
    }
}
