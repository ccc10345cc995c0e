//! The NDJSON splitter: lines carry no line ending, are numbered in order,
//! and each goes through the JSON envelope without a panic.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ratatoskr::event::json::{parse_payload, split_lines, DEFAULT_MAX_DEPTH};

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let lines = split_lines(&body);
    let mut last = 0;
    for (n, line) in &lines {
        assert!(*n > last);
        last = *n;
        assert!(!line.contains(&b'\n'));
        assert!(!line.iter().all(u8::is_ascii_whitespace));
        let _ = parse_payload(line, DEFAULT_MAX_DEPTH);
    }
});
