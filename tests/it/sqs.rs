//! SQS forwarding against a real SQS-API server: moto's `moto_server`,
//! started on a free port (installed into .venv by `make test`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use base64::Engine as _;
use serde_json::json;

use crate::forward::register_ok;
use crate::support::client::Api;
use crate::support::util::Gateway;

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `MOTO_SERVER`, or the virtualenv's; none (the test skipped) when
/// neither is there.
fn moto_binary() -> Option<String> {
    std::env::var("MOTO_SERVER")
        .ok()
        .or_else(|| crate::support::skip::venv_tool("moto_server"))
}

/// Starts moto on a port it picks itself (`-p 0`): the port is read from
/// the line werkzeug writes once it listens, so no other process can take
/// it in between. moto's log is drained until it exits.
async fn start_moto() -> Option<Moto> {
    let binary = moto_binary()?;
    let mut child = Command::new(&binary)
        .args(["-H", "127.0.0.1", "-p", "0"])
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start moto_server");
    let stderr = child.stderr.take().expect("moto's stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("Running on http://127.0.0.1:").nth(1) {
                let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let (Some(tx), Ok(port)) = (tx.take(), port.parse::<u16>()) {
                    let _ = tx.send(port);
                }
            }
        }
    });
    let mut moto = Moto {
        child,
        endpoint: String::new(),
    };
    let port = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("moto_server said no port within 30 s");
    moto.endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{}/moto-api/", moto.endpoint))
        .await
        .is_err()
    {
        assert!(
            moto.child.try_wait().unwrap().is_none(),
            "moto_server exited"
        );
        assert!(Instant::now() < deadline, "moto_server did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(moto)
}

async fn client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

async fn receive_all(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    n: usize,
) -> Vec<aws_sdk_sqs::types::Message> {
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while all.len() < n && Instant::now() < deadline {
        let out = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive_message");
        all.extend(out.messages.unwrap_or_default());
    }
    all
}

fn attr(m: &aws_sdk_sqs::types::Message, name: &str) -> String {
    m.message_attributes()
        .and_then(|a| a.get(name))
        .and_then(|v| v.string_value())
        .unwrap_or_else(|| panic!("no attribute {name} on {m:?}"))
        .to_owned()
}

#[tokio::test]
async fn events_reach_an_sqs_queue_in_batches_with_attributes() {
    let Some(moto) = start_moto().await else {
        return;
    };
    let sqs = client(&moto.endpoint).await;
    let queue = sqs
        .create_queue()
        .queue_name("ratatoskr-events")
        .send()
        .await
        .expect("create_queue")
        .queue_url
        .expect("queue url");
    let gw = Gateway::start().await;
    let created = register_ok(
        &gw,
        &json!({"device": "mac:112233445566", "duration": "5m",
                "destination": {"type": "sqs", "queue_url": queue, "region": "us-east-1",
                                "endpoint_url": moto.endpoint,
                                "access_key_id": "testing", "secret_access_key": "testing"}}),
    )
    .await;
    assert_eq!(created["destination"]["type"], "sqs");
    let mut ids = Vec::new();
    for i in 0..15 {
        let r = gw
            .post(
                "/api/events?device=mac:112233445566&type=reading",
                "application/json",
                json!({"n": i}).to_string(),
            )
            .await;
        assert_eq!(r.status, 202);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let got = receive_all(&sqs, &queue, 15).await;
    assert_eq!(got.len(), 15);
    let mut seen: Vec<(String, i64)> = got
        .iter()
        .map(|m| {
            assert_eq!(attr(m, "device_id"), "mac:112233445566");
            assert_eq!(attr(m, "event_type"), "reading");
            let body: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
            (attr(m, "event_id"), body["n"].as_i64().unwrap())
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, i64)> = ids.into_iter().zip(0..).collect();
    assert_eq!(seen, expected);
    // A message can be in the queue before its SendMessageBatch answer is
    // back, so the counter may trail the receive by a moment.
    let url = format!("/api/registrations/{}", created["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = gw.get(&url).await;
        if stats.body["delivery"]["delivered"] == 15 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", stats.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn msgpack_bodies_are_base64_on_sqs() {
    let Some(moto) = start_moto().await else {
        return;
    };
    let sqs = client(&moto.endpoint).await;
    let queue = sqs
        .create_queue()
        .queue_name("wrp")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let gw = Gateway::start().await;
    register_ok(
        &gw,
        &json!({"device": "mac:112233445566", "duration": 60,
                "destination": {"type": "sqs", "queue_url": queue, "region": "us-east-1",
                                "endpoint_url": moto.endpoint, "content_type": "application/msgpack",
                                "access_key_id": "testing", "secret_access_key": "testing"}}),
    )
    .await;
    let wrp = gw.publish_vector("simple-event-online.msgpack").await;
    let got = receive_all(&sqs, &queue, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(attr(&got[0], "content-transfer-encoding"), "base64");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(got[0].body().unwrap())
        .unwrap();
    assert_eq!(bytes, wrp);
}

#[tokio::test]
async fn the_gateways_own_aws_identity_is_not_lent_by_default() {
    let body = json!({"device": "mac:112233445566", "duration": 60,
        "destination": {"type": "sqs", "queue_url": "http://127.0.0.1:9/1/q", "region": "us-east-1"}});
    let gw = Gateway::start().await;
    let r = crate::forward::register(&gw, &body).await;
    r.assert_problem(422);
    assert_eq!(
        r.body["errors"][0]["field"], "destination.access_key_id",
        "{}",
        r.text
    );
    let gw = Gateway::start_with(|c| c.sqs_default_credentials = true).await;
    assert_eq!(crate::forward::register(&gw, &body).await.status, 201);
}

/// Retries happen in one place: an SQS endpoint that times out gets
/// exactly `--delivery-retries` + 1 attempts per batch, not that number
/// squared (the SDK's own retries used to run inside the gateway's).
#[tokio::test]
async fn sqs_attempts_do_not_multiply() {
    let rx = crate::support::receiver::Receiver::start().await;
    rx.delay("/", Duration::from_secs(2));
    let gw = Gateway::start_with(|c| {
        c.delivery_retries = Some(2);
        c.delivery_timeout = Duration::from_millis(200);
        c.retry_backoff = Duration::from_millis(1);
    })
    .await;
    register_ok(
        &gw,
        &json!({"device": "mac:112233445566", "duration": 60,
                "destination": {"type": "sqs", "queue_url": format!("{}/123/q", rx.url("")),
                                "region": "us-east-1", "endpoint_url": rx.url(""),
                                "access_key_id": "k", "secret_access_key": "s"}}),
    )
    .await;
    let r = gw
        .post(
            "/api/events?device=mac:112233445566&type=t",
            "application/json",
            "1",
        )
        .await;
    assert_eq!(r.status, 202);
    rx.wait_for("/", 3, Duration::from_secs(10)).await;
    // Long enough for a fourth attempt, had there been one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.received("/").len(), 3, "1 attempt + 2 retries");
}
