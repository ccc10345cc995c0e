//! What a JSON Schema can cost, found before the validator ever runs.
//!
//! A schema is a graph: each subschema applies others either to the same
//! instance (`allOf`, `anyOf`, `oneOf`, `not`, `if`/`then`/`else`,
//! `dependentSchemas`, `$ref`, `$dynamicRef`, `$recursiveRef`) or to a
//! part of it (`properties`, `items`, …). A cycle made only of the first
//! kind recurses without consuming input, and the validator then allocates
//! until the process dies (`{"allOf":[{"$ref":"#"}]}`). So:
//!
//! - [`SchemaBounds::analyse`] refuses such a cycle at definition, naming
//!   it (`# → #/allOf/0 → #`), and refuses references it cannot resolve
//!   inside the document (nothing is ever fetched).
//! - [`SchemaBounds::cost`] walks the (subschema, instance part) pairs the
//!   validator would visit, over-approximating, and stops at a cap. An
//!   event whose walk passes the cap is refused before validation, so
//!   validation time and memory are bounded whatever the schema (also a
//!   schema whose `$ref`s share subschemas so that paths multiply).

use std::collections::HashMap;

use serde_json::Value;
use url::Url;

/// Most (subschema, value) visits one validation may make.
pub const MAX_VISITS: u64 = 100_000;

/// The base URI of a schema without `$id`.
const DEFAULT_BASE: &str = "https://schema.ratatoskr.invalid/root.json";

/// Why a schema was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    /// References that recurse without consuming input.
    #[error("the schema can recurse without consuming input: {0}")]
    Cycle(String),
    /// A reference to something outside the document.
    #[error(
        "{keyword} {reference:?} at {at} cannot be resolved inside the schema (nothing is fetched)"
    )]
    Unresolved {
        /// `$ref`, `$dynamicRef` or `$recursiveRef`.
        keyword: &'static str,
        /// The reference as written.
        reference: String,
        /// JSON Pointer of the subschema holding it.
        at: String,
    },
    /// Even an empty event would pass the visit cap.
    #[error("validating any event would take more than {MAX_VISITS} steps")]
    TooCostly,
}

/// Validation would pass [`MAX_VISITS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("validation would take more than {MAX_VISITS} steps")]
pub struct OverBudget;

/// One subschema and where it sends the validator.
#[derive(Debug, Default)]
struct Node {
    pointer: String,
    /// Applied to the same value.
    in_place: Vec<usize>,
    /// `properties`: applied to one member.
    properties: Vec<(String, usize)>,
    /// Applied to every member value.
    each_value: Vec<usize>,
    /// `propertyNames`: applied to every key.
    each_key: Vec<usize>,
    /// Applied to every element.
    each_item: Vec<usize>,
    /// Applied to the element at its position.
    positional: Vec<usize>,
}

/// A reference still to resolve, once every subschema is indexed.
struct Pending {
    from: usize,
    keyword: &'static str,
    reference: String,
    base: Url,
}

/// The analysed shape of one schema.
#[derive(Debug)]
pub struct SchemaBounds {
    nodes: Vec<Node>,
}

#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    by_pointer: HashMap<String, usize>,
    /// Absolute resource URI (no fragment) → its node.
    resources: HashMap<String, usize>,
    /// (resource URI, anchor) → nodes with that `$anchor`/`$dynamicAnchor`.
    anchors: HashMap<(String, String), Vec<usize>>,
    /// `$dynamicAnchor` name → nodes, for `$dynamicRef`.
    dynamic: HashMap<String, Vec<usize>>,
    /// Nodes with `$recursiveAnchor: true`.
    recursive: Vec<usize>,
    pending: Vec<Pending>,
}

impl SchemaBounds {
    /// Indexes `schema`, resolves its references and refuses cycles that
    /// consume no input.
    pub fn analyse(schema: &Value) -> Result<Self, BoundsError> {
        let mut b = Builder::default();
        let base = Url::parse(DEFAULT_BASE).expect("a valid base");
        b.node(schema, String::new(), &base);
        b.resolve()?;
        let bounds = Self { nodes: b.nodes };
        bounds.check_cycles()?;
        if bounds.cost(&Value::Null).is_err() {
            return Err(BoundsError::TooCostly);
        }
        Ok(bounds)
    }

    /// Visits validating `instance` would make, or [`OverBudget`] past
    /// [`MAX_VISITS`].
    pub fn cost(&self, instance: &Value) -> Result<u64, OverBudget> {
        static NULL: Value = Value::Null;
        let mut visits = 0u64;
        let mut stack: Vec<(usize, &Value)> = vec![(0, instance)];
        while let Some((n, v)) = stack.pop() {
            visits += 1;
            if visits > MAX_VISITS {
                return Err(OverBudget);
            }
            let node = &self.nodes[n];
            stack.extend(node.in_place.iter().map(|&t| (t, v)));
            match v {
                Value::Object(members) => {
                    for (k, value) in members {
                        for (name, t) in &node.properties {
                            if name == k {
                                stack.push((*t, value));
                            }
                        }
                        stack.extend(node.each_value.iter().map(|&t| (t, value)));
                        stack.extend(node.each_key.iter().map(|&t| (t, &NULL)));
                    }
                }
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        stack.extend(node.each_item.iter().map(|&t| (t, item)));
                        if let Some(&t) = node.positional.get(i) {
                            stack.push((t, item));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(visits)
    }

    /// Depth-first over in-place edges; a back edge is a cycle.
    fn check_cycles(&self) -> Result<(), BoundsError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        let mut mark = vec![Mark::New; self.nodes.len()];
        for start in 0..self.nodes.len() {
            if mark[start] != Mark::New {
                continue;
            }
            // (node, next edge to follow)
            let mut path: Vec<(usize, usize)> = vec![(start, 0)];
            mark[start] = Mark::Open;
            while let Some(&mut (n, ref mut next)) = path.last_mut() {
                match self.nodes[n].in_place.get(*next) {
                    Some(&t) => {
                        *next += 1;
                        match mark[t] {
                            Mark::New => {
                                mark[t] = Mark::Open;
                                path.push((t, 0));
                            }
                            Mark::Open => {
                                let from = path.iter().position(|(p, _)| *p == t).unwrap_or(0);
                                let mut names: Vec<String> =
                                    path[from..].iter().map(|(p, _)| self.name(*p)).collect();
                                names.push(self.name(t));
                                return Err(BoundsError::Cycle(names.join(" → ")));
                            }
                            Mark::Done => {}
                        }
                    }
                    None => {
                        mark[n] = Mark::Done;
                        path.pop();
                    }
                }
            }
        }
        Ok(())
    }

    fn name(&self, n: usize) -> String {
        format!("#{}", self.nodes[n].pointer)
    }
}

/// The keywords whose value is one subschema applied in place.
const IN_PLACE_ONE: &[&str] = &["not", "if", "then", "else"];
/// … an array of subschemas applied in place.
const IN_PLACE_MANY: &[&str] = &["allOf", "anyOf", "oneOf"];
/// … an object of subschemas applied in place.
const IN_PLACE_MAP: &[&str] = &["dependentSchemas", "dependencies"];
/// … one subschema applied to every member value.
const EACH_VALUE: &[&str] = &["additionalProperties", "unevaluatedProperties"];
/// … one subschema applied to every element.
const EACH_ITEM: &[&str] = &["additionalItems", "unevaluatedItems", "contains"];
/// … containers of subschemas that apply nothing by themselves.
const DEFINITIONS: &[&str] = &["$defs", "definitions"];

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl Builder {
    /// Indexes `schema` (at `pointer`) and every subschema under it.
    fn node(&mut self, schema: &Value, pointer: String, base: &Url) -> usize {
        let n = self.nodes.len();
        self.nodes.push(Node {
            pointer: pointer.clone(),
            ..Node::default()
        });
        self.by_pointer.insert(pointer.clone(), n);
        let Value::Object(obj) = schema else {
            return n; // `true`, `false`, or not a schema at all
        };
        let mut base = base.clone();
        if let Some(id) = obj.get("$id").and_then(Value::as_str) {
            if let Ok(u) = base.join(id) {
                base = u;
            }
        }
        let mut resource = base.clone();
        resource.set_fragment(None);
        if n == 0 || obj.contains_key("$id") {
            self.resources.entry(resource.to_string()).or_insert(n);
        }
        for (kw, dynamic) in [("$anchor", false), ("$dynamicAnchor", true)] {
            if let Some(a) = obj.get(kw).and_then(Value::as_str) {
                self.anchors
                    .entry((resource.to_string(), a.to_owned()))
                    .or_default()
                    .push(n);
                if dynamic {
                    self.dynamic.entry(a.to_owned()).or_default().push(n);
                }
            }
        }
        if obj.get("$recursiveAnchor") == Some(&Value::Bool(true)) {
            self.recursive.push(n);
        }
        for keyword in ["$ref", "$dynamicRef", "$recursiveRef"] {
            if let Some(r) = obj.get(keyword).and_then(Value::as_str) {
                self.pending.push(Pending {
                    from: n,
                    keyword,
                    reference: r.to_owned(),
                    base: base.clone(),
                });
            }
        }
        let child = |b: &mut Self, v: &Value, path: &[&str]| {
            let mut p = pointer.clone();
            for seg in path {
                p.push('/');
                p.push_str(&escape(seg));
            }
            b.node(v, p, &base)
        };
        for (kw, v) in obj {
            let kw = kw.as_str();
            if IN_PLACE_ONE.contains(&kw) {
                let t = child(self, v, &[kw]);
                self.nodes[n].in_place.push(t);
            } else if IN_PLACE_MANY.contains(&kw) {
                for (i, s) in v.as_array().into_iter().flatten().enumerate() {
                    let t = child(self, s, &[kw, &i.to_string()]);
                    self.nodes[n].in_place.push(t);
                }
            } else if IN_PLACE_MAP.contains(&kw) {
                for (k, s) in v.as_object().into_iter().flatten() {
                    // draft 7 `dependencies` may also hold arrays of names.
                    if s.is_object() || s.is_boolean() {
                        let t = child(self, s, &[kw, k]);
                        self.nodes[n].in_place.push(t);
                    }
                }
            } else if kw == "properties" {
                for (k, s) in v.as_object().into_iter().flatten() {
                    let t = child(self, s, &[kw, k]);
                    self.nodes[n].properties.push((k.clone(), t));
                }
            } else if kw == "patternProperties" {
                for (k, s) in v.as_object().into_iter().flatten() {
                    let t = child(self, s, &[kw, k]);
                    self.nodes[n].each_value.push(t);
                }
            } else if EACH_VALUE.contains(&kw) {
                let t = child(self, v, &[kw]);
                self.nodes[n].each_value.push(t);
            } else if kw == "propertyNames" {
                let t = child(self, v, &[kw]);
                self.nodes[n].each_key.push(t);
            } else if kw == "items" && v.is_array() || kw == "prefixItems" {
                for (i, s) in v.as_array().into_iter().flatten().enumerate() {
                    let t = child(self, s, &[kw, &i.to_string()]);
                    self.nodes[n].positional.push(t);
                }
            } else if kw == "items" || EACH_ITEM.contains(&kw) {
                let t = child(self, v, &[kw]);
                self.nodes[n].each_item.push(t);
            } else if DEFINITIONS.contains(&kw) {
                for (k, s) in v.as_object().into_iter().flatten() {
                    child(self, s, &[kw, k]);
                }
            }
        }
        n
    }

    /// Turns every pending reference into in-place edges.
    fn resolve(&mut self) -> Result<(), BoundsError> {
        for p in std::mem::take(&mut self.pending) {
            let unresolved = || BoundsError::Unresolved {
                keyword: p.keyword,
                reference: p.reference.clone(),
                at: format!("#{}", self.nodes[p.from].pointer),
            };
            let mut targets = match self.target(&p.reference, &p.base) {
                Some(t) => t,
                None => return Err(unresolved()),
            };
            match p.keyword {
                "$dynamicRef" => {
                    if let Some(name) = p.reference.rsplit('#').next() {
                        targets.extend(self.dynamic.get(name).into_iter().flatten());
                    }
                }
                "$recursiveRef" => targets.extend(self.recursive.iter().copied()),
                _ => {}
            }
            self.nodes[p.from].in_place.extend(targets);
        }
        Ok(())
    }

    fn target(&self, reference: &str, base: &Url) -> Option<Vec<usize>> {
        let url = base.join(reference).ok()?;
        let fragment = url.fragment().unwrap_or("").to_owned();
        let mut resource = url.clone();
        resource.set_fragment(None);
        let doc = *self.resources.get(resource.as_str())?;
        if fragment.is_empty() {
            return Some(vec![doc]);
        }
        if fragment.starts_with('/') {
            let decoded = percent_decode(&fragment);
            let pointer = format!("{}{}", self.nodes[doc].pointer, decoded);
            return self.by_pointer.get(&pointer).map(|&t| vec![t]);
        }
        self.anchors.get(&(resource.to_string(), fragment)).cloned()
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cycle(schema: Value) -> String {
        match SchemaBounds::analyse(&schema) {
            Err(BoundsError::Cycle(c)) => c,
            other => panic!("{schema}: {other:?}"),
        }
    }

    #[test]
    fn cycles_without_input_are_refused_and_named() {
        assert_eq!(
            cycle(json!({"allOf": [{"$ref": "#"}]})),
            "# → #/allOf/0 → #"
        );
        let c = cycle(json!({"$ref": "#/$defs/a", "$defs": {
            "a": {"$ref": "#/$defs/b"}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}}}));
        assert!(c.contains("#/$defs/a") && c.contains("#/$defs/b"), "{c}");
        cycle(json!({"$dynamicAnchor": "n", "oneOf": [{"$dynamicRef": "#n"}]}));
        cycle(json!({"$defs": {"x": {"$anchor": "x", "not": {"$ref": "#x"}}}, "$ref": "#x"}));
        cycle(json!({"$id": "https://e.example/s", "if": {"$ref": "https://e.example/s"}}));
        cycle(json!({"$recursiveAnchor": true, "allOf": [{"$recursiveRef": "#"}]}));
    }

    #[test]
    fn recursion_that_consumes_input_is_fine() {
        let tree = json!({"type": "object", "properties": {
            "children": {"type": "array", "items": {"$ref": "#"}}}});
        let b = SchemaBounds::analyse(&tree).unwrap();
        let v = json!({"children": [{"children": []}, {"children": [{}]}]});
        assert!(b.cost(&v).unwrap() < 20);
        SchemaBounds::analyse(&json!({"$defs": {"p": {"type": "integer"}, "q/r~": {}},
            "properties": {"a": {"$ref": "#/$defs/p"}, "b": {"$ref": "#/$defs/q~1r~0"}}}))
        .unwrap();
        // A pointer to itself through an escaped key is still a cycle.
        cycle(json!({"properties": {"b~/": {"$ref": "#/properties/b~0~1"}}}));
    }

    #[test]
    fn outside_references_are_refused() {
        let e = SchemaBounds::analyse(&json!({"$ref": "https://example.com/s.json"})).unwrap_err();
        assert!(matches!(e, BoundsError::Unresolved { .. }), "{e}");
        let e = SchemaBounds::analyse(&json!({"$ref": "#/$defs/missing"})).unwrap_err();
        assert!(e.to_string().contains("#/$defs/missing"), "{e}");
    }

    #[test]
    fn multiplying_paths_are_bounded() {
        // Each level doubles: 2^40 paths for any value.
        let mut defs = serde_json::Map::new();
        for i in 0..40 {
            let next = format!("#/$defs/d{}", i + 1);
            defs.insert(
                format!("d{i}"),
                json!({"allOf": [{"$ref": next}, {"$ref": next}]}),
            );
        }
        defs.insert("d40".into(), json!({"type": "integer"}));
        let s = json!({"$ref": "#/$defs/d0", "$defs": defs});
        assert_eq!(
            SchemaBounds::analyse(&s).unwrap_err(),
            BoundsError::TooCostly
        );
        // Doubling per level of input: fine for an empty value, bounded
        // for a deep one.
        let s = json!({"items": {"anyOf": [{"$ref": "#"}, {"$ref": "#"}]}});
        let b = SchemaBounds::analyse(&s).unwrap();
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!([deep]);
        }
        assert!(b.cost(&deep).is_err());
    }
}
