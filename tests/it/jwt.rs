//! JSON Web Tokens: who may subscribe to and publish for which devices,
//! and who may manage. Tokens are minted here with `jsonwebtoken`, keys
//! made with the `openssl` command; the gateway is checked from outside.

use std::process::Command;
use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::client::Api;
use crate::support::util::Gateway;

const SECRET: &str = "a-jwt-secret-of-some-good-length-0123";
const MINE: &str = "mac:112233445566";
const ALSO_MINE: &str = "serial:abc-7";
const NOT_MINE: &str = "mac:665544332211";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn hs256(claims: Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

fn scoped(claim: Value) -> String {
    hs256(json!({"sub": "user-1", "exp": now() + 600, "ratatoskr": claim}))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn gateway() -> Gateway {
    Gateway::start_with(|c| c.jwt_secret = Some(SECRET.parse().unwrap())).await
}

async fn publish_as(gw: &Gateway, token: &str, device: &str, ty: &str, n: i64) -> u16 {
    gw.post_with(
        &format!("/api/events?device={device}&type={ty}"),
        "application/json",
        json!({"n": n}).to_string(),
        &[("authorization", &bearer(token))],
    )
    .await
    .status
}

#[tokio::test]
async fn bad_tokens_are_401_whatever_is_wrong_with_them() {
    let gw = Gateway::start_with(|c| {
        c.jwt_secret = Some(SECRET.parse().unwrap());
        c.jwt_audience = vec!["ratatoskr".into()];
        c.jwt_leeway = Duration::from_secs(5);
    })
    .await;
    let admin = json!({"admin": true});
    let other_key = EncodingKey::from_secret(b"some-other-secret-of-good-length").unwrap();
    let none = {
        use base64::Engine;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"exp": now() + 600, "aud": "ratatoskr", "ratatoskr": admin}))
        )
    };
    let cases = [
        (
            "expired",
            hs256(json!({"exp": now() - 60, "aud": "ratatoskr", "ratatoskr": admin})),
            "expired",
        ),
        (
            "not yet valid",
            hs256(
                json!({"exp": now() + 600, "nbf": now() + 300, "aud": "ratatoskr", "ratatoskr": admin}),
            ),
            "not valid yet",
        ),
        (
            "no exp",
            hs256(json!({"aud": "ratatoskr", "ratatoskr": admin})),
            "exp",
        ),
        (
            "wrong audience",
            hs256(json!({"exp": now() + 600, "aud": "someone-else", "ratatoskr": admin})),
            "audience",
        ),
        (
            "no audience",
            hs256(json!({"exp": now() + 600, "ratatoskr": admin})),
            "audience",
        ),
        (
            "wrong signature",
            encode(
                &Header::new(Algorithm::HS256),
                &json!({"exp": now() + 600, "aud": "ratatoskr", "ratatoskr": admin}),
                &other_key,
            )
            .unwrap(),
            "signature",
        ),
        ("alg none", none, "not a valid JWT"),
        ("garbage", "not-a-token".to_owned(), "not a valid JWT"),
    ];
    for (what, token, says) in cases {
        let r = gw
            .post_with(
                "/api/events",
                "application/json",
                "1",
                &[("authorization", &bearer(&token))],
            )
            .await;
        r.assert_problem(401);
        assert!(r.text.contains(says), "{what}: {}", r.text);
        assert_eq!(
            r.headers["www-authenticate"], "Bearer realm=\"ratatoskr\"",
            "{what}"
        );
    }
    gw.get("/events").await.assert_problem(401);
    // The same token, right audience: accepted.
    let good = hs256(json!({"exp": now() + 600, "aud": "ratatoskr", "ratatoskr": admin}));
    assert_eq!(publish_as(&gw, &good, MINE, "t", 1).await, 202);
}

#[tokio::test]
async fn a_scoped_subscriber_sees_its_devices_only_live_and_on_resume() {
    let gw = gateway().await;
    let admin = scoped(json!({"admin": true}));
    let reader = scoped(json!({"subscribe": [MINE, "serial:abc*"]}));
    // Events before the subscription, for the resume below.
    let mut ids = Vec::new();
    for (i, device) in [MINE, NOT_MINE, ALSO_MINE].iter().enumerate() {
        let r = gw
            .post_with(
                &format!("/api/events?device={device}"),
                "application/json",
                json!({"n": i}).to_string(),
                &[("authorization", &bearer(&admin))],
            )
            .await;
        assert_eq!(r.status, 202);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    // Asking for a device outside the scope is refused, not an empty stream.
    let r = gw
        .http
        .get(gw.url(&format!("/events?device={NOT_MINE}")))
        .header("authorization", bearer(&reader))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // No device named: exactly the scope, from the resume point on.
    let mut sub = gw
        .subscribe_with(
            "/events",
            &[
                ("authorization", &bearer(&reader)),
                ("last-event-id", &format!("{:016x}", 0x1u64)),
            ],
        )
        .await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = sub
            .next_event(Duration::from_secs(5))
            .await
            .expect("replayed");
        // A `gap` notice (the id is older than the ring) carries no event.
        if e.event.is_some() {
            assert!(!e.data.contains(NOT_MINE), "{}", e.data);
            continue;
        }
        seen.push(e.json()["n"].as_i64().unwrap());
    }
    assert_eq!(seen, [0, 2], "the replay holds only the scope's devices");
    for (device, n) in [
        (NOT_MINE, 10),
        (MINE, 11),
        ("serial:xyz", 12),
        (ALSO_MINE, 13),
    ] {
        assert_eq!(publish_as(&gw, &admin, device, "t", n).await, 202);
    }
    let live: Vec<i64> = [sub.expect_event().await, sub.expect_event().await]
        .iter()
        .map(|e| e.json()["n"].as_i64().unwrap())
        .collect();
    assert_eq!(live, [11, 13]);
    sub.expect_silence(Duration::from_millis(300)).await;
    // A device inside the scope, named: fine.
    let _one = gw
        .subscribe_with(
            &format!("/events?device={MINE}"),
            &[("authorization", &bearer(&reader))],
        )
        .await;
    // A token with no subscribe scope subscribes to nothing.
    let r = gw
        .http
        .get(gw.url("/events"))
        .header("authorization", bearer(&scoped(json!({"publish": [MINE]}))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn a_scoped_publisher_publishes_for_its_devices_and_types_only() {
    let gw = gateway().await;
    let publisher = scoped(json!({"publish": [MINE, "serial:*"], "types": ["status-*"]}));
    assert_eq!(publish_as(&gw, &publisher, MINE, "status-up", 1).await, 202);
    assert_eq!(
        publish_as(&gw, &publisher, ALSO_MINE, "status-down", 2).await,
        202
    );
    assert_eq!(
        publish_as(&gw, &publisher, NOT_MINE, "status-up", 3).await,
        403
    );
    assert_eq!(publish_as(&gw, &publisher, MINE, "reboot", 4).await, 403);
    // In a batch, each line on its own.
    let r = gw
        .post_with(
            "/api/events?type=status-up",
            "application/x-ndjson",
            format!("{{\"device\":\"{MINE}\",\"n\":5}}\n{{\"device\":\"{NOT_MINE}\",\"n\":6}}\n"),
            &[("authorization", &bearer(&publisher))],
        )
        .await;
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
    assert_eq!(r.body["rejected"], 1, "{}", r.text);
    // Management needs an admin (registrations: see the ownership test).
    for path in ["/api/accounts", "/api/event-types", "/hooks", "/api/stats"] {
        let r = gw
            .http
            .get(gw.url(path))
            .header("authorization", bearer(&publisher))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    let admin = scoped(json!({"admin": true}));
    let r = gw
        .http
        .get(gw.url("/api/registrations"))
        .header("authorization", bearer(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_header_wins_over_the_cookie_and_the_query_token_is_for_the_stream_only() {
    let gw = gateway().await;
    let good = scoped(json!({"admin": true}));
    let cookie = format!("theme=dark; ratatoskr_token={good}");
    // The cookie alone.
    let r = gw
        .post_with(
            "/api/events",
            "application/json",
            "1",
            &[("cookie", &cookie)],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    // A bad header and a good cookie: the header is the one checked.
    gw.post_with(
        "/api/events",
        "application/json",
        "1",
        &[("cookie", &cookie), ("authorization", "Bearer wrong")],
    )
    .await
    .assert_problem(401);
    // ?access_token= on the stream, not on the API.
    let _sse = gw.subscribe(&format!("/events?access_token={good}")).await;
    gw.post(
        &format!("/api/events?access_token={good}"),
        "application/json",
        "1",
    )
    .await
    .assert_problem(401);
}

#[tokio::test]
async fn asymmetric_keys_verify_their_own_algorithms_and_no_confusion() {
    let dir = crate::support::process::temp_dir("jwt-keys");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "rsa.key",
    ]);
    openssl(&["pkey", "-in", "rsa.key", "-pubout", "-out", "rsa.pub"]);
    let private = std::fs::read(dir.join("rsa.key")).unwrap();
    let public = std::fs::read(dir.join("rsa.pub")).unwrap();
    let path = dir.join("rsa.pub");
    let gw = Gateway::start_with(|c| c.jwt_public_key = Some(path)).await;
    let claims = json!({"exp": now() + 600, "ratatoskr": {"admin": true}});
    let rs256 = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&private).unwrap(),
    )
    .unwrap();
    let ok = gw
        .post_with(
            "/api/events",
            "application/json",
            "1",
            &[("authorization", &bearer(&rs256))],
        )
        .await;
    assert_eq!(ok.status, 202, "{}", ok.text);
    // HS256 "signed" with the public key's bytes as the secret: no HMAC
    // key is configured, so there is nothing to verify it with.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&public).unwrap(),
    )
    .unwrap();
    gw.post_with(
        "/api/events",
        "application/json",
        "1",
        &[("authorization", &bearer(&confused))],
    )
    .await
    .assert_problem(401);
}

#[tokio::test]
async fn a_jwks_file_serves_its_keys_by_kid() {
    use base64::Engine;
    let dir = crate::support::process::temp_dir("jwks");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", "ed.key"]);
    openssl(&[
        "pkey", "-in", "ed.key", "-pubout", "-outform", "DER", "-out", "ed.der",
    ]);
    // An Ed25519 SubjectPublicKeyInfo ends with the 32-byte key.
    let der = std::fs::read(dir.join("ed.der")).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
    let jwks =
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"}]});
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    let gw = Gateway::start_with(|c| c.jwks_file = Some(path)).await;
    let key = EncodingKey::from_ed_pem(&std::fs::read(dir.join("ed.key")).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let token = encode(
        &header,
        &json!({"exp": now() + 600, "ratatoskr": {"publish": [MINE]}}),
        &key,
    )
    .unwrap();
    assert_eq!(publish_as(&gw, &token, MINE, "t", 1).await, 202);
    assert_eq!(publish_as(&gw, &token, NOT_MINE, "t", 2).await, 403);
    // An HS256 token: no HMAC key in the set.
    assert_eq!(
        publish_as(&gw, &hs256(json!({"exp": now() + 600})), MINE, "t", 3).await,
        401
    );
}

#[tokio::test]
async fn the_largest_scope_a_claim_may_hold_streams_exactly_its_devices() {
    let gw = gateway().await;
    let admin = scoped(json!({"admin": true}));
    // 1,000 entries: 996 exact ids and 4 globs of 8 wildcards (32 in all),
    // every limit at its edge.
    let mut subscribe: Vec<String> = (0..996).map(|i| format!("mac:{i:012x}")).collect();
    for g in ["a", "b", "c", "d"] {
        subscribe.push(format!("serial:{g}*1*2*3*4*5*6*7*"));
    }
    let big = scoped(json!({ "subscribe": subscribe }));
    let exact_only = scoped(json!({ "subscribe": subscribe[..996] }));
    let mut mixed = gw
        .subscribe_with("/events", &[("authorization", &bearer(&big))])
        .await;
    let mut indexed = gw
        .subscribe_with("/events", &[("authorization", &bearer(&exact_only))])
        .await;
    for (device, n) in [
        ("mac:0000000003e3", 1),         // the last exact id
        ("serial:b-1-2-3-4-5-6-7-x", 2), // a glob
        ("serial:e-1-2-3-4-5-6-7-x", 3), // no glob
        (NOT_MINE, 4),
    ] {
        assert_eq!(publish_as(&gw, &admin, device, "t", n).await, 202);
    }
    let got: Vec<i64> = [mixed.expect_event().await, mixed.expect_event().await]
        .iter()
        .map(|e| e.json()["n"].as_i64().unwrap())
        .collect();
    assert_eq!(got, [1, 2]);
    assert_eq!(indexed.expect_event().await.json()["n"], 1);
    mixed.expect_silence(Duration::from_millis(300)).await;
    indexed.expect_silence(Duration::from_millis(100)).await;
    // One entry more is refused at the door.
    subscribe.push("mac:ffffffffffff".into());
    let r = gw
        .post_with(
            "/api/events",
            "application/json",
            "1",
            &[(
                "authorization",
                &bearer(&scoped(json!({ "subscribe": subscribe }))),
            )],
        )
        .await;
    r.assert_problem(401);
    assert!(r.text.contains("more than 1000"), "{}", r.text);
}

#[tokio::test]
async fn registrations_of_a_scoped_token_stay_in_its_scope_and_are_its_own() {
    let gw = gateway().await;
    let rx = crate::support::receiver::Receiver::start().await;
    let admin = scoped(json!({"admin": true}));
    let alice = hs256(
        json!({"sub": "alice", "exp": now() + 600, "ratatoskr": {"subscribe": [MINE, "serial:*"]}}),
    );
    let bob = hs256(json!({"sub": "bob", "exp": now() + 600, "ratatoskr": {"subscribe": [MINE]}}));
    let nobody = hs256(json!({"exp": now() + 600, "ratatoskr": {"subscribe": [MINE]}}));
    let call = |method: &str, path: &str, token: &str, body: Option<Value>| {
        let mut req = gw
            .http
            .request(method.parse().unwrap(), gw.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        async move { crate::support::util::Reply::read(req.send().await.unwrap()).await }
    };
    let reg = |devices: Value| {
        json!({"devices": devices, "duration": "10m",
               "destination": {"type": "http", "url": rx.url("/alice")}})
    };
    // Escalation by body: a device outside the scope.
    let r = call(
        "POST",
        "/api/registrations",
        &alice,
        Some(reg(json!([MINE, NOT_MINE]))),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains(NOT_MINE));
    // A token without sub can own nothing.
    let r = call(
        "POST",
        "/api/registrations",
        &nobody,
        Some(reg(json!([MINE]))),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = call(
        "POST",
        "/api/registrations",
        &alice,
        Some(reg(json!([MINE, "serial:7"]))),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["owner"], "sub:alice");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/registrations/{id}");
    // Bob does not see it, cannot change or delete it: to him it is not there.
    assert_eq!(call("GET", &path, &bob, None).await.status, 404);
    assert_eq!(
        call("PUT", &path, &bob, Some(reg(json!([MINE]))))
            .await
            .status,
        404
    );
    assert_eq!(call("DELETE", &path, &bob, None).await.status, 404);
    let mine = call("GET", "/api/registrations", &bob, None).await;
    assert_eq!(mine.body["items"], json!([]));
    // Alice sees hers; a replace cannot widen it either.
    assert_eq!(
        call("GET", "/api/registrations", &alice, None).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = call("PUT", &path, &alice, Some(reg(json!([NOT_MINE])))).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = call("PUT", &path, &alice, Some(reg(json!(["serial:8"])))).await;
    assert_eq!(
        (r.status, r.body["owner"].as_str()),
        (200, Some("sub:alice"))
    );
    // The admin sees everyone's.
    let all = call("GET", "/api/registrations", &admin, None).await;
    assert_eq!(all.body["items"][0]["owner"], "sub:alice");
    // The registration forwards the owner's devices' events.
    assert_eq!(publish_as(&gw, &admin, "serial:8", "t", 1).await, 202);
    let got = rx.wait_for("/alice", 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(call("DELETE", &path, &alice, None).await.status, 204);
    // A publisher-only token (no subscribe scope) registers for nothing.
    let writer = hs256(json!({"sub": "w", "exp": now() + 600, "ratatoskr": {"publish": [MINE]}}));
    let r = call(
        "POST",
        "/api/registrations",
        &writer,
        Some(reg(json!([MINE]))),
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn whoami_tells_a_token_its_scope() {
    let gw = gateway().await;
    let who = |token: String| {
        let req = gw.http.get(gw.url("/api/whoami")).bearer_auth(token);
        async move { crate::support::util::Reply::read(req.send().await.unwrap()).await }
    };
    let me = who(scoped(
        json!({"subscribe": [MINE], "accounts": ["acme"], "publish": [MINE]}),
    ))
    .await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["role"], "scoped");
    assert_eq!(me.body["owner"], "sub:user-1");
    assert_eq!(me.body["subscribe"], json!([MINE]));
    assert_eq!(me.body["accounts"], json!(["acme"]));
    assert_eq!(
        who(scoped(json!({"admin": true}))).await.body["role"],
        "admin"
    );
    assert_eq!(who("garbage".into()).await.status, 401);
    let open = Gateway::start().await.get("/api/whoami").await;
    assert_eq!(open.body["role"], "anyone");
}

/// Issue 24, item 1: an `Idempotency-Key` is the credential's own. One
/// tenant claiming 50 keys first must not swallow another tenant's 50
/// events posted later with the same keys (embedded, and cluster-wide
/// under `RATATOSKR_TEST_REDIS`).
#[tokio::test]
async fn idempotency_keys_are_per_credential_so_50_of_50_other_tenant_events_are_broadcast() {
    const KEYS: usize = 50;
    let gw = gateway().await;
    let admin = scoped(json!({"admin": true}));
    let first =
        hs256(json!({"sub": "tenant-a", "exp": now() + 600, "ratatoskr": {"publish": [MINE]}}));
    let second =
        hs256(json!({"sub": "tenant-b", "exp": now() + 600, "ratatoskr": {"publish": [NOT_MINE]}}));
    let mut sub = gw
        .subscribe_with(
            &format!("/events?device={NOT_MINE}"),
            &[("authorization", &bearer(&admin))],
        )
        .await;
    let post = |token: String, device: &'static str, key: String| {
        let gw = &gw;
        async move {
            gw.post_with(
                &format!("/api/events?device={device}"),
                "application/json",
                "{\"order\":1}",
                &[
                    ("authorization", &bearer(&token)),
                    ("idempotency-key", &key),
                ],
            )
            .await
        }
    };
    let mut first_ids = std::collections::HashSet::new();
    for k in 0..KEYS {
        let r = post(first.clone(), MINE, format!("order-{k}")).await;
        assert_eq!(r.status, 202, "{}", r.text);
        first_ids.insert(r.body["id"].as_str().unwrap().to_owned());
    }
    let mut swallowed = 0;
    for k in 0..KEYS {
        let r = post(second.clone(), NOT_MINE, format!("order-{k}")).await;
        assert_eq!(r.status, 202, "{}", r.text);
        let id = r.body["id"].as_str().unwrap();
        if r.headers.contains_key("idempotent-replayed") || first_ids.contains(id) {
            swallowed += 1;
        }
    }
    assert_eq!(
        swallowed, 0,
        "{swallowed} of {KEYS} of tenant b's events were answered as tenant a's replays"
    );
    for k in 0..KEYS {
        let ev = sub.next_event(Duration::from_secs(5)).await;
        assert!(
            ev.is_some(),
            "only {k} of {KEYS} of tenant b's events were broadcast"
        );
    }
    // Within one credential a retry is still a replay, and a token with
    // no `sub` has a namespace of its own (a digest of its claim).
    let again = post(second.clone(), NOT_MINE, "order-0".into()).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let anonymous = hs256(json!({"exp": now() + 600, "ratatoskr": {"publish": [NOT_MINE]}}));
    let r = post(anonymous.clone(), NOT_MINE, "order-0".into()).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(
        !r.headers.contains_key("idempotent-replayed"),
        "a token without sub shares tenant b's keys"
    );
    let r = post(anonymous, NOT_MINE, "order-0".into()).await;
    assert_eq!(r.headers["idempotent-replayed"], "true");
}

#[tokio::test]
async fn a_stream_ends_with_revoked_once_its_token_expires_then_the_token_gets_401() {
    const LEEWAY: i64 = 1;
    let gw = Gateway::start_with(|c| {
        c.jwt_secret = Some(SECRET.parse().unwrap());
        c.jwt_leeway = Duration::from_secs(LEEWAY as u64);
    })
    .await;
    let exp = now() + 2;
    let short = hs256(json!({"sub": "user-1", "exp": exp, "ratatoskr": {"subscribe": [MINE]}}));
    let admin = hs256(json!({"exp": now() + 600, "ratatoskr": {"admin": true}}));
    let mut sub = gw
        .subscribe_with(
            &format!("/events?device={MINE}"),
            &[("authorization", &bearer(&short))],
        )
        .await;
    // A stream opened with the --api-token's equal (an admin JWT far from
    // its exp) stays.
    let mut lasting = gw
        .subscribe_with("/events", &[("authorization", &bearer(&admin))])
        .await;
    assert_eq!(publish_as(&gw, &admin, MINE, "status", 1).await, 202);
    assert_eq!(sub.expect_event().await.json()["n"], 1);
    assert_eq!(lasting.expect_event().await.json()["n"], 1);
    let revoked = sub
        .next_event(Duration::from_secs(8))
        .await
        .expect("a revoked notice within 8 s of a token that expires in 2 s (leeway 1 s)");
    assert_eq!(revoked.event.as_deref(), Some("revoked"), "{revoked:?}");
    assert_eq!(revoked.json()["reason"], "the token expired");
    assert!(
        now() > exp + LEEWAY,
        "ended only once the token is refused (exp + leeway {LEEWAY} s)"
    );
    assert!(
        sub.next_item(Duration::from_secs(2)).await.is_none() && sub.ended,
        "the stream closes after revoked"
    );
    let again = gw
        .http
        .get(gw.url(&format!("/events?device={MINE}")))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 401, "the reconnect with the expired token");
    assert_eq!(publish_as(&gw, &admin, MINE, "status", 2).await, 202);
    assert_eq!(
        lasting.expect_event().await.json()["n"],
        2,
        "a token not expired keeps its stream"
    );
}
