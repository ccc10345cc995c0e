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
//!
//! What a filter keeps is bounded in bytes, not only in count: a pattern is
//! at most [`MAX_PATTERN_LEN`] bytes, a regex compiles to at most
//! [`MAX_REGEX_BYTES`], and a registration's regexes (type and device
//! patterns) to at most [`MAX_COMPILED_BYTES`] in all. A 6-byte pattern
//! such as `\w{10}` compiles to over half a MiB (Unicode `\w` is about
//! 56 KiB per repetition), so a count of patterns alone bounds nothing.

use std::collections::BTreeMap;

use globset::Glob;
use regex_automata::meta::Regex;
use serde::{Deserialize, Serialize};

use super::expression::Expression;
use crate::event::Event;
use crate::hub::filter::{wildcards, MAX_WILDCARDS};
use crate::validation::{FieldError, Position};

/// Most type patterns or metadata matchers.
pub const MAX_PATTERNS: usize = 64;
/// Longest pattern (type glob or regex, metadata glob and key, device
/// pattern), in bytes: a glob compiles to a regex too.
pub const MAX_PATTERN_LEN: usize = 1024;
/// Most bytes one regex may compile to (its NFA; and its one-pass DFA,
/// each bounded alike). Ordinary type and device patterns compile to
/// under 16 KiB; `\w{10}` to over 512 KiB.
pub const MAX_REGEX_BYTES: usize = 256 * 1024;
/// What one regex's lazy DFA may grow to while matching. It lives as long
/// as the regex, so it is counted with it, in full, from the start.
pub const REGEX_CACHE_BYTES: usize = 16 * 1024;
/// Most bytes a registration's patterns (regexes and globs: a glob is a
/// regex too) may compile to, in all (each counts [`BoundedRegex::bytes`]).
pub const MAX_COMPILED_BYTES: usize = 2 * 1024 * 1024;

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
    metadata: Vec<(String, BoundedRegex)>,
    expression: Option<Expression>,
    /// What its regexes keep (see [`BoundedRegex::bytes`]).
    bytes: usize,
}

#[derive(Debug)]
enum TypePattern {
    Glob(BoundedRegex),
    Regex(BoundedRegex),
}

impl TypePattern {
    fn is_match(&self, s: &str) -> bool {
        match self {
            Self::Glob(g) => g.is_match(s),
            Self::Regex(r) => r.is_match(s),
        }
    }
}

/// A regex compiled within [`MAX_REGEX_BYTES`], that knows what it keeps.
#[derive(Debug)]
pub struct BoundedRegex {
    regex: Regex,
    bytes: usize,
}

impl BoundedRegex {
    /// Whether the regex matches anywhere in `s` (unanchored).
    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }

    /// The heap it keeps: the compiled regex as the engine measures it, a
    /// fresh matching cache, and all its lazy DFA may grow to
    /// ([`REGEX_CACHE_BYTES`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Why a regex was refused.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// Longer than [`MAX_PATTERN_LEN`].
    #[error("longer than {MAX_PATTERN_LEN} bytes")]
    TooLong,
    /// Compiles past [`MAX_REGEX_BYTES`].
    #[error("compiles past {MAX_REGEX_BYTES} bytes; simplify it (Unicode classes such as \\w cost about 56 KiB each: [0-9A-Za-z_] costs under 1 KiB)")]
    TooBig,
    /// Not a regex.
    #[error("invalid regex: {0}")]
    Invalid(String),
}

/// Compiles a regex within [`MAX_PATTERN_LEN`] and [`MAX_REGEX_BYTES`],
/// so a hostile pattern cannot eat memory (the meta engine measures what
/// it built, which the `regex` crate does not show).
pub fn bounded_regex(pattern: &str) -> Result<BoundedRegex, PatternError> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(PatternError::TooLong);
    }
    build(pattern, regex_automata::util::syntax::Config::new())
}

/// Compiles a glob as `globset` does (its regex, on bytes, `.` matching
/// newlines), but within [`MAX_REGEX_BYTES`] and [`REGEX_CACHE_BYTES`]:
/// `globset` lets each glob's NFA and lazy DFA grow to 10 MiB.
pub fn bounded_glob(glob: &str) -> Result<BoundedRegex, String> {
    if glob.len() > MAX_PATTERN_LEN {
        return Err(PatternError::TooLong.to_string());
    }
    let regex = Glob::new(glob)
        .map_err(|e| format!("invalid glob: {e}"))?
        .regex()
        .to_owned();
    let syntax = regex_automata::util::syntax::Config::new()
        .utf8(false)
        .dot_matches_new_line(true);
    build(&regex, syntax).map_err(|e| e.to_string())
}

fn build(
    pattern: &str,
    syntax: regex_automata::util::syntax::Config,
) -> Result<BoundedRegex, PatternError> {
    let config = Regex::config()
        .nfa_size_limit(Some(MAX_REGEX_BYTES))
        .onepass_size_limit(Some(MAX_REGEX_BYTES))
        .dfa_size_limit(Some(MAX_REGEX_BYTES))
        .hybrid_cache_capacity(REGEX_CACHE_BYTES);
    let config = config.utf8_empty(syntax.get_utf8());
    let regex = Regex::builder()
        .syntax(syntax)
        .configure(config)
        .build(pattern)
        .map_err(|e| match (e.size_limit(), e.syntax_error()) {
            (Some(_), _) => PatternError::TooBig,
            (None, Some(syntax)) => PatternError::Invalid(syntax.to_string()),
            (None, None) => PatternError::Invalid(e.to_string()),
        })?;
    let bytes = regex.memory_usage() + regex.create_cache().memory_usage() + REGEX_CACHE_BYTES;
    Ok(BoundedRegex { regex, bytes })
}

/// A registration's compiled regex bytes so far, against
/// [`MAX_COMPILED_BYTES`]: once past it, no further regex is compiled
/// (compiling is the costly part, in time as in memory).
#[derive(Debug, Default)]
pub struct CompileBudget {
    spent: usize,
    exceeded: bool,
}

impl CompileBudget {
    /// Compiles `pattern` if the budget is not spent, naming `field` in
    /// the error.
    pub fn regex(&mut self, field: &str, pattern: &str) -> Result<BoundedRegex, FieldError> {
        self.spend(field, || bounded_regex(pattern).map_err(|e| e.to_string()))
    }

    /// Compiles the glob `pattern` (see [`bounded_glob`]) if the budget is
    /// not spent, naming `field` in the error.
    pub fn glob(&mut self, field: &str, pattern: &str) -> Result<BoundedRegex, FieldError> {
        self.spend(field, || bounded_glob(pattern))
    }

    fn spend(
        &mut self,
        field: &str,
        compile: impl FnOnce() -> Result<BoundedRegex, String>,
    ) -> Result<BoundedRegex, FieldError> {
        if self.exceeded {
            return Err(FieldError::new(field, over_budget()));
        }
        let r = compile().map_err(|e| FieldError::new(field, e))?;
        self.spent += r.bytes();
        if self.spent > MAX_COMPILED_BYTES {
            self.exceeded = true;
            return Err(FieldError::new(field, over_budget()));
        }
        Ok(r)
    }

    /// Bytes compiled so far.
    pub fn spent(&self) -> usize {
        self.spent
    }
}

fn over_budget() -> String {
    format!("the registration's patterns compile past {MAX_COMPILED_BYTES} bytes of compiled patterns per registration")
}

impl FilterSpec {
    /// Compiles every part, collecting every error with its field (and,
    /// for the expression, its line and column).
    pub fn compile(&self) -> Result<CompiledFilter, Vec<FieldError>> {
        self.compile_within(&mut CompileBudget::default())
    }

    /// [`FilterSpec::compile`], its regexes counted in `budget` (shared
    /// with the registration's device patterns).
    pub fn compile_within(
        &self,
        budget: &mut CompileBudget,
    ) -> Result<CompiledFilter, Vec<FieldError>> {
        let spent_before = budget.spent();
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
                Some(re) => match budget.regex(&field, re) {
                    Ok(r) => Ok(TypePattern::Regex(r)),
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                },
                None if p.len() > MAX_PATTERN_LEN => {
                    Err(format!("longer than {MAX_PATTERN_LEN} bytes"))
                }
                None if p.is_empty() => Err("must not be empty".to_owned()),
                None if wildcards(p) > MAX_WILDCARDS => Err(format!(
                    "at most {MAX_WILDCARDS} wildcards per pattern (*, ?, [..], each {{..}} alternative)"
                )),
                None => match budget.glob(&field, p) {
                    Ok(g) => Ok(TypePattern::Glob(g)),
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                },
            };
            match compiled {
                Ok(t) => types.push(t),
                Err(m) => errors.push(FieldError::new(field, m)),
            }
        }
        let mut metadata = Vec::new();
        for (k, v) in &self.metadata {
            if k.len() > MAX_PATTERN_LEN || v.len() > MAX_PATTERN_LEN {
                errors.push(FieldError::new(
                    "filter.metadata",
                    format!("keys and globs up to {MAX_PATTERN_LEN} bytes"),
                ));
                continue;
            }
            if wildcards(v) > MAX_WILDCARDS {
                errors.push(FieldError::new(
                    format!("filter.metadata.{k}"),
                    format!("at most {MAX_WILDCARDS} wildcards per pattern"),
                ));
                continue;
            }
            match budget.glob(&format!("filter.metadata.{k}"), v) {
                Ok(g) => metadata.push((k.clone(), g)),
                Err(e) => errors.push(e),
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
                bytes: budget.spent() - spent_before,
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
            types: vec![TypePattern::Regex(
                bounded_regex(r"[^\s\S]").expect("a valid regex"),
            )],
            metadata: Vec::new(),
            expression: None,
            bytes: 0,
        }
    }

    /// What its regexes keep, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
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
    fn a_regex_counts_what_it_compiled_to_and_a_registration_is_bounded_in_all() {
        let glob = bounded_glob("device-status/*/online").unwrap();
        assert!(glob.is_match("device-status/mac:1/online"));
        assert!(
            glob.is_match("device-status/a\nb/online"),
            "* crosses lines, as in globset"
        );
        assert!(!glob.is_match("device-status/mac:1/offline"));
        assert!(glob.bytes() < 32 * 1024, "{}", glob.bytes());
        let small = bounded_regex("^device-status/.*/online$").unwrap();
        assert!(small.bytes() < 32 * 1024, "{}", small.bytes());
        let wide = bounded_regex(r"\w{3}").unwrap();
        assert!(wide.bytes() > 128 * 1024, "{}", wide.bytes());
        assert!(matches!(
            bounded_regex(r"\w{10}"),
            Err(PatternError::TooBig)
        ));
        assert!(matches!(bounded_regex("("), Err(PatternError::Invalid(_))));
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        assert!(matches!(bounded_regex(&long), Err(PatternError::TooLong)));
        let mut budget = CompileBudget::default();
        let refused = (0..64)
            .map(|i| budget.regex("f", &format!(r"\w{{3}}{i}")))
            .position(|r| r.is_err())
            .expect("the budget ends");
        assert!(refused * wide.bytes() <= MAX_COMPILED_BYTES, "{refused}");
        assert!(budget.spent() > MAX_COMPILED_BYTES);
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
