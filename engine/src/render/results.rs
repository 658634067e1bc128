//! What a saga's steps returned, as its records say: the `data` of each step that
//! succeeded (a command's `results`, a step's `result`), and which steps timed out on
//! their last attempt (a compensate command's `after_timeout`). Folded from the
//! records, oldest first, so the outbox, Kafka and `GET` agree whatever they read.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::model::definition::Definition;
use crate::model::record::{Action, Kind};
use crate::render::stored::StoredJson;

/// The result of a step that succeeded without data.
const NO_DATA: &str = "{}";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepResults {
    /// By step number: the data of a step that succeeded (`{}` when it sent none), or
    /// `None` for a step whose last attempt timed out.
    steps: BTreeMap<u16, Option<Arc<str>>>,
}

impl StepResults {
    /// Takes in the saga's next record.
    pub fn note(&mut self, kind: &Kind) {
        match kind {
            Kind::StepSucceeded { step, data, .. } => {
                let data = if data.is_empty() { NO_DATA } else { data };
                self.steps.insert(*step, Some(data.into()));
            }
            Kind::StepTimedOut {
                step,
                action: Action::Execute,
                retry_at_ms: None,
                ..
            } => {
                self.steps.insert(*step, None);
            }
            _ => {}
        }
    }

    /// The data step `step` succeeded with, as JSON text.
    pub fn result(&self, step: u16) -> Option<&str> {
        self.steps.get(&step).and_then(|r| r.as_deref())
    }

    /// Whether step `step` timed out on its last attempt (its effect is unknown).
    pub fn timed_out(&self, step: u16) -> bool {
        matches!(self.steps.get(&step), Some(None))
    }

    /// The results by step name (`results` of a command), for `definition`.
    pub fn named(&self, definition: &Definition) -> NamedResults {
        NamedResults(
            self.steps
                .iter()
                .filter_map(|(&step, data)| {
                    let name = &definition.steps.get(usize::from(step))?.name;
                    Some((name.as_str().into(), data.clone()?))
                })
                .collect(),
        )
    }
}

/// `results`: step name to the data it succeeded with, in step order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedResults(pub Vec<(Arc<str>, Arc<str>)>);

impl NamedResults {
    /// The data of the step named `step`.
    pub fn get(&self, step: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| &**name == step)
            .map(|(_, data)| &**data)
    }

    /// Bytes of JSON text they hold.
    pub fn bytes(&self) -> usize {
        self.0.iter().map(|(n, d)| n.len() + d.len()).sum()
    }
}

impl Serialize for NamedResults {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, data) in &self.0 {
            map.serialize_entry(&**name, &StoredJson(data))?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::definition::Registry;

    #[test]
    fn successes_and_last_attempt_timeouts_are_what_later_commands_see() {
        let registry = Registry::with_builtin();
        let order = registry.latest("order").unwrap();
        let mut results = StepResults::default();
        results.note(&Kind::StepSucceeded {
            step: 0,
            attempt: 1,
            event_id: "e".into(),
            data: r#"{"reservation":"r-1"}"#.into(),
            answer: crate::model::record::Status::InProgress,
        });
        // A timeout with attempts left is no result; the last one is.
        results.note(&Kind::StepTimedOut {
            step: 1,
            action: Action::Execute,
            attempt: 1,
            retry_at_ms: Some(5),
        });
        assert!(!results.timed_out(1));
        results.note(&Kind::StepTimedOut {
            step: 1,
            action: Action::Execute,
            attempt: 2,
            retry_at_ms: None,
        });
        assert_eq!(results.result(0), Some(r#"{"reservation":"r-1"}"#));
        assert!(results.timed_out(1) && results.result(1).is_none());
        let named = results.named(order);
        assert_eq!(
            serde_json::to_string(&named).unwrap(),
            r#"{"reserve_inventory":{"reservation":"r-1"}}"#
        );
        results.note(&Kind::StepSucceeded {
            step: 2,
            attempt: 1,
            event_id: "f".into(),
            data: String::new(),
            answer: crate::model::record::Status::Completed,
        });
        assert_eq!(results.named(order).get("ship_order"), Some("{}"));
    }
}
