//! Saga definitions (docs/engine.md): the steps of a saga type, validated on load, and the
//! registry that keeps every version side by side so a running saga always finds the
//! version it started with.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Most steps one definition may have.
pub const MAX_STEPS: usize = 64;
/// Most attempts a step may allow (per action, per operator retry).
pub const MAX_ATTEMPTS: u32 = 100;
/// Longest step timeout: one week.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;
/// Longest base backoff: one hour (the doubling is capped at `MAX_BACKOFF_MS`).
pub const MAX_BASE_BACKOFF_MS: u64 = 3600 * 1000;

/// The example definition a server offers when it is given no definitions of its own
/// (`EngineConfig::builtin_definitions`); one that sagas ran on stays known.
pub const BUILTIN_ORDER_JSON: &str = r#"{
  "name": "order",
  "version": 1,
  "steps": [
    {"name": "reserve_inventory", "topic": "inventory.commands", "compensable": true,
     "timeout_ms": 30000, "max_attempts": 3, "backoff_ms": 200},
    {"name": "charge_payment", "topic": "payment.commands", "compensable": true,
     "timeout_ms": 30000, "max_attempts": 3, "backoff_ms": 200},
    {"name": "ship_order", "topic": "shipping.commands", "compensable": false,
     "timeout_ms": 60000, "max_attempts": 5, "backoff_ms": 500}
  ]
}"#;

/// The built-in `order` definition.
pub fn builtin_order() -> Definition {
    Definition::from_json(BUILTIN_ORDER_JSON).expect("the built-in is valid")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub name: String,
    pub version: u32,
    pub steps: Vec<StepDefinition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    pub name: String,
    /// The Kafka topic this step's commands are published to.
    pub topic: String,
    /// Whether a completed run of this step is undone when a later step fails.
    pub compensable: bool,
    pub timeout_ms: u64,
    pub max_attempts: u32,
    pub backoff_ms: u64,
}

/// Why a definition was refused, naming the field (as a JSON path) and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid definition: {field}: {message}")]
pub struct DefinitionError {
    pub field: String,
    pub message: String,
    /// Each field is well formed but they conflict (two steps with one name): a rule
    /// no schema of a single field can state.
    pub conflict: bool,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        field: field.into(),
        message: message.into(),
        conflict: false,
    }
}

/// `[a-z0-9_.-]{1,64}`: definition and step names.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// A legal Kafka topic name: `[A-Za-z0-9._-]{1,249}`, not `.` or `..`.
pub fn is_valid_topic(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Definition {
    /// Parses and validates a JSON definition.
    pub fn from_json(json: &str) -> Result<Definition, DefinitionError> {
        let definition: Definition =
            serde_json::from_str(json).map_err(|e| invalid("(document)", e.to_string()))?;
        definition.validate()?;
        Ok(definition)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a definition always serializes")
    }

    pub fn validate(&self) -> Result<(), DefinitionError> {
        if !is_valid_name(&self.name) {
            return Err(invalid(
                "name",
                format!("{:?} must match [a-z0-9_.-]{{1,64}}", self.name),
            ));
        }
        if self.version == 0 {
            return Err(invalid("version", "must be at least 1"));
        }
        if self.steps.is_empty() {
            return Err(invalid("steps", "a saga needs at least one step"));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(invalid(
                "steps",
                format!("{} steps; at most {MAX_STEPS}", self.steps.len()),
            ));
        }
        for (i, step) in self.steps.iter().enumerate() {
            let field = |f: &str| format!("steps[{i}].{f}");
            if !is_valid_name(&step.name) {
                return Err(invalid(
                    field("name"),
                    format!("{:?} must match [a-z0-9_.-]{{1,64}}", step.name),
                ));
            }
            if self.steps[..i].iter().any(|s| s.name == step.name) {
                return Err(DefinitionError {
                    conflict: true,
                    ..invalid(
                        field("name"),
                        format!(
                            "{:?} is used by an earlier step; step names are unique",
                            step.name
                        ),
                    )
                });
            }
            if !is_valid_topic(&step.topic) {
                return Err(invalid(
                    field("topic"),
                    format!(
                        "{:?} is not a valid Kafka topic ([A-Za-z0-9._-]{{1,249}})",
                        step.topic
                    ),
                ));
            }
            if !(1..=MAX_TIMEOUT_MS).contains(&step.timeout_ms) {
                return Err(invalid(
                    field("timeout_ms"),
                    format!("{} is not in 1..={MAX_TIMEOUT_MS}", step.timeout_ms),
                ));
            }
            if !(1..=MAX_ATTEMPTS).contains(&step.max_attempts) {
                return Err(invalid(
                    field("max_attempts"),
                    format!("{} is not in 1..={MAX_ATTEMPTS}", step.max_attempts),
                ));
            }
            if !(1..=MAX_BASE_BACKOFF_MS).contains(&step.backoff_ms) {
                return Err(invalid(
                    field("backoff_ms"),
                    format!("{} is not in 1..={MAX_BASE_BACKOFF_MS}", step.backoff_ms),
                ));
            }
        }
        Ok(())
    }

    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }
}

/// What registering a definition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A version this registry did not have.
    New,
    /// The same name, version and content were already there: nothing changed.
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Invalid(#[from] DefinitionError),
    #[error(
        "definition {name} version {version} is already registered with different content; \
         register the change as a new version (running sagas keep theirs)"
    )]
    VersionConflict { name: String, version: u32 },
    #[error(
        "definition {name} version {version} is the built-in example, which sagas in this \
         data directory ran on, and yours differs; give yours another version \
         (the sagas keep the example's)"
    )]
    BuiltinConflict { name: String, version: u32 },
}

/// Every registered version of every definition. Versions are never replaced: a saga
/// runs to its end on the version it started with.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    by_name: HashMap<String, BTreeMap<u32, Arc<Definition>>>,
}

impl Registry {
    /// A registry holding the built-in `order` definition.
    pub fn with_builtin() -> Registry {
        let mut registry = Registry::default();
        registry
            .register(builtin_order())
            .expect("an empty registry");
        registry
    }

    /// Registers a definition the log or a snapshot holds. One that differs from the
    /// built-in `order` at the built-in's version was registered while the built-in was
    /// not offered: it takes the built-in's place.
    pub fn restore(&mut self, definition: Definition) -> Result<Registered, RegistryError> {
        match self.register(definition.clone()) {
            Err(RegistryError::BuiltinConflict { .. }) => {
                self.retire_builtin();
                self.register(definition)
            }
            other => other,
        }
    }

    /// Takes the built-in `order` definition out (a server given definitions of its own
    /// does not offer it); whether it was there.
    pub fn retire_builtin(&mut self) -> bool {
        let builtin = builtin_order();
        let Some(versions) = self.by_name.get_mut(&builtin.name) else {
            return false;
        };
        if versions
            .get(&builtin.version)
            .is_none_or(|d| **d != builtin)
        {
            return false;
        }
        versions.remove(&builtin.version);
        if versions.is_empty() {
            self.by_name.remove(&builtin.name);
        }
        true
    }

    pub fn register(&mut self, definition: Definition) -> Result<Registered, RegistryError> {
        definition.validate()?;
        let versions = self.by_name.entry(definition.name.clone()).or_default();
        match versions.get(&definition.version) {
            Some(existing) if **existing == definition => Ok(Registered::Unchanged),
            Some(existing) if **existing == builtin_order() => {
                Err(RegistryError::BuiltinConflict {
                    name: definition.name,
                    version: definition.version,
                })
            }
            Some(_) => Err(RegistryError::VersionConflict {
                name: definition.name,
                version: definition.version,
            }),
            None => {
                versions.insert(definition.version, Arc::new(definition));
                Ok(Registered::New)
            }
        }
    }

    pub fn get(&self, name: &str, version: u32) -> Option<&Arc<Definition>> {
        self.by_name.get(name)?.get(&version)
    }

    /// The newest version of `name`: what a new saga of that type starts on.
    pub fn latest(&self, name: &str) -> Option<&Arc<Definition>> {
        self.by_name.get(name)?.values().next_back()
    }

    /// How many versions are registered, all names together.
    pub fn len(&self) -> usize {
        self.by_name.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Every version of every definition, by name then version.
    pub fn all(&self) -> Vec<Arc<Definition>> {
        let mut names: Vec<_> = self.by_name.keys().collect();
        names.sort();
        names
            .into_iter()
            .flat_map(|name| self.by_name[name].values().cloned())
            .collect()
    }

    /// The topic of every step of every registered definition version.
    pub fn step_topics(&self) -> std::collections::BTreeSet<String> {
        self.by_name
            .values()
            .flat_map(|versions| versions.values())
            .flat_map(|d| d.steps.iter().map(|s| s.topic.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Definition {
        Definition::from_json(BUILTIN_ORDER_JSON).unwrap()
    }

    #[test]
    fn builtin_order_definition_is_valid_with_three_steps() {
        let order = order();
        assert_eq!(order.name, "order");
        let names: Vec<_> = order.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["reserve_inventory", "charge_payment", "ship_order"]);
    }

    #[test]
    fn each_invalid_field_is_named() {
        type Breakage = fn(&mut Definition);
        let cases: Vec<(Breakage, &str)> = vec![
            (|d| d.name = "Order!".into(), "name"),
            (|d| d.name = String::new(), "name"),
            (|d| d.version = 0, "version"),
            (|d| d.steps.clear(), "steps"),
            (
                |d| d.steps[1].name = "reserve_inventory".into(),
                "steps[1].name",
            ),
            (|d| d.steps[0].name = "Bad Name".into(), "steps[0].name"),
            (|d| d.steps[2].topic = "bad topic".into(), "steps[2].topic"),
            (|d| d.steps[0].timeout_ms = 0, "steps[0].timeout_ms"),
            (|d| d.steps[1].max_attempts = 0, "steps[1].max_attempts"),
            (
                |d| d.steps[1].max_attempts = MAX_ATTEMPTS + 1,
                "steps[1].max_attempts",
            ),
            (|d| d.steps[2].backoff_ms = 0, "steps[2].backoff_ms"),
        ];
        for (break_it, field) in cases {
            let mut definition = order();
            break_it(&mut definition);
            let err = definition.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn unknown_and_missing_json_fields_are_refused() {
        let unknown = BUILTIN_ORDER_JSON.replace(
            "\"compensable\": false",
            "\"compensable\": false, \"retries\": 3",
        );
        let err = Definition::from_json(&unknown).unwrap_err();
        assert!(err.message.contains("retries"), "{err}");
        let missing = BUILTIN_ORDER_JSON.replace("\"version\": 1,", "");
        let err = Definition::from_json(&missing).unwrap_err();
        assert!(err.message.contains("version"), "{err}");
    }

    #[test]
    fn versions_live_side_by_side_and_a_changed_version_is_refused() {
        let mut registry = Registry::with_builtin();
        assert_eq!(registry.register(order()).unwrap(), Registered::Unchanged);
        let mut v2 = order();
        v2.version = 2;
        v2.steps.pop();
        assert_eq!(registry.register(v2.clone()).unwrap(), Registered::New);
        assert_eq!(registry.latest("order").unwrap().version, 2);
        assert_eq!(registry.get("order", 1).unwrap().steps.len(), 3);
        assert_eq!(registry.get("order", 2).unwrap().steps.len(), 2);
        v2.steps[0].timeout_ms += 1;
        assert_eq!(
            registry.register(v2).unwrap_err(),
            RegistryError::VersionConflict {
                name: "order".into(),
                version: 2
            }
        );
        assert_eq!(registry.all().len(), 2);
    }

    #[test]
    fn the_builtin_retires_and_says_so_when_a_users_own_collides_with_it() {
        let mut users = order();
        users.steps.pop();
        let mut registry = Registry::with_builtin();
        assert_eq!(
            registry.register(users.clone()).unwrap_err(),
            RegistryError::BuiltinConflict {
                name: "order".into(),
                version: 1
            }
        );
        assert!(registry.retire_builtin());
        assert!(registry.is_empty() && !registry.retire_builtin());
        assert_eq!(registry.register(users.clone()).unwrap(), Registered::New);
        // A user's own order v1 is never retired.
        assert!(!registry.retire_builtin());
        assert_eq!(registry.get("order", 1).map(|d| &**d), Some(&users));
        // Read back from a log (replay starts with the built-in), it takes its place.
        let mut replayed = Registry::with_builtin();
        assert_eq!(replayed.restore(users.clone()).unwrap(), Registered::New);
        assert_eq!(replayed.get("order", 1).map(|d| &**d), Some(&users));
        assert_eq!(replayed.len(), 1);
    }
}
