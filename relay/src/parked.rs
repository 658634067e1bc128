//! Commands the relay read while their topic was paused (`POST /internal/v1/pause`):
//! kept in log order, out of the producer, until their topic is resumed. The other
//! topics go on meanwhile. The relay's position stays at the oldest one, so a restart
//! reads them again; and once a topic has a command parked, its later commands are
//! parked behind it, so a resume sends them in log order.
//!
//! Bounded by [`MAX_PARKED`] commands and [`MAX_PARKED_BYTES`]: when full, the relay
//! stops reading the log until a resume makes room (every topic waits then, and
//! `outbox_pending_events_total` shows it).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sagalog_engine::{Command, Delivery};

/// Commands parked at most.
pub const MAX_PARKED: usize = 65_536;
/// Bytes of parked commands (payloads and results, about) at most.
pub const MAX_PARKED_BYTES: usize = 64 << 20;

/// The parked commands by feed offset (so they come out in log order however they were
/// parked: read from the log, or taken back from the producer after a failed attempt),
/// and each topic's offsets, so that a resume takes its own without walking the rest.
#[derive(Default)]
pub struct Parked {
    commands: BTreeMap<u64, Command>,
    by_topic: HashMap<String, BTreeSet<u64>>,
    bytes: usize,
}

/// About how much memory a command holds.
fn approx_bytes(command: &Command) -> usize {
    const FIXED: usize = 256;
    command.payload.len()
        + command
            .results
            .0
            .iter()
            .map(|(name, data)| name.len() + data.len())
            .sum::<usize>()
        + FIXED
}

impl Parked {
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// No room for more: the relay stops reading the log.
    pub fn is_full(&self) -> bool {
        self.commands.len() >= MAX_PARKED || self.bytes >= MAX_PARKED_BYTES
    }

    /// Whether `command` must be parked: its topic is paused, or older commands of its
    /// topic are parked still (it must not overtake them).
    pub fn must_park(&self, command: &Command, delivery: &Delivery) -> bool {
        delivery.is_paused(&command.topic) || self.by_topic.contains_key(&command.topic)
    }

    pub fn push(&mut self, command: Command) {
        let offset = command.feed_offset;
        self.by_topic
            .entry(command.topic.clone())
            .or_default()
            .insert(offset);
        self.bytes += approx_bytes(&command);
        if let Some(replaced) = self.commands.insert(offset, command) {
            // The same feed record parked twice cannot happen; keep the count right.
            self.bytes = self.bytes.saturating_sub(approx_bytes(&replaced));
        }
    }

    /// The feed offset of the oldest parked command.
    pub fn oldest(&self) -> Option<u64> {
        self.commands.keys().next().copied()
    }

    /// Whether a parked command's topic is no longer paused.
    pub fn any_releasable(&self, delivery: &Delivery) -> bool {
        self.by_topic.keys().any(|topic| !delivery.is_paused(topic))
    }

    /// Takes out, oldest first, at most `room` commands whose topic `delivery` no longer
    /// pauses; the others stay. Costs the commands taken (and the topics), not the
    /// commands parked.
    pub fn release(&mut self, delivery: &Delivery, room: usize) -> Vec<Command> {
        if room == 0 {
            return Vec::new();
        }
        // The `room` oldest offsets of each open topic, then the `room` oldest of those.
        let mut offsets: Vec<u64> = self
            .by_topic
            .iter()
            .filter(|(topic, _)| !delivery.is_paused(topic))
            .flat_map(|(_, offsets)| offsets.iter().take(room).copied())
            .collect();
        offsets.sort_unstable();
        offsets.truncate(room);
        let mut released = Vec::with_capacity(offsets.len());
        for offset in offsets {
            let Some(command) = self.commands.remove(&offset) else {
                continue;
            };
            self.bytes = self.bytes.saturating_sub(approx_bytes(&command));
            if let Some(topic) = self.by_topic.get_mut(&command.topic) {
                topic.remove(&offset);
                if topic.is_empty() {
                    self.by_topic.remove(&command.topic);
                }
            }
            released.push(command);
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagalog_engine::command::Command;

    fn command(topic: &str, offset: u64) -> Command {
        Command {
            event_id: format!("s/{offset}"),
            saga_id: format!("s-{offset}"),
            saga_type: "order".into(),
            step: "step".into(),
            topic: topic.into(),
            action: sagalog_engine::Action::Execute,
            attempt: 1,
            payload: "{}".into(),
            results: Default::default(),
            undo: None,
            trace_id: "0".repeat(32),
            offset,
            feed_offset: offset,
            at_ms: 0,
        }
    }

    #[test]
    fn a_resume_releases_its_topic_in_order_and_keeps_the_rest() {
        let mut paused = Delivery::default();
        paused.pause(&["a".to_string(), "b".to_string()]);
        let mut parked = Parked::default();
        for (topic, offset) in [("a", 1), ("b", 2), ("a", 3), ("b", 4)] {
            let c = command(topic, offset);
            assert!(parked.must_park(&c, &paused));
            parked.push(c);
        }
        assert!(!parked.any_releasable(&paused));
        assert!(parked.release(&paused, 10).is_empty());
        paused.resume(&["a".to_string()]);
        // A later command of `b` still parks; one of `c` does not.
        assert!(parked.must_park(&command("b", 5), &paused));
        assert!(!parked.must_park(&command("c", 6), &paused));
        let first: Vec<u64> = parked
            .release(&paused, 1)
            .iter()
            .map(|c| c.offset)
            .collect();
        assert_eq!(first, [1]);
        // `a` has one left, so a new `a` command parks behind it.
        assert!(parked.must_park(&command("a", 7), &paused));
        let rest: Vec<u64> = parked
            .release(&paused, 10)
            .iter()
            .map(|c| c.offset)
            .collect();
        assert_eq!(rest, [3]);
        assert!(!parked.must_park(&command("a", 8), &paused));
        assert_eq!(parked.oldest(), Some(2));
        assert_eq!(parked.len(), 2);
    }

    #[test]
    fn a_command_taken_back_from_the_producer_goes_in_its_place() {
        let mut paused = Delivery::default();
        paused.pause(&["a".to_string()]);
        let mut parked = Parked::default();
        parked.push(command("a", 9));
        // An older command of the topic, whose attempt failed after the pause.
        parked.push(command("a", 4));
        assert_eq!(parked.oldest(), Some(4));
        paused.resume(&[]);
        let order: Vec<u64> = parked
            .release(&paused, 10)
            .iter()
            .map(|c| c.offset)
            .collect();
        assert_eq!(order, [4, 9]);
        assert!(parked.is_empty());
    }
}
