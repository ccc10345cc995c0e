//! A registration's filter (the seed's "filter function"): type patterns,
//! metadata matchers and a CEL expression, all of which must pass.
//!
//! - `types`: globs (`device-status*`), or regexes written `re:<regex>`
//!   (unanchored, as Caduceus' `events`). A pattern matches an event's type
//!   or, for WRP events, its event locator path (`dest` without `event:`,
//!   e.g. `device-status/mac:112233445566/online`). Any pattern may match.
//! - `metadata`: key → glob on the event's metadata value. All must match.
//! - `expression`: CEL over `event` (`id`, `type`, `device`, `source`,
//!   `content_type`, `metadata`, `payload`, `received_at`), which must
//!   evaluate to `true`. An error while evaluating counts as no match.

use std::collections::BTreeMap;

use globset::{Glob, GlobMatcher};
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::expression::Expression;
use crate::event::Event;
use crate::hub::filter::{wildcards, MAX_WILDCARDS};
use crate::validation::{FieldError, Position};

/// Most type patterns or metadata matchers.
pub const MAX_PATTERNS: usize = 64;

/// The filter as the API takes and shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// Type patterns, OR-ed; empty takes every type.
    #[serde(default)]
    pub types: Vec<String>,
    /// Metadata key → glob on its value, AND-ed.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// CEL expression over `event`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

/// A filter ready to evaluate.
#[derive(Debug)]
pub struct CompiledFilter {
    types: Vec<TypePattern>,
    metadata: Vec<(String, GlobMatcher)>,
    expression: Option<Expression>,
}

#[derive(Debug)]
enum TypePattern {
    Glob(GlobMatcher),
    Regex(Regex),
}

impl TypePattern {
    fn is_match(&self, s: &str) -> bool {
        match self {
            Self::Glob(g) => g.is_match(s),
            Self::Regex(r) => r.is_match(s),
        }
    }
}

/// Builds a regex with a size limit, so a hostile pattern cannot eat memory.
pub fn bounded_regex(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
}

impl FilterSpec {
    /// Compiles every part, collecting every error with its field (and,
    /// for the expression, its line and column).
    pub fn compile(&self) -> Result<CompiledFilter, Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.types.len() > MAX_PATTERNS || self.metadata.len() > MAX_PATTERNS {
            errors.push(FieldError::new(
                "filter",
                format!(
                    "at most {MAX_PATTERNS} type patterns and {MAX_PATTERNS} metadata matchers"
                ),
            ));
        }
        let mut types = Vec::new();
        for (i, p) in self.types.iter().enumerate() {
            let field = format!("filter.types[{i}]");
            let compiled = match p.strip_prefix("re:") {
                Some(re) => bounded_regex(re)
                    .map(TypePattern::Regex)
                    .map_err(|e| format!("invalid regex: {e}")),
                None if p.is_empty() => Err("must not be empty".to_owned()),
                None if wildcards(p) > MAX_WILDCARDS => Err(format!(
                    "at most {MAX_WILDCARDS} wildcards per pattern (*, ?, [..], each {{..}} alternative)"
                )),
                None => Glob::new(p)
                    .map(|g| TypePattern::Glob(g.compile_matcher()))
                    .map_err(|e| format!("invalid glob: {e}")),
            };
            match compiled {
                Ok(t) => types.push(t),
                Err(m) => errors.push(FieldError::new(field, m)),
            }
        }
        let mut metadata = Vec::new();
        for (k, v) in &self.metadata {
            if wildcards(v) > MAX_WILDCARDS {
                errors.push(FieldError::new(
                    format!("filter.metadata.{k}"),
                    format!("at most {MAX_WILDCARDS} wildcards per pattern"),
                ));
                continue;
            }
            match Glob::new(v) {
                Ok(g) => metadata.push((k.clone(), g.compile_matcher())),
                Err(e) => errors.push(FieldError::new(
                    format!("filter.metadata.{k}"),
                    format!("invalid glob: {e}"),
                )),
            }
        }
        let expression = match self.expression.as_deref() {
            None => None,
            Some(src) => match compile_expression(src) {
                Ok(p) => Some(p),
                Err(mut e) => {
                    errors.append(&mut e);
                    None
                }
            },
        };
        if errors.is_empty() {
            Ok(CompiledFilter {
                types,
                metadata,
                expression,
            })
        } else {
            Err(errors)
        }
    }
}

fn compile_expression(src: &str) -> Result<Expression, Vec<FieldError>> {
    Expression::compile(src, &["event"]).map_err(|errs| {
        errs.into_iter()
            .map(|e| FieldError {
                field: "filter.expression".into(),
                message: e.message,
                position: e.position.map(|(line, column)| Position { line, column }),
            })
            .collect()
    })
}

impl CompiledFilter {
    /// A filter no event passes (for disabled registrations).
    pub fn nothing() -> Self {
        Self {
            types: vec![TypePattern::Regex(Regex::new("$^").expect("a valid regex"))],
            metadata: Vec::new(),
            expression: None,
        }
    }

    /// Whether the filter has a CEL expression (so the event must be
    /// converted for it).
    pub fn needs_cel(&self) -> bool {
        self.expression.is_some()
    }

    /// Whether `event` passes. `cel_event` is the event as a CEL value,
    /// built once per event by the caller when any filter needs it.
    pub fn matches(&self, event: &Event, cel_event: Option<&cel::Value>) -> bool {
        let d = &event.draft;
        if !self.types.is_empty() {
            let ty = d.event_type.as_deref().unwrap_or("");
            let path = event_path(event);
            let hit = self
                .types
                .iter()
                .any(|t| t.is_match(ty) || path.is_some_and(|p| t.is_match(p)));
            if !hit {
                return false;
            }
        }
        for (k, g) in &self.metadata {
            match d.metadata.get(k) {
                Some(v) if g.is_match(v) => {}
                _ => return false,
            }
        }
        match (&self.expression, cel_event) {
            (None, _) => true,
            (Some(p), Some(value)) => evaluate(p, value),
            (Some(_), None) => false,
        }
    }
}

/// The WRP event locator path: `dest` without its `event:` scheme.
pub fn event_path(event: &Event) -> Option<&str> {
    event
        .draft
        .wrp
        .as_ref()
        .and_then(|m| m.dest.strip_prefix("event:"))
}

fn evaluate(expression: &Expression, event: &cel::Value) -> bool {
    matches!(
        expression.evaluate("event", event),
        Ok(cel::Value::Bool(true))
    )
}

/// The event as CEL sees it.
pub fn cel_value(event: &Event) -> cel::Value {
    let d = &event.draft;
    let payload: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
    let doc = serde_json::json!({
        "id": event.id.to_string(),
        "type": d.event_type.as_deref().unwrap_or(""),
        "device": d.device.as_ref().map(|x| x.as_str()).unwrap_or(""),
        "source": d.source,
        "content_type": d.content_type,
        "metadata": d.metadata,
        "payload": payload,
        "received_at": d.received_at.to_rfc3339(),
    });
    json_to_cel(&doc)
}

/// JSON as CEL values. Integers become `int` where they fit (so
/// `event.payload.n * 2` works as a user expects), else `uint`; other
/// numbers `double`. Depth is bounded by the ingest nesting limit.
pub(crate) fn json_to_cel(v: &serde_json::Value) -> cel::Value {
    use serde_json::Value as J;
    match v {
        J::Null => cel::Value::Null,
        J::Bool(b) => cel::Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => cel::Value::String(s.clone().into()),
        J::Array(a) => cel::Value::List(a.iter().map(json_to_cel).collect::<Vec<_>>().into()),
        J::Object(o) => {
            let map: std::collections::HashMap<cel::objects::Key, cel::Value> = o
                .iter()
                .map(|(k, v)| (cel::objects::Key::from(k.clone()), json_to_cel(v)))
                .collect();
            cel::Value::Map(cel::objects::Map { map: map.into() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_event;

    fn spec(types: &[&str], expression: Option<&str>) -> FilterSpec {
        FilterSpec {
            types: types.iter().map(|s| s.to_string()).collect(),
            metadata: BTreeMap::new(),
            expression: expression.map(str::to_owned),
        }
    }

    fn with_payload(payload: &str) -> Event {
        let mut e = test_event(7, Some("mac:112233445566"), Some("online"));
        e.draft.data = bytes::Bytes::copy_from_slice(payload.as_bytes());
        e
    }

    #[test]
    fn cel_expression_sees_type_and_payload() {
        let f = spec(
            &[],
            Some(r#"event.type == "online" && event.payload.battery < 20"#),
        )
        .compile()
        .unwrap();
        let low = with_payload(r#"{"battery":12}"#);
        let high = with_payload(r#"{"battery":80}"#);
        assert!(f.matches(&low, Some(&cel_value(&low))));
        assert!(!f.matches(&high, Some(&cel_value(&high))));
        // A missing field is an evaluation error: no match, no panic.
        let none = with_payload(r#"{}"#);
        assert!(!f.matches(&none, Some(&cel_value(&none))));
    }

    #[test]
    fn invalid_expression_names_its_position() {
        let errs = spec(&[], Some("event.type == ")).compile().unwrap_err();
        assert_eq!(errs[0].field, "filter.expression");
        let pos = errs[0].position.expect("a position");
        assert_eq!(pos.line, 1);
        assert!(pos.column > 1, "{pos:?}");
    }

    #[test]
    fn unknown_variables_are_refused() {
        let errs = spec(&[], Some("device == 1")).compile().unwrap_err();
        assert!(errs[0].message.contains("device"), "{errs:?}");
    }

    #[test]
    fn type_patterns_are_globs_or_regexes() {
        let e = test_event(1, Some("mac:112233445566"), Some("device-status"));
        assert!(spec(&["device-*"], None)
            .compile()
            .unwrap()
            .matches(&e, None));
        assert!(spec(&["re:^dev"], None)
            .compile()
            .unwrap()
            .matches(&e, None));
        assert!(!spec(&["online"], None).compile().unwrap().matches(&e, None));
        let errs = spec(&["re:(", "[z-a]"], None).compile().unwrap_err();
        assert_eq!(errs.len(), 2);
    }

    #[test]
    fn metadata_matchers_must_all_pass() {
        let mut e = test_event(1, None, None);
        e.draft.metadata.insert("fw".into(), "1.2.3".into());
        let mut s = spec(&[], None);
        s.metadata.insert("fw".into(), "1.2.*".into());
        assert!(s.compile().unwrap().matches(&e, None));
        s.metadata.insert("region".into(), "*".into());
        assert!(!s.compile().unwrap().matches(&e, None));
    }
}
