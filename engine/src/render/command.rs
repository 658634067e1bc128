//! Commands as participants see them (the command item of http/openapi.yaml), rendered from the log's
//! `command_issued` records. The HTTP outbox and the Kafka relay both read the log tail
//! and hand its records here, so a command looks the same whichever way it travels.
//!
//! A command record holds its step number, action and attempt; the saga's type, its
//! definition version, payload and trace id live in the saga's first record, found
//! through the record's [`Link`] (in the same batch when the saga started there, else
//! one read of the log per saga per batch).

use std::collections::HashMap;
use std::sync::Arc;

use sagalog_storage::{Log, LogRecord};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::error::{EngineError, Inconsistency, Result};
use crate::history::{decode_at, predecessors, read_saga_record};
use crate::model::definition::Registry;
use crate::model::record::{peek, Action, Entry, Kind, Link, Record, Shape};

/// One issued command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// `{saga_id}/{seq}`: unique, and the same every time the record is read, so a
    /// participant (or Kafka consumer) can drop a duplicate delivery.
    pub event_id: String,
    pub saga_id: String,
    pub saga_type: String,
    pub step: String,
    /// The step's Kafka topic.
    pub topic: String,
    pub action: Action,
    pub attempt: u32,
    /// The saga's start payload, as JSON text.
    pub payload: String,
    /// The saga's W3C trace id (32 hex digits).
    pub trace_id: String,
    /// The log offset of the `command_issued` record.
    pub offset: u64,
    /// Where the command is in the feed: `offset`, or for a dead letter published
    /// again, the offset of the `dead_letter_replayed` entry.
    pub feed_offset: u64,
    /// When the command was issued (unix ms).
    pub at_ms: u64,
}

/// A JSON text the engine stored (a payload), written out as it is: a string when it
/// is not JSON, null when empty.
pub struct StoredJson<'a>(pub &'a str);

impl Serialize for StoredJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        if self.0.is_empty() {
            return serializer.serialize_none();
        }
        match serde_json::from_str::<&RawValue>(self.0) {
            Ok(raw) => raw.serialize(serializer),
            Err(_) => serializer.serialize_str(self.0),
        }
    }
}

/// The command item of http/openapi.yaml: the outbox's items, and the Kafka value the relay
/// publishes.
impl Serialize for Command {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Item<'a> {
            event_id: &'a str,
            saga_id: &'a str,
            saga_type: &'a str,
            step: &'a str,
            action: &'static str,
            attempt: u32,
            payload: StoredJson<'a>,
            offset: u64,
            topic: &'a str,
            trace_id: &'a str,
        }
        Item {
            event_id: &self.event_id,
            saga_id: &self.saga_id,
            saga_type: &self.saga_type,
            step: &self.step,
            action: self.action.as_str(),
            attempt: self.attempt,
            payload: StoredJson(&self.payload),
            offset: self.offset,
            topic: &self.topic,
            trace_id: &self.trace_id,
        }
        .serialize(serializer)
    }
}

impl Command {
    /// The command item as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a command serializes")
    }
}

/// What a saga's first record says about it.
#[derive(Clone)]
struct Origin {
    saga_type: String,
    definition_version: u32,
    payload: Arc<str>,
    trace_id: String,
}

impl Origin {
    /// The origin a `saga_started` record gives; any other kind back as it was.
    fn of(kind: Kind) -> Result<Origin, Kind> {
        match kind {
            Kind::SagaStarted {
                saga_type,
                definition_version,
                payload,
                trace_id,
                ..
            } => Ok(Origin {
                saga_type,
                definition_version,
                payload: payload.into(),
                trace_id,
            }),
            other => Err(other),
        }
    }
}

/// The commands among `records` (consecutive log records, in log order): each
/// `command_issued` record, and the command a `dead_letter_replayed` entry names.
pub(crate) fn render(
    log: &Log,
    registry: &parking_lot::RwLock<Registry>,
    records: &[LogRecord],
) -> Result<Vec<Command>> {
    let mut feed = Feed {
        log,
        registry,
        origins: HashMap::new(),
        commands: Vec::new(),
    };
    // First offset of the previous saga record, to resolve `Follows` links in the batch.
    let mut previous: Option<(u64, u64)> = None;
    for record in records {
        let corrupt = |source| EngineError::Corrupt {
            offset: record.offset,
            source,
        };
        let Some(peeked) = peek(&record.payload).map_err(corrupt)? else {
            previous = None;
            if let Entry::DeadLetterReplayed { command_offset, .. } = decode_at(record)? {
                let found = read_saga_record(log, command_offset).and_then(|(link, saga)| {
                    Ok((predecessors(log, command_offset, link)?.1, saga))
                });
                match found {
                    Ok((first, saga)) => feed.push(record.offset, command_offset, first, saga)?,
                    // Replay checks the saga is kept, and retention keeps what later
                    // records refer to; should it be gone anyway, there is nothing to send.
                    Err(e @ EngineError::Removed { .. }) => tracing::error!(
                        replay_offset = record.offset, command_offset, error = %e,
                        "a replayed dead letter's command was removed; skipping it"
                    ),
                    Err(e) => return Err(e),
                }
            }
            continue;
        };
        let link = peeked.link;
        let first = match (link, previous) {
            (Link::Start, _) => record.offset,
            (Link::After { first, .. }, _) => first,
            (Link::Follows, Some((prev, first))) if prev + 1 == record.offset => first,
            (Link::Follows, _) => match predecessors(log, record.offset, link) {
                Ok((_, first)) => first,
                // Its earlier records were removed by retention, so was its start:
                // `push` skips its commands.
                Err(EngineError::Removed { offset, .. }) => offset,
                Err(e) => return Err(e),
            },
        };
        previous = Some((record.offset, first));
        if peeked.shape == Shape::Other {
            continue;
        }
        let Entry::Saga { record: saga, .. } = decode_at(record)? else {
            return Err(Inconsistency::PeekMismatch {
                offset: record.offset,
            }
            .into());
        };
        feed.push(record.offset, record.offset, first, saga)?;
    }
    Ok(feed.commands)
}

/// Commands being rendered, with the origins of the sagas seen so far.
struct Feed<'a> {
    log: &'a Log,
    registry: &'a parking_lot::RwLock<Registry>,
    origins: HashMap<u64, Origin>,
    commands: Vec<Command>,
}

impl Feed<'_> {
    /// Takes in the saga record `saga` at `offset` (whose saga starts at `first`),
    /// found at `feed_offset` in the feed: a start is remembered, a command rendered.
    fn push(&mut self, feed_offset: u64, offset: u64, first: u64, saga: Record) -> Result<()> {
        let (step, action, attempt) = match Origin::of(saga.kind) {
            Ok(origin) => {
                self.origins.insert(first, origin);
                return Ok(());
            }
            Err(Kind::CommandIssued {
                step,
                action,
                attempt,
                ..
            }) => (step, action, attempt),
            Err(_) => return Ok(()),
        };
        let origin = match self.origins.get(&first) {
            Some(origin) => origin.clone(),
            None => match origin_at(self.log, first) {
                Ok(origin) => {
                    self.origins.insert(first, origin.clone());
                    origin
                }
                // A finished saga retention removed: its kept commands are moot (the
                // relay's hold keeps every saga it has yet to publish whole).
                Err(e @ EngineError::Removed { .. }) => {
                    tracing::debug!(saga_id = %saga.saga_id, offset, error = %e, "skipping a removed saga's command");
                    return Ok(());
                }
                Err(e) => return Err(e),
            },
        };
        let definition = self
            .registry
            .read()
            .get(&origin.saga_type, origin.definition_version)
            .cloned()
            .ok_or_else(|| Inconsistency::UnregisteredDefinition {
                saga_id: saga.saga_id.to_string(),
                saga_type: origin.saga_type.to_string(),
                version: origin.definition_version,
            })?;
        let step_def =
            definition
                .steps
                .get(usize::from(step))
                .ok_or_else(|| Inconsistency::MissingStep {
                    offset,
                    step,
                    saga_type: origin.saga_type.to_string(),
                    version: origin.definition_version,
                    steps: definition.steps.len(),
                })?;
        self.commands.push(Command {
            event_id: format!("{}/{}", saga.saga_id, saga.seq),
            saga_id: saga.saga_id,
            saga_type: origin.saga_type,
            step: step_def.name.clone(),
            topic: step_def.topic.clone(),
            action,
            attempt,
            payload: origin.payload.to_string(),
            trace_id: origin.trace_id,
            offset,
            feed_offset,
            at_ms: saga.at_ms,
        });
        Ok(())
    }
}

fn origin_at(log: &Log, first: u64) -> Result<Origin> {
    Origin::of(read_saga_record(log, first)?.1.kind).map_err(|other| {
        Inconsistency::NotAStart {
            offset: first,
            found: other.name(),
        }
        .into()
    })
}
