//! `ratatoskr sink`: a small webhook receiver that prints what it gets and
//! checks its signatures, so that forwarding can be tried end to end on one
//! machine with no consumer of one's own (the forwarding example in
//! docs/forwarding.md uses it).
//!
//! Each request is one JSON line on stdout: the path, the event headers,
//! whether each signature verified (with `--secret`), and the body (as
//! text, or base64 when it is not UTF-8). It answers 204.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::any;
use axum::Router;
use base64::Engine as _;
use serde_json::json;

use crate::forward::payload::{standard_signature, xmidt_signature};

/// What the sink was started with.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ratatoskr sink",
    about = "Print the webhooks it receives, and check their signatures"
)]
pub struct SinkArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// The registration's secret: each request's `X-Webpa-Signature` and
    /// `webhook-signature` are checked against it.
    #[arg(long, env = "RATATOSKR_SINK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
}

/// What every request handler shares.
struct Sink {
    secret: Option<String>,
    /// Told when stdout's reader went away: the sink then ends.
    closed: tokio::sync::Notify,
}

/// Runs the sink until the process is stopped, or until its output's
/// reader goes away (`ratatoskr sink | head -1`): then it ends quietly,
/// as a command-line tool does on EPIPE, rather than panic per request.
pub async fn run(args: SinkArgs) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let _ = writeln!(
        std::io::stderr(),
        "ratatoskr sink: listening on http://{}",
        listener.local_addr()?
    );
    let sink = Arc::new(Sink {
        secret: args.secret,
        closed: tokio::sync::Notify::new(),
    });
    let app = Router::new()
        .fallback(any(receive))
        .with_state(Arc::clone(&sink));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { sink.closed.notified().await })
        .await
}

async fn receive(
    State(sink): State<Arc<Sink>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let line = describe(sink.secret.as_deref(), &uri, &headers, &body);
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        // Nobody reads what we print: stop (the request is still answered).
        sink.closed.notify_one();
    }
    StatusCode::NO_CONTENT
}

/// One received request as a JSON line.
pub fn describe(secret: Option<&str>, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut line = json!({
        "path": uri.to_string(),
        "content_type": header("content-type"),
        "webhook_id": header("webhook-id"),
        "event_id": header("x-event-id"),
        "device": header("x-device-id").or(header("x-webpa-device-id")),
        "event_type": header("x-event-type").or(header("x-webpa-event")),
    });
    if let Some(secret) = secret {
        let xmidt = header("x-webpa-signature").map(|given| given == xmidt_signature(secret, body));
        let standard = match (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        ) {
            (Some(id), Some(ts), Some(given)) => ts.parse::<i64>().ok().map(|ts| {
                let expected = standard_signature(secret, id, ts, body);
                given.split(' ').any(|g| g == expected)
            }),
            _ => None,
        };
        line["signature_ok"] = json!({ "x_webpa": xmidt, "standard_webhooks": standard });
    }
    line["body"] = match std::str::from_utf8(body) {
        Ok(text) => json!(text),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(body) }),
    };
    line.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_both_ways() {
        let body = br#"{"n":1}"#;
        let mut h = HeaderMap::new();
        h.insert("webhook-id", "abc".parse().unwrap());
        h.insert("webhook-timestamp", "1700000000".parse().unwrap());
        h.insert(
            "webhook-signature",
            standard_signature("s3cret", "abc", 1_700_000_000, body)
                .parse()
                .unwrap(),
        );
        h.insert(
            "x-webpa-signature",
            xmidt_signature("s3cret", body).parse().unwrap(),
        );
        let uri: Uri = "/hook".parse().unwrap();
        let ok: serde_json::Value =
            serde_json::from_str(&describe(Some("s3cret"), &uri, &h, body)).unwrap();
        assert_eq!(
            ok["signature_ok"],
            json!({"x_webpa": true, "standard_webhooks": true})
        );
        assert_eq!(ok["body"], r#"{"n":1}"#);
        let bad: serde_json::Value =
            serde_json::from_str(&describe(Some("other"), &uri, &h, body)).unwrap();
        assert_eq!(
            bad["signature_ok"],
            json!({"x_webpa": false, "standard_webhooks": false})
        );
        let bin: serde_json::Value =
            serde_json::from_str(&describe(None, &uri, &h, &[0xff, 0])).unwrap();
        assert_eq!(bin["body"]["base64"], "/wA=");
        assert!(bin.get("signature_ok").is_none());
    }
}
