//! webhook-sink: many webhook receivers for `make bench`.
//!
//! Listens on `--ports` consecutive ports of 127.0.0.1 (one per webhook
//! destination), answers every POST with 204 over keep-alive, and reads the
//! publish timestamp `"ts":<ns>` from each JSON body for delivery latency.
//! Stops once `--expect` deliveries arrived, or nothing arrived for
//! `--idle-timeout` seconds after the first one, or at `--max-time`; then
//! prints one JSON line.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(name = "webhook-sink", about = "Webhook receivers for make bench")]
struct Args {
    /// First port.
    #[arg(long, default_value_t = 19000)]
    base_port: u16,
    /// Ports (destinations).
    #[arg(long, default_value_t = 100)]
    ports: u16,
    /// Deliveries after which to stop (0: only the timeouts stop it).
    #[arg(long, default_value_t = 0)]
    expect: u64,
    /// Seconds without a delivery (after the first) before stopping.
    #[arg(long, default_value_t = 3.0)]
    idle_timeout: f64,
    /// Hard limit for the run, in seconds.
    #[arg(long, default_value_t = 120.0)]
    max_time: f64,
    /// Label copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

struct Tally {
    count: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    latency: Histogram<u64>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn ts_of(body: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(body, b"\"ts\":")? + 5;
    let digits: Vec<u8> = body[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

async fn serve(mut s: TcpStream, tally: Rc<RefCell<Tally>>) {
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 16384];
    loop {
        // One request: head, then Content-Length bytes of body.
        let head_end = loop {
            if let Some(p) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        {
            let mut t = tally.borrow_mut();
            let now = Instant::now();
            t.count += 1;
            t.first.get_or_insert(now);
            t.last = Some(now);
            if let Some(ts) = ts_of(&buf[head_end..head_end + len]) {
                let _ = t.latency.record(now_ns().saturating_sub(ts) / 1000);
            }
        }
        buf.drain(..head_end + len);
        if s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

fn main() {
    let args = Args::parse();
    raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let tally = Rc::new(RefCell::new(Tally {
            count: 0,
            first: None,
            last: None,
            latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram"),
        }));
        for p in 0..args.ports {
            let port = args.base_port + p;
            let listener = TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
            let tally = tally.clone();
            tokio::task::spawn_local(async move {
                while let Ok((s, _)) = listener.accept().await {
                    let _ = s.set_nodelay(true);
                    tokio::task::spawn_local(serve(s, tally.clone()));
                }
            });
        }
        eprintln!("webhook-sink: {} ports from {}", args.ports, args.base_port);
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let t = tally.borrow();
            let idle = t
                .last
                .is_some_and(|l| l.elapsed().as_secs_f64() > args.idle_timeout);
            if (args.expect > 0 && t.count >= args.expect)
                || idle
                || started.elapsed().as_secs_f64() > args.max_time
            {
                break;
            }
        }
        let t = tally.borrow();
        let span = match (t.first, t.last) {
            (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let ms = |q: f64| t.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{}",
            serde_json::json!({
                "label": args.label,
                "webhook_deliveries": t.count,
                "webhook_per_s": if span > 0.0 { t.count as f64 / span } else { 0.0 },
                "webhook_latency_ms_p50": ms(0.5),
                "webhook_latency_ms_p99": ms(0.99),
            })
        );
    });
}

/// Lifts the soft descriptor limit to the hard one (one socket per client).
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}
