//! Registration durations: seconds as a number or a string, or a human
//! form (`"30m"`, `"1h"`, Go's `"1m30s"`), never zero, never over the cap.

use std::time::Duration;

use serde_json::Value;

/// Parses a registration's `duration` and checks it against `max`.
pub fn parse(value: &Value, max: Duration) -> Result<Duration, String> {
    let d = match value {
        Value::Number(n) => match n.as_u64() {
            Some(secs) => Duration::from_secs(secs),
            None => return Err(format!("{n} is not a whole, positive number of seconds")),
        },
        Value::String(s) => parse_text(s)?,
        other => {
            return Err(format!(
                "must be seconds (a number) or a duration such as \"30m\", not {}",
                kind(other)
            ))
        }
    };
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    if d > max {
        return Err(format!(
            "{} is over the maximum of {}",
            humantime::format_duration(d),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

fn parse_text(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s:?} is too large"));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration such as \"300\", \"30m\" or \"1h\": {e}"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn accepts_seconds_and_human_forms() {
        for (v, secs) in [
            (json!(30), 30),
            (json!("45"), 45),
            (json!("30m"), 1800),
            (json!("1m30s"), 90),
            (json!("1h"), 3600),
            (json!("300s"), 300),
        ] {
            assert_eq!(parse(&v, HOUR), Ok(Duration::from_secs(secs)), "{v}");
        }
    }

    #[test]
    fn refuses_zero_negative_too_long_and_garbage() {
        for v in [
            json!(0),
            json!("0s"),
            json!(-5),
            json!("-5m"),
            json!(3601),
            json!("2h"),
            json!(1.5),
            json!("soon"),
            json!(""),
            json!(null),
            json!([1]),
            json!("99999999999999999999999"),
        ] {
            assert!(parse(&v, HOUR).is_err(), "{v} should be refused");
        }
        assert!(parse(&json!("10m"), Duration::from_secs(300))
            .unwrap_err()
            .contains("maximum of 5m"));
    }
}
