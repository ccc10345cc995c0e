//! What forwarding shows and holds outside a tenant's own registrations:
//! the destination labels in `/metrics` (never a capability URL's path or
//! query) and the size of a scrape.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::forward::register_ok;
use crate::receiver::Receiver;
use crate::util::{series_value, Gateway};

const DEVICE: &str = "mac:112233445566";
const WAIT: Duration = Duration::from_secs(20);

async fn publish(gw: &Gateway) {
    let r = gw
        .post(
            &format!("/api/events?device={DEVICE}&type=status"),
            "application/json",
            r#"{"n":1}"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
}

async fn register_url(gw: &Gateway, url: &str) {
    register_ok(
        gw,
        &json!({"device": DEVICE, "duration": "10m",
                "destination": {"type": "http", "url": url}}),
    )
    .await;
}

/// The `destination` label values in a scrape.
fn destination_labels(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("ratatoskr_destination_delivered_total{"))
        .filter_map(|l| l.split("destination=\"").nth(1)?.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// Scrapes `/metrics` until `done` holds for the text (at most [`WAIT`]).
async fn scrape_until(gw: &Gateway, what: &str, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let text = gw.get("/metrics").await.text;
        if done(&text) {
            return text;
        }
        assert!(
            started.elapsed() < WAIT,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_label_a_destination_by_host_port_and_an_8_hex_digest_never_its_path_or_query() {
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    // A capability URL: its secret is in the path and the query.
    let hook = "/services/T0SECRETPATH/B0/XSECRET";
    register_url(&gw, &rx.url(&format!("{hook}?token=SECRETQUERY"))).await;
    register_url(&gw, &rx.url("/other")).await;
    publish(&gw).await;
    rx.wait_for(hook, 1, WAIT).await;

    let prefix = format!("http:http://127.0.0.1:{}/#", rx.addr.port());
    let text = scrape_until(&gw, "both deliveries counted", |text| {
        let labels = destination_labels(text);
        labels.len() == 2
            && labels.iter().all(|l| {
                series_value(
                    text,
                    &format!("ratatoskr_destination_delivered_total{{destination=\"{l}\"}}"),
                ) == Some(1.0)
            })
    })
    .await;
    assert!(
        !text.contains("SECRET"),
        "a destination's path or query is in /metrics:\n{text}"
    );
    assert!(
        !text.contains("/other"),
        "a destination's path is in /metrics:\n{text}"
    );
    for label in destination_labels(&text) {
        let digest = label
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{label} is not {prefix}<digest>"));
        assert!(
            digest.len() == 8 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{label}: the rest of the URL is an 8 hex digit digest"
        );
    }
}

/// What `/metrics` costs no longer grows with the destinations' URLs: 100
/// labelled destinations with 1,900-byte paths (URLs under 2 KiB, which
/// every bound on URLs admits) make a scrape under 512 KiB; their full
/// paths made it over 5 MiB.
#[tokio::test]
async fn a_scrape_with_100_destinations_of_1900_byte_paths_stays_under_512_kib() {
    const SCRAPE_MAX: usize = 512 << 10;
    let rx = Receiver::start().await;
    let gw = Gateway::start().await;
    for i in 0..100 {
        let path = format!("/{i:03}{}", "p".repeat(1_896));
        register_url(&gw, &rx.url(&path)).await;
    }
    let text = scrape_until(&gw, "100 destinations labelled", |text| {
        destination_labels(text).len() == 100
    })
    .await;
    eprintln!("a scrape of 100 destinations: {} bytes", text.len());
    assert!(
        text.len() < SCRAPE_MAX,
        "a scrape of 100 destinations is {} bytes, over {SCRAPE_MAX}",
        text.len()
    );
}
