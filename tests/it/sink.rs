//! `ratatoskr sink`, the receiver the forwarding example (docs/forwarding.md) uses:
//! a registration forwards to it, and it prints the event with both
//! signatures verified.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::client::Api;
use crate::support::process::BIN;
use crate::support::util::Gateway;

#[tokio::test]
async fn the_sink_prints_forwarded_events_with_their_signatures_checked() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut sink = Command::new(BIN)
        .args(["sink", "--listen", "127.0.0.1:0", "--secret", secret])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(sink.stderr.take().unwrap()).lines();
    let first = err.next().unwrap().unwrap();
    let url = first.rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");
    let (tx, rx) = std::sync::mpsc::channel();
    let out = sink.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let _ = tx.send(line.unwrap());
        }
    });

    let gw = Gateway::start().await;
    let r = gw
        .post(
            "/api/registrations",
            "application/json",
            json!({"device": "mac:112233445566", "duration": "5m",
                   "destination": {"type": "http", "url": format!("{url}/events"), "secret": secret}})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = gw
        .post(
            "/api/events?device=mac:112233445566&type=online",
            "application/json",
            r#"{"battery": 17}"#,
        )
        .await;
    assert_eq!(r.status, 202);
    let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the sink printed nothing");
    let got: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(got["path"], "/events");
    assert_eq!(got["device"], "mac:112233445566");
    assert_eq!(got["event_type"], "online");
    assert_eq!(got["event_id"], r.body["id"]);
    assert_eq!(got["body"], r#"{"battery":17}"#);
    assert_eq!(
        got["signature_ok"],
        json!({"x_webpa": true, "standard_webhooks": true})
    );
    let _ = sink.kill();
    let _ = sink.wait();
}
