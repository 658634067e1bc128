//! Which topics' commands are held back: the emergency stop of command delivery. A pause
//! (of some topics, or of all) and a resume are records in the log, so the state is the
//! fold of those records, and it survives a restart (snapshots keep it too).
//!
//! While a topic is paused its commands stay in the log: the relay and the HTTP outbox
//! hand none of them out, and the timeouts of steps waiting on them do not fire. On a
//! resume each such step gets its whole timeout again from the resume, since its command
//! may only now reach its participant.

use std::collections::BTreeSet;

use bincode::{Decode, Encode};

use crate::model::state::{SagaState, Wait};

/// Topics one pause or resume may name at most.
pub const MAX_TOPICS_PER_CHANGE: usize = 64;

/// The paused topics: `all` with the topics resumed since (`topics` are exceptions), or
/// only `topics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct Delivery {
    pub all: bool,
    /// Paused topics when not `all`; the topics resumed since, when `all`.
    pub topics: BTreeSet<String>,
}

impl Delivery {
    /// Whether commands to `topic` are held back.
    pub fn is_paused(&self, topic: &str) -> bool {
        self.all != self.topics.contains(topic)
    }

    /// Whether nothing is paused.
    pub fn is_open(&self) -> bool {
        !self.all && self.topics.is_empty()
    }

    /// Pauses `topics`, or every topic when empty.
    pub fn pause(&mut self, topics: &[String]) {
        if topics.is_empty() {
            *self = Delivery {
                all: true,
                topics: BTreeSet::new(),
            };
            return;
        }
        for topic in topics {
            if self.all {
                self.topics.remove(topic);
            } else {
                self.topics.insert(topic.clone());
            }
        }
    }

    /// Resumes `topics`, or every topic when empty.
    pub fn resume(&mut self, topics: &[String]) {
        if topics.is_empty() {
            *self = Delivery::default();
            return;
        }
        for topic in topics {
            if self.all {
                self.topics.insert(topic.clone());
            } else {
                self.topics.remove(topic);
            }
        }
    }

    /// What is paused, in words (for `/readyz` and the log).
    pub fn describe(&self) -> String {
        let list =
            |topics: &BTreeSet<String>| topics.iter().cloned().collect::<Vec<_>>().join(", ");
        match (self.all, self.topics.is_empty()) {
            (false, true) => "nothing is paused".into(),
            (false, false) => format!("command delivery is paused for {}", list(&self.topics)),
            (true, true) => "command delivery is paused for every topic".into(),
            (true, false) => format!(
                "command delivery is paused for every topic but {}",
                list(&self.topics)
            ),
        }
    }
}

/// The topic of the command `state` waits on for a reply, if it waits on one.
pub fn awaited_topic(state: &SagaState) -> Option<&str> {
    let pending = state.pending?;
    matches!(pending.wait, Wait::Reply { .. })
        .then(|| state.definition.steps.get(usize::from(pending.step)))
        .flatten()
        .map(|step| step.topic.as_str())
}

/// Whether `state` waits on a reply to a command `delivery` holds back (its timeout
/// must not fire).
pub fn is_held(state: &SagaState, delivery: &Delivery) -> bool {
    awaited_topic(state).is_some_and(|topic| delivery.is_paused(topic))
}

/// A resume at `at_ms` took `before` to `after`: a saga waiting on a command to a topic
/// it resumed gets the step's whole timeout from `at_ms` (never less than it had). The
/// due time before and after, when it moves.
pub fn extension(
    state: &SagaState,
    before: &Delivery,
    after: &Delivery,
    at_ms: u64,
) -> Option<(u64, u64)> {
    let topic = awaited_topic(state)?;
    if !before.is_paused(topic) || after.is_paused(topic) {
        return None;
    }
    let pending = state.pending?;
    let Wait::Reply { deadline_ms } = pending.wait else {
        return None;
    };
    // Both actions of a step share its timeout (as the decider issues them).
    let step = state.definition.steps.get(usize::from(pending.step))?;
    let extended = at_ms.saturating_add(step.timeout_ms);
    (extended > deadline_ms).then_some((deadline_ms, extended))
}

/// Applies [`extension`] to `state`; the live resume and replay both use this, so they
/// agree.
pub fn extend_after_resume(
    state: &mut SagaState,
    before: &Delivery,
    after: &Delivery,
    at_ms: u64,
) -> Option<(u64, u64)> {
    let (old, new) = extension(state, before, after, at_ms)?;
    if let Some(pending) = state.pending.as_mut() {
        pending.wait = Wait::Reply { deadline_ms: new };
    }
    Some((old, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pause_and_resume_some_topics_and_all() {
        let mut d = Delivery::default();
        assert!(d.is_open() && !d.is_paused("a"));
        d.pause(&topics(&["a", "b"]));
        assert!(d.is_paused("a") && d.is_paused("b") && !d.is_paused("c"));
        d.resume(&topics(&["a"]));
        assert!(!d.is_paused("a") && d.is_paused("b"));
        // Everything, then back topic by topic.
        d.pause(&[]);
        assert!(d.is_paused("a") && d.is_paused("c"));
        d.resume(&topics(&["a"]));
        assert!(!d.is_paused("a") && d.is_paused("b") && d.is_paused("c"));
        assert_eq!(
            d.describe(),
            "command delivery is paused for every topic but a"
        );
        d.pause(&topics(&["a"]));
        assert!(d.is_paused("a"));
        d.resume(&[]);
        assert!(d.is_open());
        assert_eq!(d, Delivery::default());
    }
}
