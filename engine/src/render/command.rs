//! Commands as participants see them (the command item of http/openapi.yaml), rendered from the log's
//! `command_issued` records. The HTTP outbox and the Kafka relay both read the log tail
//! and hand its records here, so a command looks the same whichever way it travels.
//!
//! A command record holds its step number, action and attempt; the rest is the saga's
//! earlier records: its type, definition version, payload and trace id are in its first
//! record, and the `results` (and a compensation's `result` and `after_timeout`) in the
//! step records between. They are read back through each record's [`Link`] — from the
//! batch itself when they are in it, else from the log — and only as far back as the
//! saga's previous command in the same batch, whose reading is kept.

use std::collections::HashMap;
use std::sync::Arc;

use sagalog_storage::{Log, LogRecord};
use serde::{Serialize, Serializer};

use crate::error::{EngineError, Inconsistency, Result};
use crate::history::{decode_at, read_saga_record};
use crate::model::definition::{Definition, Registry};
use crate::model::record::{peek, Action, Entry, Kind, Link, Record, Shape};
use crate::render::filter::CommandFilter;
use crate::render::results::{NamedResults, StepResults};
use crate::render::stored::StoredJson;

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
    /// The data of each step that succeeded before this command, by step name.
    pub results: NamedResults,
    /// For a compensate command, what it undoes.
    pub undo: Option<Undo>,
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

/// What a compensate command undoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undo {
    /// The data of the step it compensates, as JSON text; `None` after a timeout.
    pub result: Option<Arc<str>>,
    /// The step timed out on its last attempt: its effect is unknown, so "nothing to
    /// undo" is a success.
    pub after_timeout: bool,
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
            results: &'a NamedResults,
            #[serde(skip_serializing_if = "Option::is_none")]
            result: Option<Option<StoredJson<'a>>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            after_timeout: Option<bool>,
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
            results: &self.results,
            result: self
                .undo
                .as_ref()
                .map(|u| u.result.as_deref().map(StoredJson)),
            after_timeout: self.undo.as_ref().map(|u| u.after_timeout),
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

/// What a saga's records up to one of its commands say: where it started and what
/// its steps returned.
#[derive(Clone)]
struct SoFar {
    saga_type: String,
    definition_version: u32,
    payload: Arc<str>,
    trace_id: String,
    results: StepResults,
}

impl SoFar {
    /// What a `saga_started` record begins; any other kind back as it was.
    fn start(kind: Kind) -> Result<SoFar, Kind> {
        match kind {
            Kind::SagaStarted {
                saga_type,
                definition_version,
                payload,
                trace_id,
                ..
            } => Ok(SoFar {
                saga_type,
                definition_version,
                payload: payload.into(),
                trace_id,
                results: StepResults::default(),
            }),
            other => Err(other),
        }
    }
}

/// The commands among `records` (consecutive log records, in log order) that `filter`
/// wants: each `command_issued` record, and the command a `dead_letter_replayed` entry
/// names.
pub(crate) fn render(
    log: &Log,
    registry: &parking_lot::RwLock<Registry>,
    records: &[LogRecord],
    filter: &CommandFilter,
) -> Result<Vec<Command>> {
    let mut feed = Feed {
        log,
        registry,
        batch: records,
        filter,
        read: HashMap::new(),
        starts: HashMap::new(),
        commands: Vec::new(),
    };
    for record in records {
        let corrupt = |source| EngineError::Corrupt {
            offset: record.offset,
            source,
        };
        let Some(peeked) = peek(&record.payload).map_err(corrupt)? else {
            if let Entry::DeadLetterReplayed { command_offset, .. } = decode_at(record)? {
                match feed.saga_record(command_offset) {
                    Ok((_, saga)) if !filter.wants_saga(&saga.saga_id) => {}
                    Ok((link, saga)) => feed.push(record.offset, command_offset, link, saga)?,
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
        if peeked.shape != Shape::CommandIssued || !filter.wants_saga(peeked.saga_id) {
            continue;
        }
        let Entry::Saga { link, record: saga } = decode_at(record)? else {
            return Err(Inconsistency::PeekMismatch {
                offset: record.offset,
            }
            .into());
        };
        feed.push(record.offset, record.offset, link, saga)?;
    }
    Ok(feed.commands)
}

/// Commands being rendered from one batch of the log.
struct Feed<'a> {
    log: &'a Log,
    registry: &'a parking_lot::RwLock<Registry>,
    /// The batch (consecutive records): earlier records of a saga found in it are
    /// decoded from here rather than read again.
    batch: &'a [LogRecord],
    filter: &'a CommandFilter,
    /// What each command rendered from this batch found, by its offset: a saga's next
    /// command reads back only to there.
    read: HashMap<u64, SoFar>,
    /// The definition (type, version) each saga started on, by the offset of its start:
    /// what a topic filter looks at before anything else is read.
    starts: HashMap<u64, (String, u32)>,
    commands: Vec<Command>,
}

impl Feed<'_> {
    /// The saga record at `offset`, from the batch when it is there.
    fn saga_record(&self, offset: u64) -> Result<(Link, Record)> {
        let first = self.batch.first().map_or(u64::MAX, |r| r.offset);
        let found = offset
            .checked_sub(first)
            .and_then(|i| self.batch.get(usize::try_from(i).ok()?));
        match found {
            Some(record) => match decode_at(record)? {
                Entry::Saga { link, record } => Ok((link, record)),
                other => Err(Inconsistency::NotASagaRecord {
                    offset,
                    found: other.kind_name().to_string(),
                }
                .into()),
            },
            None => read_saga_record(self.log, offset),
        }
    }

    /// The record of saga `saga_id` at `offset` (found through one of its links): a
    /// record of another saga there is a damaged chain.
    fn record_of(&self, saga_id: &str, offset: u64) -> Result<(Link, Record)> {
        let (link, record) = self.saga_record(offset)?;
        if record.saga_id != saga_id {
            return Err(Inconsistency::ChainCrosses {
                saga_id: saga_id.to_string(),
                offset,
                other: record.saga_id,
            }
            .into());
        }
        Ok((link, record))
    }

    /// What the saga's records before the one at `offset` (with `link`) say, read
    /// backwards to its start or to a command read before in this batch. Each step goes
    /// to a lower offset, so the walk ends (at most `offset` reads, on a damaged log).
    fn so_far(&self, saga_id: &str, offset: u64, link: Link) -> Result<SoFar> {
        let mut later = Vec::new();
        let (mut at, mut link) = (offset, link);
        let mut base = loop {
            let prev = match link {
                Link::Start => {
                    return Err(Inconsistency::NotAStart {
                        offset: at,
                        found: "command_issued",
                    }
                    .into())
                }
                Link::Follows => at.checked_sub(1).ok_or(Inconsistency::FirstFollows)?,
                // A saga's records only link back: anything else is a damaged chain.
                Link::After { prev, .. } if prev < at => prev,
                Link::After { .. } => {
                    return Err(Inconsistency::ChainLoops {
                        saga_id: saga_id.to_string(),
                    }
                    .into())
                }
            };
            if let Some(known) = self.read.get(&prev) {
                break known.clone();
            }
            let (prev_link, record) = self.record_of(saga_id, prev)?;
            if prev_link == Link::Start {
                break SoFar::start(record.kind).map_err(|other| Inconsistency::NotAStart {
                    offset: prev,
                    found: other.name(),
                })?;
            }
            later.push(record.kind);
            (at, link) = (prev, prev_link);
        };
        for kind in later.iter().rev() {
            base.results.note(kind);
        }
        Ok(base)
    }

    /// Renders the command record `saga` at `offset` (with `link`), found at
    /// `feed_offset` in the feed.
    fn push(&mut self, feed_offset: u64, offset: u64, link: Link, saga: Record) -> Result<()> {
        let Kind::CommandIssued {
            step,
            action,
            attempt,
            ..
        } = saga.kind
        else {
            return Err(Inconsistency::PeekMismatch { offset }.into());
        };
        // A removed saga (retention) has nothing to send: its kept commands are moot
        // (the relay's hold keeps every saga it has yet to publish whole).
        let skip = |e: &EngineError| {
            tracing::debug!(saga_id = %saga.saga_id, offset, error = %e, "skipping a removed saga's command");
        };
        if !self.filter.is_all() {
            // Is the step's topic wanted? Only the saga's start is read to know.
            let (saga_type, version) = match self.started_on(&saga.saga_id, offset, link) {
                Ok(started) => started,
                Err(e @ EngineError::Removed { .. }) => {
                    skip(&e);
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let definition = self.definition(&saga.saga_id, &saga_type, version)?;
            let topic = &step_of(&definition, offset, step)?.topic;
            if !self.filter.wants_topic(topic) {
                return Ok(());
            }
        }
        let so_far = match self.so_far(&saga.saga_id, offset, link) {
            Ok(so_far) => so_far,
            Err(e @ EngineError::Removed { .. }) => {
                skip(&e);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let definition =
            self.definition(&saga.saga_id, &so_far.saga_type, so_far.definition_version)?;
        let step_def = step_of(&definition, offset, step)?;
        let undo = (action == Action::Compensate).then(|| Undo {
            result: so_far.results.result(step).map(Arc::from),
            after_timeout: so_far.results.timed_out(step),
        });
        self.commands.push(Command {
            event_id: format!("{}/{}", saga.saga_id, saga.seq),
            saga_id: saga.saga_id,
            saga_type: so_far.saga_type.clone(),
            step: step_def.name.clone(),
            topic: step_def.topic.clone(),
            action,
            attempt,
            payload: so_far.payload.to_string(),
            results: so_far.results.named(&definition),
            undo,
            trace_id: so_far.trace_id.clone(),
            offset,
            feed_offset,
            at_ms: saga.at_ms,
        });
        self.read.insert(offset, so_far);
        Ok(())
    }

    /// The definition a saga started on.
    fn definition(&self, saga_id: &str, saga_type: &str, version: u32) -> Result<Arc<Definition>> {
        self.registry
            .read()
            .get(saga_type, version)
            .cloned()
            .ok_or_else(|| {
                Inconsistency::UnregisteredDefinition {
                    saga_id: saga_id.to_string(),
                    saga_type: saga_type.to_string(),
                    version,
                }
                .into()
            })
    }

    /// The definition (type, version) the saga of the record at `offset` (with `link`)
    /// started on, read from its start (found through the links: records appended
    /// together follow each other, so `Follows` goes back a few records at most).
    fn started_on(&mut self, saga_id: &str, offset: u64, link: Link) -> Result<(String, u32)> {
        let (mut at, mut link) = (offset, link);
        let first = loop {
            match link {
                Link::Start => break at,
                Link::After { first, .. } => break first,
                Link::Follows => {
                    at = at.checked_sub(1).ok_or(Inconsistency::FirstFollows)?;
                    link = self.saga_record(at)?.0;
                }
            }
        };
        if let Some(started) = self.starts.get(&first) {
            return Ok(started.clone());
        }
        let started = match self.record_of(saga_id, first)?.1.kind {
            Kind::SagaStarted {
                saga_type,
                definition_version,
                ..
            } => (saga_type, definition_version),
            other => {
                return Err(Inconsistency::NotAStart {
                    offset: first,
                    found: other.name(),
                }
                .into())
            }
        };
        self.starts.insert(first, started.clone());
        Ok(started)
    }
}

/// Step `step` of `definition`, which the command record at `offset` names.
fn step_of(
    definition: &Definition,
    offset: u64,
    step: u16,
) -> Result<&crate::model::definition::StepDefinition> {
    definition.steps.get(usize::from(step)).ok_or_else(|| {
        Inconsistency::MissingStep {
            offset,
            step,
            saga_type: definition.name.clone(),
            version: definition.version,
            steps: definition.steps.len(),
        }
        .into()
    })
}
