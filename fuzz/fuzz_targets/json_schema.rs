//! JSON Schema analysis, compilation and validation, as the catalog does
//! them: what is accepted validates any instance within the visit bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ratatoskr::state::catalog::bounds::SchemaBounds;

fuzz_target!(|data: &[u8]| {
    // Schema and instance, separated by the first NUL byte.
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let Ok(schema) = serde_json::from_slice::<serde_json::Value>(&data[..split]) else {
        return;
    };
    let instance = data
        .get(split + 1..)
        .and_then(|d| serde_json::from_slice(d).ok())
        .unwrap_or(serde_json::Value::Null);
    let Ok(bounds) = SchemaBounds::analyse(&schema) else {
        return;
    };
    if bounds.cost(&instance).is_err() {
        return;
    }
    // The catalog's own validator (linear-time patterns, bounded size).
    if let Ok(v) = ratatoskr::state::catalog::validator(&schema) {
        if !v.is_valid(&instance) {
            let _ = v.iter_errors(&instance).take(32).count();
        }
    }
});
