//! WRP msgpack decoding: never a panic; what decodes re-encodes and decodes
//! again to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ratatoskr::event::wrp::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::from_msgpack(data) {
        let again = Message::from_msgpack(&m.to_msgpack()).expect("re-encoded message decodes");
        assert_eq!(again.to_msgpack(), m.to_msgpack());
    }
});
