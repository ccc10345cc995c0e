//! The SSE encoder: whatever the id, name and payload, a browser reads
//! exactly one event, with the payload's lines as its data.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ratatoskr::hub::frame::{event, interpret::parse_stream};

fuzz_target!(|input: (String, String, String)| {
    let (id, name, payload) = input;
    let frame = event(Some(&id), (!name.is_empty()).then_some(name.as_str()), payload.as_bytes());
    let text = std::str::from_utf8(&frame).expect("frames of text are text");
    let events = parse_stream(text);
    assert_eq!(events.len(), 1, "{text:?}");
    let expected = payload.replace("\r\n", "\n").replace('\r', "\n");
    assert_eq!(events[0].data, expected);
});
