//! Tokens and `ratatoskr` claims from anyone: verifying never crashes, and a
//! claim that is accepted is bounded (the scope builder's limits).
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ratatoskr::auth::jwt::{JwtSettings, Verifier};
use ratatoskr::auth::{Claim, Scope};

/// The secret of the seeds in fuzz/seeds/jwt_token (so that mutations of a
/// valid token reach the claim and scope code).
const SECRET: &str = "fuzzing-secret-0123456789abcdef";

fn verifier() -> &'static Verifier {
    static V: OnceLock<std::sync::Arc<Verifier>> = OnceLock::new();
    V.get_or_init(|| {
        let settings = JwtSettings {
            secret: Some(SECRET.parse().expect("a secret")),
            ..Default::default()
        };
        Verifier::load(&settings).expect("keys").expect("a verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(token) = std::str::from_utf8(rest) {
            let _ = verifier().verify(token);
        }
    } else if let Ok(claim) = serde_json::from_slice::<Claim>(rest) {
        let _ = Scope::from_claim(claim);
    }
});
