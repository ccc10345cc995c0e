//! ratatoskr-bench: load generator for SSE broadcast gateways.
//!
//! Opens N raw-socket SSE subscribers (subscriber i on device `i % devices`),
//! then publishes M JSON events `{"seq":S,"ts":T,"pad":"..."}` over one
//! keep-alive connection (event S goes to device `S % devices` when the
//! publish URL has `{d}`). Reports deliveries/s, publish-to-receive latency,
//! missing / duplicated / out-of-order events per subscriber, the server's
//! idle RSS per connection and its CPU time per published event, as one
//! JSON line on stdout (a summary goes to stderr).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Clone)]
#[command(
    name = "ratatoskr-bench",
    about = "Load generator for SSE broadcast gateways"
)]
struct Args {
    /// Subscriber URL (http only); `{i}` becomes the subscriber's device
    /// index. Repeat it to spread subscribers over several nodes (round
    /// robin).
    #[arg(long, default_value = "http://127.0.0.1:8080/events")]
    sub_url: Vec<String>,
    /// Publish URL; `{d}` becomes `seq % devices` (device-targeted events).
    /// Repeat it to post to several nodes in turn (one keep-alive
    /// connection each; each event is answered before the next is sent, so
    /// the posting order is the events' order).
    #[arg(long, default_value = "http://127.0.0.1:8080/api/events")]
    pub_url: Vec<String>,
    /// Subscribers.
    #[arg(short = 'n', long, default_value_t = 1000)]
    subscribers: usize,
    /// Distinct devices.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Events to publish (0: connect, measure idle memory, leave).
    #[arg(short = 'm', long, default_value_t = 1000)]
    events: u64,
    /// Publish rate in events/s (0: as fast as the server accepts).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 200)]
    body_size: usize,
    /// Server PID, for RSS and CPU figures.
    #[arg(long)]
    pid: Option<u32>,
    /// Seconds to wait after the last delivery progress before stopping.
    #[arg(long, default_value_t = 3.0)]
    idle_timeout: f64,
    /// Hard limit for the whole run, in seconds.
    #[arg(long, default_value_t = 120.0)]
    max_time: f64,
    /// Label copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

impl Args {
    /// Whether events go to one device each and subscribers take one each.
    fn device_targeted(&self) -> bool {
        self.pub_url.iter().all(|u| u.contains("{d}"))
            && self.sub_url.iter().all(|u| u.contains("{i}"))
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn host_and_path(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    match rest.find('/') {
        Some(p) => (rest[..p].to_owned(), rest[p..].to_owned()),
        None => (rest.to_owned(), "/".to_owned()),
    }
}

fn proc_field(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn proc_cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Per-run counters shared with the subscriber tasks.
#[derive(Default)]
struct Totals {
    connected: AtomicU64,
    failed: AtomicU64,
    delivered: AtomicU64,
}

/// What one subscriber saw.
struct Seen {
    bits: Vec<u64>,
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
    last: Option<u64>,
}

struct Stats {
    latency: Histogram<u64>,
    first_ns: u64,
    last_ns: u64,
    duplicates: u64,
    out_of_order: u64,
    missing: u64,
    subscribers_missing: u64,
}

/// Finds `key` then the digits after it.
fn number_after(hay: &[u8], key: &[u8]) -> Option<(u64, usize)> {
    let at = memchr::memmem::find(hay, key)? + key.len();
    let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let n = std::str::from_utf8(&hay[at..at + digits])
        .ok()?
        .parse()
        .ok()?;
    Some((n, at + digits))
}

/// A minimal HTTP/1.1 chunked-encoding decoder (for servers that use it).
#[derive(Default)]
struct Dechunk {
    remaining: usize,
    header: Vec<u8>,
    skip_crlf: usize,
}

impl Dechunk {
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.skip_crlf > 0 {
                let n = self.skip_crlf.min(input.len());
                self.skip_crlf -= n;
                input = &input[n..];
            } else if self.remaining > 0 {
                let n = self.remaining.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.remaining -= n;
                input = &input[n..];
                if self.remaining == 0 {
                    self.skip_crlf = 2;
                }
            } else {
                let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                    self.header.extend_from_slice(input);
                    return;
                };
                self.header.extend_from_slice(&input[..nl]);
                input = &input[nl + 1..];
                let text = String::from_utf8_lossy(&self.header);
                self.remaining =
                    usize::from_str_radix(text.trim().split(';').next().unwrap_or("0"), 16)
                        .unwrap_or(0);
                self.header.clear();
            }
        }
    }
}

async fn subscriber(
    index: usize,
    args: Rc<Args>,
    totals: Arc<Totals>,
    stats: Rc<RefCell<Stats>>,
    stop: Rc<tokio::sync::Notify>,
) {
    let device = index % args.devices.max(1);
    let url = &args.sub_url[index % args.sub_url.len()];
    let (host, path) = host_and_path(&url.replace("{i}", &device.to_string()));
    let Ok(mut s) = TcpStream::connect(&host).await else {
        totals.failed.fetch_add(1, Relaxed);
        return;
    };
    let _ = s.set_nodelay(true);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        totals.failed.fetch_add(1, Relaxed);
        return;
    }
    let expected: Vec<u64> = (0..args.events)
        .filter(|s| {
            args.devices <= 1 || !args.device_targeted() || (*s as usize) % args.devices == device
        })
        .collect();
    let mut seen = Seen {
        bits: vec![0; (args.events as usize).div_ceil(64).max(1)],
        distinct: 0,
        duplicates: 0,
        out_of_order: 0,
        last: None,
    };
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut body = Vec::new();
    let mut chunked: Option<Dechunk> = None;
    let mut in_body = false;
    loop {
        let n = tokio::select! {
            r = s.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
            () = stop.notified() => break,
        };
        if !in_body {
            pending.extend_from_slice(&buf[..n]);
            let Some(end) = memchr::memmem::find(&pending, b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") && !head.starts_with("http/1.0 200") {
                totals.failed.fetch_add(1, Relaxed);
                return;
            }
            totals.connected.fetch_add(1, Relaxed);
            if head.contains("transfer-encoding: chunked") {
                chunked = Some(Dechunk::default());
            }
            in_body = true;
            let rest = pending.split_off(end + 4);
            pending.clear();
            feed(&rest, &mut chunked, &mut body);
        } else {
            feed(&buf[..n], &mut chunked, &mut body);
        }
        // Handle complete lines only; keep a partial line for the next read.
        let Some(cut) = body.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let now = now_ns();
        let mut st = stats.borrow_mut();
        let mut pos = 0;
        while let Some((seq, after)) = number_after(&body[pos..cut], b"\"seq\":") {
            let abs = pos + after;
            let ts = number_after(&body[abs..cut], b"\"ts\":").map(|(t, _)| t);
            pos = abs;
            if seq >= args.events {
                continue;
            }
            let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
            if seen.bits[w] & bit != 0 {
                seen.duplicates += 1;
                continue;
            }
            seen.bits[w] |= bit;
            seen.distinct += 1;
            if seen.last.is_some_and(|l| seq < l) {
                seen.out_of_order += 1;
            }
            seen.last = Some(seq);
            totals.delivered.fetch_add(1, Relaxed);
            if let Some(ts) = ts {
                st.latency
                    .saturating_record(now.saturating_sub(ts).max(1) / 1000);
            }
            if st.first_ns == 0 {
                st.first_ns = now;
            }
            st.last_ns = now;
        }
        drop(st);
        body.drain(..=cut);
    }
    let missing = expected
        .iter()
        .filter(|s| seen.bits[(**s / 64) as usize] & (1 << (**s % 64)) == 0)
        .count() as u64;
    let mut st = stats.borrow_mut();
    st.duplicates += seen.duplicates;
    st.out_of_order += seen.out_of_order;
    st.missing += missing;
    st.subscribers_missing += u64::from(missing > 0);
}

fn feed(raw: &[u8], chunked: &mut Option<Dechunk>, body: &mut Vec<u8>) {
    match chunked {
        Some(d) => d.feed(raw, body),
        None => body.extend_from_slice(raw),
    }
}

/// Publishes every event over one keep-alive connection; returns (ok, errors, seconds).
fn publish(args: &Args) -> (u64, u64, f64) {
    let mut nodes = Vec::new();
    for url in &args.pub_url {
        let (host, path) = host_and_path(url);
        let Ok(s) = std::net::TcpStream::connect(&host) else {
            return (0, args.events, 0.0);
        };
        let _ = s.set_nodelay(true);
        nodes.push((s, host, path));
    }
    let pad = "x".repeat(args.body_size.saturating_sub(60));
    let started = Instant::now();
    let (mut ok, mut errors) = (0, 0);
    let mut resp = vec![0u8; 4096];
    for seq in 0..args.events {
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(seq as f64 / args.rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let n = nodes.len();
        let (s, host, path) = &mut nodes[seq as usize % n];
        let target = path.replace("{d}", &(seq % args.devices.max(1) as u64).to_string());
        let body = format!("{{\"seq\":{seq},\"ts\":{},\"pad\":\"{pad}\"}}", now_ns());
        let req = format!("POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        use std::io::{Read, Write};
        if s.write_all(req.as_bytes()).is_err() {
            errors += args.events - seq;
            break;
        }
        // Read one response: head, then Content-Length bytes.
        let mut got = Vec::new();
        let complete = loop {
            let Ok(n) = s.read(&mut resp) else {
                break false;
            };
            if n == 0 {
                break false;
            }
            got.extend_from_slice(&resp[..n]);
            if let Some(end) = memchr::memmem::find(&got, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    if head.starts_with("http/1.1 2") {
                        ok += 1;
                    } else {
                        errors += 1;
                    }
                    break true;
                }
            }
        };
        if !complete {
            errors += args.events - seq;
            break;
        }
    }
    (ok, errors, started.elapsed().as_secs_f64())
}

fn main() {
    let args = Args::parse();
    raise_nofile();
    let totals = Arc::new(Totals::default());
    let rss_before = args.pid.and_then(|p| proc_field(p, "VmRSS:"));
    let deadline = Instant::now() + Duration::from_secs_f64(args.max_time);

    let (result_tx, result_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sub_args = args.clone();
    let sub_totals = totals.clone();
    let subscribers = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let args = Rc::new(sub_args);
            let stats = Rc::new(RefCell::new(Stats {
                latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram"),
                first_ns: 0,
                last_ns: 0,
                duplicates: 0,
                out_of_order: 0,
                missing: 0,
                subscribers_missing: 0,
            }));
            let stop = Rc::new(tokio::sync::Notify::new());
            let mut tasks = Vec::new();
            for i in 0..args.subscribers {
                tasks.push(tokio::task::spawn_local(subscriber(
                    i,
                    args.clone(),
                    sub_totals.clone(),
                    stats.clone(),
                    stop.clone(),
                )));
                if i % 200 == 199 {
                    tokio::task::yield_now().await;
                }
            }
            let _ = stop_rx.await;
            stop.notify_waiters();
            for t in tasks {
                let _ = t.await;
            }
            let _ = result_tx.send(Rc::try_unwrap(stats).ok().map(RefCell::into_inner));
        });
    });

    while totals.connected.load(Relaxed) + totals.failed.load(Relaxed) < args.subscribers as u64
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    let connected = totals.connected.load(Relaxed);
    let rss_idle = args.pid.and_then(|p| proc_field(p, "VmRSS:"));
    let idle_per_conn = match (rss_before, rss_idle) {
        (Some(b), Some(a)) if connected > 0 => {
            Some((a as f64 - b as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };

    let cpu_before = args.pid.and_then(proc_cpu_s);
    let (posted, post_errors, publish_s) = if args.events > 0 {
        publish(&args)
    } else {
        (0, 0, 0.0)
    };
    // Subscribers without a device in their URL take every event.
    let expected: u64 = if args.devices > 1 && args.device_targeted() {
        (0..args.subscribers)
            .map(|i| {
                (0..args.events)
                    .filter(|s| (*s as usize) % args.devices == i % args.devices)
                    .count() as u64
            })
            .sum()
    } else {
        connected * args.events
    };
    let mut progress = (totals.delivered.load(Relaxed), Instant::now());
    while args.events > 0 && totals.delivered.load(Relaxed) < expected && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
        let d = totals.delivered.load(Relaxed);
        if d != progress.0 {
            progress = (d, Instant::now());
        } else if progress.1.elapsed() > Duration::from_secs_f64(args.idle_timeout) {
            break;
        }
    }
    let cpu_after = args.pid.and_then(proc_cpu_s);
    let _ = stop_tx.send(());
    let stats = result_rx.recv().ok().flatten();
    let _ = subscribers.join();
    let Some(stats) = stats else {
        eprintln!("subscriber thread failed");
        std::process::exit(1);
    };
    let delivered = totals.delivered.load(Relaxed);
    let window = (stats.last_ns.saturating_sub(stats.first_ns)) as f64 / 1e9;
    let q = |p: f64| stats.latency.value_at_quantile(p) as f64 / 1000.0;
    let server_cpu = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
    let summary = serde_json::json!({
        "label": args.label,
        "subscribers": args.subscribers,
        "connected": connected,
        "devices": args.devices,
        "events": args.events,
        "posted": posted,
        "post_errors": post_errors,
        "publish_per_s": if publish_s > 0.0 { posted as f64 / publish_s } else { 0.0 },
        "expected_deliveries": expected,
        "deliveries": delivered,
        "deliveries_per_s": if window > 0.0 { delivered as f64 / window } else { 0.0 },
        "latency_ms_p50": q(0.5),
        "latency_ms_p99": q(0.99),
        "latency_ms_max": stats.latency.max() as f64 / 1000.0,
        "missing": stats.missing,
        "subscribers_missing": stats.subscribers_missing,
        "duplicates": stats.duplicates,
        "out_of_order": stats.out_of_order,
        "idle_bytes_per_connection": idle_per_conn,
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_event": server_cpu.filter(|_| posted > 0).map(|c| c * 1e6 / posted as f64),
    });
    eprintln!(
        "{}: {connected}/{} connected; {delivered}/{expected} delivered, {:.0}/s; latency p50 {:.1} ms p99 {:.1} ms; missing {} dup {} ooo {}; idle {:.0} B/conn",
        args.label,
        args.subscribers,
        summary["deliveries_per_s"].as_f64().unwrap_or(0.0),
        q(0.5),
        q(0.99),
        stats.missing,
        stats.duplicates,
        stats.out_of_order,
        idle_per_conn.unwrap_or(f64::NAN)
    );
    println!("{summary}");
}

/// Lifts the soft descriptor limit to the hard one (one socket per client).
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}
