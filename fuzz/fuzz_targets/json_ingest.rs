//! The JSON ingest envelope: never a panic; what is accepted is valid JSON,
//! no longer than posted, with no whitespace outside strings.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ratatoskr::event::json::{parse_payload, DEFAULT_MAX_DEPTH};

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    if let Ok(p) = parse_payload(&body, DEFAULT_MAX_DEPTH) {
        assert!(p.data.len() <= body.len());
        let v: serde_json::Value = serde_json::from_slice(&p.data).expect("minified JSON parses");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(data).ok(), Some(v));
        assert!(!p.data.contains(&b'\n'), "one data: line");
    }
});
