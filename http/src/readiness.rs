//! What `/readyz` reports besides the engine's own state: the problems and notes other
//! parts of the server (the relay, the topic watcher) set and clear.

use std::sync::Arc;

/// Why parts of the server are not ready, by part; shared with whoever reports.
#[derive(Clone, Default)]
pub struct Readiness(Arc<parking_lot::RwLock<ReadinessParts>>);

#[derive(Debug, Default)]
struct ReadinessParts {
    /// What keeps the server from being ready, by part.
    problems: std::collections::BTreeMap<&'static str, String>,
    /// What a ready server says about itself (waiting for a broker, delivery paused),
    /// by part: shown on `/readyz`, never failing it.
    notes: std::collections::BTreeMap<&'static str, String>,
}

impl Readiness {
    /// Sets (`Some`) or clears (`None`) the problem of `part`.
    pub fn set(&self, part: &'static str, problem: Option<String>) {
        set_part(&mut self.0.write().problems, part, problem);
    }

    /// Sets (`Some`) or clears (`None`) the note of `part`.
    pub fn note(&self, part: &'static str, note: Option<String>) {
        set_part(&mut self.0.write().notes, part, note);
    }

    /// Every problem, as `part: problem`.
    pub fn problems(&self) -> Vec<String> {
        self.0
            .read()
            .problems
            .iter()
            .map(|(part, problem)| format!("{part}: {problem}"))
            .collect()
    }

    /// Every note, by part.
    pub fn notes(&self) -> std::collections::BTreeMap<&'static str, String> {
        self.0.read().notes.clone()
    }
}

fn set_part(
    parts: &mut std::collections::BTreeMap<&'static str, String>,
    part: &'static str,
    value: Option<String>,
) {
    match value {
        Some(value) => parts.insert(part, value),
        None => parts.remove(part),
    };
}
