//! CEL compilation and evaluation: never a crash (a stack overflow is one),
//! and evaluation of anything accepted stays within its budget.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ratatoskr::state::registry::expression::Expression;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = Expression::compile(src, &["event"]) {
        let event = serde_json::json!({
            "type": "online", "device": "mac:112233445566",
            "payload": {"n": 3, "s": "text", "l": [1, 2, 3], "m": {"a": [true]}},
            "metadata": {"fw": "1.2"}
        });
        let value = cel::to_value(event).expect("a CEL value");
        let _ = e.evaluate("event", &value);
    }
});
