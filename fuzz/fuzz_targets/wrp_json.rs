//! WRP JSON decoding: never a panic; what decodes re-encodes and decodes
//! again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ratatoskr::event::wrp::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::from_json(data) {
        let again = Message::from_json(&m.to_json()).expect("re-encoded message decodes");
        assert_eq!(again.to_json(), m.to_json());
    }
});
