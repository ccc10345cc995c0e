//! Subscriber and registration type patterns: compile and match without a
//! panic; accepted patterns respect the wildcard caps.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ratatoskr::hub::filter::{wildcards, EventFilter, MAX_WILDCARDS};
use ratatoskr::state::registry::filter::FilterSpec;

fuzz_target!(|input: (Vec<String>, String)| {
    let (patterns, event_type) = input;
    if let Ok(f) = EventFilter::new(Vec::<String>::new(), &patterns) {
        assert!(patterns.iter().all(|p| wildcards(p) <= MAX_WILDCARDS));
        let e = ratatoskr::event::test_event(1, Some("mac:112233445566"), Some(&event_type));
        let _ = f.matches(&e);
    }
    let spec = FilterSpec { types: patterns, ..Default::default() };
    if let Ok(f) = spec.compile() {
        let e = ratatoskr::event::test_event(1, Some("mac:112233445566"), Some(&event_type));
        let _ = f.matches(&e, None);
    }
});
