//! Accounts own devices: `/api/accounts/{id}/devices` (admins only), and a
//! token's `accounts` claim subscribes to those devices, as they are at
//! each event (added ones arrive, removed ones stop, on open streams).

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::client::Api;
use crate::support::util::{Gateway, Reply};

const SECRET: &str = "an-accounts-test-secret-0123456789";
const MINE: &str = "mac:112233445566";
const LATER: &str = "serial:added-later";
const NOT_MINE: &str = "mac:665544332211";

fn token(claim: Value) -> String {
    let exp = chrono::Utc::now().timestamp() + 600;
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "u", "exp": exp, "ratatoskr": claim}),
        &key,
    )
    .unwrap()
}

async fn call(gw: &Gateway, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
    let mut req = gw
        .http
        .request(method.parse().unwrap(), gw.url(path))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    Reply::read(req.send().await.unwrap()).await
}

async fn publish(gw: &Gateway, admin: &str, device: &str, n: i64) {
    let r = call(
        gw,
        "POST",
        &format!("/api/events?device={device}"),
        admin,
        Some(json!({ "n": n })),
    )
    .await;
    assert_eq!(r.status, 202);
}

#[tokio::test]
async fn an_account_token_streams_the_accounts_devices_as_they_change() {
    let gw = Gateway::start_with(|c| c.jwt_secret = Some(SECRET.parse().unwrap())).await;
    let admin = token(json!({"admin": true}));
    let member = token(json!({"accounts": ["acme"]}));

    // Only admins manage accounts.
    let r = call(
        &gw,
        "PUT",
        "/api/accounts/acme/devices",
        &member,
        Some(json!({"devices": [MINE]})),
    )
    .await;
    assert_eq!(r.status, 403);
    // An account that does not exist grants nothing.
    let r = gw
        .http
        .get(gw.url("/events"))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let r = call(
        &gw,
        "PUT",
        "/api/accounts/acme/devices",
        &admin,
        Some(json!({"devices": ["MAC:11-22-33-44-55-66"]})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["devices"], json!([MINE]), "stored canonical");
    let r = call(&gw, "GET", "/api/accounts/acme/devices", &admin, None).await;
    assert_eq!((r.status, r.body["version"].as_u64()), (200, Some(1)));

    // Outside the account: 403.
    let r = gw
        .http
        .get(gw.url(&format!("/events?device={NOT_MINE}")))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let mut all = gw
        .subscribe_with("/events", &[("authorization", &format!("Bearer {member}"))])
        .await;
    let mut one = gw
        .subscribe_with(
            &format!("/events?device={MINE}"),
            &[("authorization", &format!("Bearer {member}"))],
        )
        .await;
    publish(&gw, &admin, NOT_MINE, 1).await;
    publish(&gw, &admin, MINE, 2).await;
    publish(&gw, &admin, LATER, 3).await;
    assert_eq!(all.expect_event().await.json()["n"], 2);
    assert_eq!(one.expect_event().await.json()["n"], 2);

    // A device added to the account reaches the open stream.
    let r = call(
        &gw,
        "PUT",
        &format!("/api/accounts/acme/devices/{LATER}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(r.status, 201);
    let r = call(
        &gw,
        "PUT",
        &format!("/api/accounts/acme/devices/{LATER}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "already there");
    publish(&gw, &admin, LATER, 4).await;
    assert_eq!(all.expect_event().await.json()["n"], 4);

    // A device removed stops at once, on both streams.
    let r = call(
        &gw,
        "DELETE",
        &format!("/api/accounts/acme/devices/{MINE}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    publish(&gw, &admin, MINE, 5).await;
    publish(&gw, &admin, LATER, 6).await;
    assert_eq!(all.expect_event().await.json()["n"], 6);
    one.expect_silence(Duration::from_millis(300)).await;

    // Deleting the account revokes everything it granted.
    assert_eq!(
        call(&gw, "DELETE", "/api/accounts/acme", &admin, None)
            .await
            .status,
        204
    );
    publish(&gw, &admin, LATER, 7).await;
    all.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(
        call(&gw, "GET", "/api/accounts/acme/devices", &admin, None)
            .await
            .status,
        404
    );
    assert_eq!(
        call(&gw, "DELETE", "/api/accounts/acme", &admin, None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn bad_account_input_is_a_clear_error() {
    let gw = Gateway::start_with(|c| c.jwt_secret = Some(SECRET.parse().unwrap())).await;
    let admin = token(json!({"admin": true}));
    let r = call(
        &gw,
        "PUT",
        "/api/accounts/acme/devices",
        &admin,
        Some(json!({"devices": ["not a device"]})),
    )
    .await;
    r.assert_problem(422);
    assert!(r.text.contains("devices[0]"), "{}", r.text);
    let r = call(
        &gw,
        "PUT",
        "/api/accounts/acme/devices",
        &admin,
        Some(json!({"devices": [], "extra": 1})),
    )
    .await;
    assert!(r.status == 400 || r.status == 422, "{}", r.status);
    let r = call(
        &gw,
        "PUT",
        "/api/accounts/a%20b/devices",
        &admin,
        Some(json!({"devices": []})),
    )
    .await;
    r.assert_problem(422);
    let r = call(
        &gw,
        "DELETE",
        "/api/accounts/acme/devices/mac:112233445566",
        &admin,
        None,
    )
    .await;
    r.assert_problem(404);
    let many: Vec<String> = (0..=10_000).map(|i| format!("mac:{i:012x}")).collect();
    let r = call(
        &gw,
        "PUT",
        "/api/accounts/acme/devices",
        &admin,
        Some(json!({ "devices": many })),
    )
    .await;
    r.assert_problem(422);
    let list = call(&gw, "GET", "/api/accounts", &admin, None).await;
    assert_eq!(list.body["items"], json!([]), "nothing half-made");
    // A claim naming too many accounts is refused.
    let many: Vec<String> = (0..65).map(|i| format!("a{i}")).collect();
    let r = gw
        .http
        .get(gw.url("/events"))
        .bearer_auth(token(json!({ "accounts": many })))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn the_largest_account_and_the_most_accounts_a_claim_may_name_still_stream() {
    let gw = Gateway::start_with(|c| c.jwt_secret = Some(SECRET.parse().unwrap())).await;
    let admin = token(json!({"admin": true}));
    // An account at its device limit (10,000), the last one ours.
    let mut devices: Vec<String> = (0..9_999).map(|i| format!("serial:fleet-{i}")).collect();
    devices.push(MINE.into());
    let r = call(
        &gw,
        "PUT",
        "/api/accounts/big/devices",
        &admin,
        Some(json!({ "devices": devices })),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["devices"].as_array().unwrap().len(), 10_000);
    // A claim naming the most accounts allowed (64): each event's device is
    // looked up in every one of them.
    let mut names: Vec<String> = (0..63).map(|i| format!("absent-{i}")).collect();
    names.push("big".into());
    let member = token(json!({ "accounts": names }));
    let mut sub = gw
        .subscribe_with("/events", &[("authorization", &format!("Bearer {member}"))])
        .await;
    publish(&gw, &admin, NOT_MINE, 1).await;
    publish(&gw, &admin, MINE, 2).await;
    publish(&gw, &admin, "serial:fleet-9998", 3).await;
    assert_eq!(sub.expect_event().await.json()["n"], 2);
    assert_eq!(sub.expect_event().await.json()["n"], 3);
    assert_eq!(gw.get("/health").await.status, 200);
}
