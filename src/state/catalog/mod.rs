//! Event type definitions (the Dispatch seed's event gateway): a type by
//! name with an optional JSON Schema for its payload and one for its
//! metadata. Ingest checks events of a defined type against them; types
//! without a definition pass, unless strict mode is on.
//!
//! Schemas are compiled once, when defined. Remote `$ref`s are not
//! fetched (the validator is built without network or file resolvers), so
//! a schema cannot make the gateway reach anywhere. [`bounds`] refuses
//! schemas that recurse without consuming input, and bounds each
//! validation's work before it runs. A stored definition that breaks these
//! rules loads disabled: it is listed with its reason, and events of its
//! type are refused until it is replaced.

pub mod bounds;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::EventDraft;
use crate::state::documents::Documents;
use crate::state::store::{Collection, Store, StoreError};
use crate::sync::{read, write};
use crate::validation::FieldError;

/// Longest type name.
pub const MAX_NAME_LEN: usize = 256;

/// A definition as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventType {
    /// The type name events carry.
    pub name: String,
    /// What the type means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema for the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// JSON Schema for the metadata object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_schema: Option<Value>,
    /// First defined.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Bumped on every change.
    pub version: u64,
    /// Why it was loaded disabled. Never stored.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<String>,
}

/// The body of `POST`/`PUT /api/event-types`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTypeRequest {
    /// The name (`POST` only; `PUT` takes it from the path).
    #[serde(default)]
    pub name: Option<String>,
    /// What the type means.
    #[serde(default)]
    pub description: Option<String>,
    /// JSON Schema for the payload.
    #[serde(default)]
    pub schema: Option<Value>,
    /// JSON Schema for the metadata object.
    #[serde(default)]
    pub metadata_schema: Option<Value>,
}

/// One way an event broke its type's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON Pointer into the payload (`/battery`) or metadata (`metadata/fw`).
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

/// Why an event was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    /// Strict mode and no definition.
    #[error("event type {0:?} is not defined (strict mode)")]
    Undefined(String),
    /// The payload or metadata broke the schema.
    #[error("the event does not match the schema of type {0:?}")]
    Schema(String, Vec<Violation>),
    /// Validating would take more steps than allowed.
    #[error("validating this event against the schema of type {0:?} would take more than {max} steps", max = bounds::MAX_VISITS)]
    TooCostly(String),
    /// The stored definition breaks a limit and is disabled.
    #[error("event type {0:?} is disabled ({1}); replace its definition")]
    Disabled(String, String),
}

/// Why a definition operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The definition is invalid (422).
    #[error("the event type definition is invalid")]
    Invalid(Vec<FieldError>),
    /// No such type (404).
    #[error("no event type {0:?}")]
    NotFound(String),
    /// `POST` of a name that exists (409).
    #[error("event type {0:?} already exists; PUT replaces it")]
    Exists(String),
    /// The store failed (503).
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
struct Compiled {
    def: EventType,
    payload: Option<Schema>,
    metadata: Option<Schema>,
}

/// A compiled schema and the bound on its work.
#[derive(Debug)]
struct Schema {
    validator: jsonschema::Validator,
    bounds: bounds::SchemaBounds,
}

impl Compiled {
    /// A definition that failed its checks: shown, never used.
    fn disabled(mut def: EventType, errors: &[FieldError]) -> Self {
        def.disabled = Some(crate::validation::describe(errors));
        Self {
            def,
            payload: None,
            metadata: None,
        }
    }
}

/// Largest compiled `pattern` regex, and its lazy DFA cache, in bytes.
const PATTERN_BYTES: usize = 1024 * 1024;

/// A validator for an operator's schema. `pattern` and
/// `patternProperties` use the `regex` crate (linear time in the input,
/// whatever the pattern: no backtracking, so no catastrophic one), with
/// its compiled size and DFA cache bounded. A pattern that needs
/// backtracking (a lookaround, a backreference) is refused as invalid.
pub fn validator(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .with_pattern_options(
            jsonschema::PatternOptions::regex()
                .size_limit(PATTERN_BYTES)
                .dfa_size_limit(PATTERN_BYTES),
        )
        .build(schema)
        .map_err(|e| e.to_string())
}

/// Every stored definition, compiled (or disabled, with the reason).
fn load_types(docs: &Documents) -> Result<HashMap<String, Arc<Compiled>>, StoreError> {
    let mut types = HashMap::new();
    for stored in docs.load::<EventType>()? {
        let def = stored.value;
        let compiled = compile(def.clone()).unwrap_or_else(|errors| {
            let c = Compiled::disabled(def, &errors);
            docs.loaded_disabled(&stored.key, c.def.disabled.as_deref().unwrap_or(""));
            c
        });
        types.insert(stored.key, Arc::new(compiled));
    }
    Ok(types)
}

/// The defined event types.
#[derive(Debug)]
pub struct Catalog {
    docs: Documents,
    strict: bool,
    types: RwLock<HashMap<String, Arc<Compiled>>>,
}

impl Catalog {
    /// Loads stored definitions.
    pub fn open(
        store: Arc<Store>,
        strict: bool,
        disabled: &crate::state::store::StoredDisabled,
    ) -> Result<Self, StoreError> {
        let docs = Documents::new(store, Collection::EventTypes, disabled);
        let types = load_types(&docs)?;
        Ok(Self {
            docs,
            strict,
            types: RwLock::new(types),
        })
    }

    /// Re-reads every definition from the store (cluster mode: another
    /// node changed one) and swaps them in.
    pub fn reload(&self) -> Result<(), StoreError> {
        let _w = self.docs.lock();
        self.reload_locked()
    }

    /// [`Catalog::reload`], for a caller that holds `writes`.
    fn reload_locked(&self) -> Result<(), StoreError> {
        let types = load_types(&self.docs)?;
        *write(&self.types) = types;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Compiled>>> {
        read(&self.types)
    }

    /// Defines or replaces `name`. `create_only` refuses an existing name.
    /// Returns the definition and whether it is new.
    pub fn put(
        &self,
        name: &str,
        req: EventTypeRequest,
        create_only: bool,
    ) -> Result<(EventType, bool), CatalogError> {
        check_name(name).map_err(|m| CatalogError::Invalid(vec![FieldError::new("name", m)]))?;
        let now = Utc::now();
        // Compiled before any lock: ingest reads the types while this runs.
        let mut compiled = compile(EventType {
            name: name.into(),
            description: req.description,
            schema: req.schema,
            metadata_schema: req.metadata_schema,
            created_at: now,
            updated_at: now,
            version: 1,
            disabled: None,
        })
        .map_err(CatalogError::Invalid)?;
        // Changes are serialised, so the create-only check holds; the type
        // map itself is locked only for the swap, never across the write.
        let _w = self.docs.lock();
        let previous = self.read().get(name).map(|c| c.def.clone());
        if create_only && previous.is_some() {
            return Err(CatalogError::Exists(name.into()));
        }
        if let Some(p) = &previous {
            compiled.def.created_at = p.created_at;
            compiled.def.version = p.version + 1;
        }
        let def = compiled.def.clone();
        let doc = serde_json::to_vec(&def).expect("definitions serialise");
        if create_only {
            // Another node may have made it since this one last heard: the
            // store decides, and this node catches up on losing.
            if !self.docs.put_new(name, &doc)? {
                if let Err(e) = self.reload_locked() {
                    tracing::warn!(error = %e, "event types not reloaded after a lost create");
                }
                return Err(CatalogError::Exists(name.into()));
            }
        } else {
            self.docs.put(name, &doc)?;
        }
        write(&self.types).insert(name.into(), Arc::new(compiled));
        Ok((def, previous.is_none()))
    }

    /// One definition.
    pub fn get(&self, name: &str) -> Option<EventType> {
        self.read().get(name).map(|c| c.def.clone())
    }

    /// Every definition, by name.
    pub fn list(&self) -> Vec<EventType> {
        let mut all: Vec<EventType> = self.read().values().map(|c| c.def.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Removes a definition.
    pub fn delete(&self, name: &str) -> Result<(), CatalogError> {
        let _w = self.docs.lock();
        if !self.read().contains_key(name) {
            return Err(CatalogError::NotFound(name.into()));
        }
        self.docs.delete(&[name])?;
        write(&self.types).remove(name);
        Ok(())
    }

    /// Checks an event against its type's definition.
    pub fn check(&self, draft: &EventDraft) -> Result<(), Rejection> {
        let name = draft.event_type.as_deref().unwrap_or("");
        let compiled = self.read().get(name).cloned();
        let Some(c) = compiled else {
            return if self.strict {
                Err(Rejection::Undefined(name.into()))
            } else {
                Ok(())
            };
        };
        if let Some(reason) = &c.def.disabled {
            return Err(Rejection::Disabled(name.into(), reason.clone()));
        }
        let mut violations = Vec::new();
        if let Some(s) = &c.payload {
            // Ingest refuses payloads that are not representable JSON, so
            // this parse succeeds for every JSON payload; a WRP payload
            // that is not JSON is checked as what it is: not JSON (null).
            let payload: Value = serde_json::from_slice(&draft.data).unwrap_or(Value::Null);
            s.collect(name, &payload, "", &mut violations)?;
        }
        if let Some(s) = &c.metadata {
            let meta = serde_json::to_value(&draft.metadata).unwrap_or_default();
            s.collect(name, &meta, "metadata", &mut violations)?;
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Rejection::Schema(name.into(), violations))
        }
    }
}

impl Schema {
    /// Validates within the bound; violations (at most 32) go to `out`.
    fn collect(
        &self,
        name: &str,
        instance: &Value,
        prefix: &str,
        out: &mut Vec<Violation>,
    ) -> Result<(), Rejection> {
        if self.bounds.cost(instance).is_err() {
            return Err(Rejection::TooCostly(name.into()));
        }
        if self.validator.is_valid(instance) {
            return Ok(());
        }
        for e in self.validator.iter_errors(instance).take(32) {
            out.push(Violation {
                path: format!("{prefix}{}", e.instance_path()),
                message: e.to_string(),
            });
        }
        Ok(())
    }
}

fn compile(def: EventType) -> Result<Compiled, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut build = |field: &str, schema: &Option<Value>| {
        let schema = schema.as_ref()?;
        let bounds = match bounds::SchemaBounds::analyse(schema) {
            Ok(b) => b,
            Err(e) => {
                errors.push(FieldError::new(field, e.to_string()));
                return None;
            }
        };
        match validator(schema) {
            Ok(validator) => Some(Schema { validator, bounds }),
            Err(e) => {
                errors.push(FieldError::new(
                    field,
                    format!("not a valid JSON Schema: {e}"),
                ));
                None
            }
        }
    };
    let payload = build("schema", &def.schema);
    let metadata = build("metadata_schema", &def.metadata_schema);
    if errors.is_empty() {
        Ok(Compiled {
            def,
            payload,
            metadata,
        })
    } else {
        Err(errors)
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1 to {MAX_NAME_LEN} characters of letters, digits, `.`, `_`, `:` and `-`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::store::StoreKind;
    use serde_json::json;

    fn catalog(strict: bool) -> Catalog {
        let store = Arc::new(Store::open(StoreKind::Memory, std::path::Path::new("")).unwrap());
        Catalog::open(store, strict, &Default::default()).unwrap()
    }

    fn draft(ty: &str, payload: &str) -> EventDraft {
        let mut e = crate::event::test_event(1, None, Some(ty)).draft;
        e.data = bytes::Bytes::copy_from_slice(payload.as_bytes());
        e
    }

    fn req(schema: Value) -> EventTypeRequest {
        EventTypeRequest {
            name: None,
            description: None,
            schema: Some(schema),
            metadata_schema: None,
        }
    }

    #[test]
    fn schema_mismatch_lists_failing_paths() {
        let c = catalog(false);
        let schema = json!({"type":"object","required":["battery"],
            "properties":{"battery":{"type":"integer","minimum":0,"maximum":100}}});
        c.put("online", req(schema), true).unwrap();
        assert!(c.check(&draft("online", r#"{"battery":50}"#)).is_ok());
        let Err(Rejection::Schema(_, v)) = c.check(&draft("online", r#"{"battery":500}"#)) else {
            panic!("expected a schema rejection");
        };
        assert_eq!(v[0].path, "/battery");
        assert!(
            c.check(&draft("other", "{}")).is_ok(),
            "undefined types pass"
        );
    }

    #[test]
    fn strict_mode_refuses_undefined_types() {
        let c = catalog(true);
        assert_eq!(
            c.check(&draft("x", "1")),
            Err(Rejection::Undefined("x".into()))
        );
    }

    #[test]
    fn invalid_schemas_and_names_are_refused() {
        let c = catalog(false);
        assert!(matches!(
            c.put("t", req(json!({"type": 12})), false),
            Err(CatalogError::Invalid(_))
        ));
        assert!(matches!(
            c.put("bad name", req(json!({})), false),
            Err(CatalogError::Invalid(_))
        ));
        c.put("t", req(json!({})), true).unwrap();
        assert!(matches!(
            c.put("t", req(json!({})), true),
            Err(CatalogError::Exists(_))
        ));
    }
}
