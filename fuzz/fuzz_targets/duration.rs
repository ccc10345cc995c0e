//! Registration durations: never a panic, never 0, never past the cap.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ratatoskr::state::registry::duration::parse;

fuzz_target!(|data: &[u8]| {
    let cap = Duration::from_secs(3600);
    let values = [
        serde_json::from_slice::<serde_json::Value>(data).ok(),
        std::str::from_utf8(data).ok().map(|s| serde_json::Value::String(s.to_owned())),
    ];
    for v in values.into_iter().flatten() {
        if let Ok(d) = parse(&v, cap) {
            assert!(!d.is_zero() && d <= cap, "{v}: {d:?}");
        }
    }
});
