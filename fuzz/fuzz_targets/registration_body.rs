//! `POST /api/registrations` bodies: every check the registry makes before
//! storing (fields, duration, destination, filter), never a panic.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ratatoskr::state::registry::duration;
use ratatoskr::state::registry::spec::RegistrationRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<RegistrationRequest>(data) else {
        return;
    };
    let _ = duration::parse(&req.duration, Duration::from_secs(3600));
    let mut errors = Vec::new();
    req.destination.validate(&mut errors);
    let _ = req.filter.compile();
    let _ = req.destination.redacted(chrono::Utc::now());
});
