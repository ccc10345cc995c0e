//! `--api-keys-file` documents from anyone: parsing never crashes, and a
//! document that loads answers lookups.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ratatoskr::auth::keys::ApiKeys;

fuzz_target!(|data: &[u8]| {
    if let Ok(keys) = ApiKeys::parse(data) {
        let _ = keys.identify("rtk_probe");
    }
});
