//! xmidt `POST /hook` bodies: every check made before the registry, never a
//! panic, and an accepted duration within the cap.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ratatoskr::http::hooks::check_body;

fuzz_target!(|data: &[u8]| {
    let cap = Duration::from_secs(3600);
    if let Ok(d) = check_body(data, cap) {
        assert!(d <= cap);
    }
});
