//! `--api-token`: the API, the stream and the hooks need the token; the
//! page, probes and metrics do not.

use serde_json::json;

use crate::support::client::Api;
use crate::support::util::Gateway;

const TOKEN: &str = "a-test-token-of-some-length";

#[tokio::test]
async fn the_token_guards_the_api_and_the_stream() {
    let gw = Gateway::start_with(|c| c.api_token = Some(TOKEN.parse().unwrap())).await;
    let r = gw.post("/api/events", "application/json", "1").await;
    r.assert_problem(401);
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"ratatoskr\"");
    let wrong = [("authorization", "Bearer not-the-token-at-all")];
    gw.post_with("/api/events", "application/json", "1", &wrong)
        .await
        .assert_problem(401);
    let right = format!("Bearer {TOKEN}");
    let ok = gw
        .post_with(
            "/api/events",
            "application/json",
            "1",
            &[("authorization", &right)],
        )
        .await;
    assert_eq!(ok.status, 202, "{}", ok.text);
    for path in [
        "/api/registrations",
        "/api/stats",
        "/hooks",
        "/api/event-types",
        "/events",
    ] {
        gw.get(path).await.assert_problem(401);
    }
    gw.post("/hook", "application/json", json!({}).to_string())
        .await
        .assert_problem(401);
    // EventSource cannot send headers: the query form works for the stream.
    let mut sse = gw
        .subscribe(&format!(
            "/events?access_token={TOKEN}&device=mac:112233445566"
        ))
        .await;
    gw.post_with(
        "/api/events?device=mac:112233445566",
        "application/json",
        "7",
        &[("authorization", &right)],
    )
    .await;
    assert_eq!(sse.expect_event().await.data, "7");
    for open in ["/", "/health", "/ready", "/metrics", "/static/app.js"] {
        assert_eq!(gw.get(open).await.status, 200, "{open} stays open");
    }
}

#[tokio::test]
async fn short_tokens_are_refused_at_start() {
    let err =
        ratatoskr::config::Config::from_args(["ratatoskr", "--api-token", "short"]).unwrap_err();
    assert!(err.to_string().contains("at least 16"), "{err}");
}
