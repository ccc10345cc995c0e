//! The lean HTTP/1 path's request parsing: sniff, then build the request,
//! never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ratatoskr::server::lean::{build_request, sniff, Sniff};
use ratatoskr::server::PeerAddr;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    if let Sniff::Stream(len) = sniff(data) {
        assert!(len <= data.len());
        let peer = PeerAddr(([127, 0, 0, 1], 9).into());
        if let Ok(r) = build_request(&data[..len], peer) {
            assert!(r.uri().path().starts_with("/events"));
        }
    }
});
