//! The records sagalog writes to its log: one per saga transition (docs/engine.md), plus the
//! registration of a definition. A saga's state is a pure fold of its records.
//!
//! Encoding: one format version byte, then bincode (standard configuration). Enum
//! variants are encoded by position, so a kind added *at the end* of [`Kind`] or
//! [`Entry`] leaves every older log readable; reordering or removing a variant, or
//! changing a variant's fields, needs a new format version and a reader for the old one.
//! `tests/fixture_log.rs` holds the product to this with a log written by an early
//! build.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// The format version byte in front of every encoded entry.
pub const FORMAT_VERSION: u8 = 1;

/// Saga statuses (docs/engine.md).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Started,
    InProgress,
    Completed,
    Failed,
    Compensated,
    CompensationFailed,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Started,
        Status::InProgress,
        Status::Completed,
        Status::Failed,
        Status::Compensated,
        Status::CompensationFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Started => "STARTED",
            Status::InProgress => "IN_PROGRESS",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Compensated => "COMPENSATED",
            Status::CompensationFailed => "COMPENSATION_FAILED",
        }
    }

    /// `COMPLETED` and `COMPENSATED`: nothing more happens to the saga.
    /// (`COMPENSATION_FAILED` waits for an operator and counts as active.)
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Compensated)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Status, String> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = Status::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown status {s:?}; one of {}", all.join(", "))
            })
    }
}

/// What a command asks a participant to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Execute,
    Compensate,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Execute => "execute",
            Action::Compensate => "compensate",
        }
    }
}

/// One saga transition.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Record {
    pub saga_id: String,
    /// 1 for the saga's first record, then dense.
    pub seq: u32,
    /// When the transition was decided, in unix milliseconds.
    pub at_ms: u64,
    pub kind: Kind,
}

/// Every kind of saga transition. Step numbers index the definition's steps. New kinds
/// go at the end (see the module comment).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Kind {
    SagaStarted {
        saga_type: String,
        definition_version: u32,
        /// The start request's payload, as JSON text.
        payload: String,
        trace_id: String,
        /// Identifies the start request's body, so a repeated start can be told apart
        /// from a different one with the same `saga_id`.
        request_hash: u64,
    },
    CommandIssued {
        step: u16,
        action: Action,
        attempt: u32,
        /// When the attempt times out without a reply.
        deadline_ms: u64,
    },
    StepSucceeded {
        step: u16,
        attempt: u32,
        event_id: String,
        /// The reply's data, as JSON text (empty when none).
        data: String,
        /// The saga's status once this reply was decided: what a repeated reply with
        /// the same `event_id` is answered.
        answer: Status,
    },
    /// An execute or compensate attempt failed (the participant said so).
    StepFailed {
        step: u16,
        action: Action,
        attempt: u32,
        event_id: String,
        reason: String,
        /// When the next attempt is issued; `None` when the attempts are spent.
        retry_at_ms: Option<u64>,
        answer: Status,
    },
    /// An attempt got no reply by its deadline: it counts as failed.
    StepTimedOut {
        step: u16,
        action: Action,
        attempt: u32,
        retry_at_ms: Option<u64>,
    },
    StepCompensated {
        step: u16,
        attempt: u32,
        event_id: String,
        data: String,
        answer: Status,
    },
    /// A compensation spent its attempts: an operator must act.
    CompensationFailed {
        step: u16,
        reason: String,
    },
    SagaCompleted,
    /// A step failed for good; compensation of the completed steps begins.
    SagaFailed {
        step: u16,
        reason: String,
    },
    SagaCompensated,
    StatusOverridden {
        from: Status,
        to: Status,
        reason: String,
    },
    /// An operator asked to re-issue the pending command with a fresh attempt budget.
    RetryRequested {
        step: u16,
        action: Action,
    },
}

impl Kind {
    /// The snake_case name used in history output and `sagalog inspect`.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::SagaStarted { .. } => "saga_started",
            Kind::CommandIssued { .. } => "command_issued",
            Kind::StepSucceeded { .. } => "step_succeeded",
            Kind::StepFailed { .. } => "step_failed",
            Kind::StepTimedOut { .. } => "step_timed_out",
            Kind::StepCompensated { .. } => "step_compensated",
            Kind::CompensationFailed { .. } => "compensation_failed",
            Kind::SagaCompleted => "saga_completed",
            Kind::SagaFailed { .. } => "saga_failed",
            Kind::SagaCompensated => "saga_compensated",
            Kind::StatusOverridden { .. } => "status_overridden",
            Kind::RetryRequested { .. } => "retry_requested",
        }
    }

    /// The reply this record records, as its `event_id` and the status it was answered.
    pub fn reply(&self) -> Option<(&str, Status)> {
        match self {
            Kind::StepSucceeded {
                event_id, answer, ..
            }
            | Kind::StepFailed {
                event_id, answer, ..
            }
            | Kind::StepCompensated {
                event_id, answer, ..
            } => Some((event_id, *answer)),
            _ => None,
        }
    }
}

/// Where a saga record's predecessors are, so a saga's history can be read backwards
/// from its latest record without an index of every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum Link {
    /// The saga's first record (`saga_started`).
    Start,
    /// The saga's previous record is the log record just before this one (they were
    /// appended together); so is its first, if that one is.
    Follows,
    /// The saga's previous record is at offset `prev` and its first at `first`.
    After { prev: u64, first: u64 },
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Entry {
    Saga {
        link: Link,
        record: Record,
    },
    /// A definition registered at run time, as its JSON, so it survives a restart.
    DefinitionRegistered {
        json: String,
    },
    /// The relay could not publish the command at `command_offset` (a saga's
    /// `command_issued` record) and set it aside.
    DeadLettered {
        saga_id: String,
        command_offset: u64,
        reason: String,
    },
    /// An operator asked to publish a dead-lettered command again: the command feed
    /// (outbox, relay) carries the command at `command_offset` once more here.
    DeadLetterReplayed {
        dead_letter_offset: u64,
        command_offset: u64,
    },
    /// An operator paused the delivery of commands to `topics` (every topic when
    /// empty): the relay and the outbox hold them in the log (see `model::delivery`).
    DeliveryPaused {
        topics: Vec<String>,
        reason: String,
        at_ms: u64,
    },
    /// An operator resumed delivery to `topics` (every topic when empty).
    DeliveryResumed {
        topics: Vec<String>,
        at_ms: u64,
    },
}

impl Entry {
    /// The snake_case name of the entry (a saga record's is its kind's).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Entry::Saga { record, .. } => record.kind.name(),
            Entry::DefinitionRegistered { .. } => "definition_registered",
            Entry::DeadLettered { .. } => "dead_lettered",
            Entry::DeadLetterReplayed { .. } => "dead_letter_replayed",
            Entry::DeliveryPaused { .. } => "delivery_paused",
            Entry::DeliveryResumed { .. } => "delivery_resumed",
        }
    }
}

/// [`Entry::Saga`] borrowed, for encoding without a copy of the record: it encodes to
/// the same bytes.
#[derive(Encode)]
enum EntryRef<'a> {
    Saga { link: Link, record: &'a Record },
}

/// Encodes a saga record as [`Entry::Saga`] would.
pub fn encode_saga_record(link: Link, record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.push(FORMAT_VERSION);
    bincode::encode_into_std_write(EntryRef::Saga { link, record }, &mut out, config())
        .expect("writing to a Vec");
    out
}

/// What the indexer needs of a saga record, read without decoding (or allocating)
/// the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek<'a> {
    pub link: Link,
    pub saga_id: &'a str,
    pub at_ms: u64,
    /// The status the record ends the saga in, if it ends it.
    pub finished: Option<Status>,
    /// Whether it starts the saga, issues a command, or something else.
    pub shape: Shape,
}

/// The kinds of saga record the command feed (outbox, relay) needs to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Started,
    CommandIssued,
    Other,
}

/// Positions of the [`Kind`] variants the peek reads (checked against the real
/// encoding by a test, so a reordering of `Kind` cannot slip by).
const KIND_SAGA_STARTED: u32 = 0;
const KIND_COMMAND_ISSUED: u32 = 1;
const KIND_SAGA_COMPLETED: u32 = 7;
const KIND_SAGA_COMPENSATED: u32 = 9;
const KIND_STATUS_OVERRIDDEN: u32 = 10;

/// Reads the link, saga id, time and ending status of a saga record; `None` for the
/// other entries.
pub fn peek(bytes: &[u8]) -> Result<Option<Peek<'_>>, DecodeError> {
    use bincode::de::read::SliceReader;
    use bincode::de::{BorrowDecode, DecoderImpl};
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version > FORMAT_VERSION || version == 0 {
        return Err(DecodeError::NewerFormat { found: version });
    }
    let invalid = |e: bincode::error::DecodeError| DecodeError::Invalid {
        version,
        reason: e.to_string(),
    };
    let mut decoder = DecoderImpl::new(SliceReader::new(body), decode_config(), ());
    let entry: u32 = Decode::decode(&mut decoder).map_err(invalid)?;
    if entry != 0 {
        return Ok(None);
    }
    let link: Link = Decode::decode(&mut decoder).map_err(invalid)?;
    let saga_id: &str = BorrowDecode::borrow_decode(&mut decoder).map_err(invalid)?;
    let _seq: u32 = Decode::decode(&mut decoder).map_err(invalid)?;
    let at_ms: u64 = Decode::decode(&mut decoder).map_err(invalid)?;
    let kind: u32 = Decode::decode(&mut decoder).map_err(invalid)?;
    let finished = match kind {
        KIND_SAGA_COMPLETED => Some(Status::Completed),
        KIND_SAGA_COMPENSATED => Some(Status::Compensated),
        KIND_STATUS_OVERRIDDEN => {
            let _from: Status = Decode::decode(&mut decoder).map_err(invalid)?;
            let to: Status = Decode::decode(&mut decoder).map_err(invalid)?;
            to.is_terminal().then_some(to)
        }
        _ => None,
    };
    let shape = match kind {
        KIND_SAGA_STARTED => Shape::Started,
        KIND_COMMAND_ISSUED => Shape::CommandIssued,
        _ => Shape::Other,
    };
    Ok(Some(Peek {
        link,
        saga_id,
        at_ms,
        finished,
        shape,
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("record format version {found}; this build reads up to {FORMAT_VERSION} (written by a newer sagalog?)")]
    NewerFormat { found: u8 },
    #[error("undecodable record (format version {version}): {reason}")]
    Invalid { version: u8, reason: String },
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Most bytes decoding one record may claim for its strings and lists: a record is at
/// most `max_record_bytes` (1 GiB at the very most), and a damaged length prefix must
/// fail the decode rather than ask the allocator for terabytes (found by fuzzing).
const MAX_DECODE_BYTES: usize = 1 << 30;

fn decode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_DECODE_BYTES>,
> {
    config().with_limit::<MAX_DECODE_BYTES>()
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.push(FORMAT_VERSION);
        bincode::encode_into_std_write(self, &mut out, config()).expect("writing to a Vec");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version > FORMAT_VERSION || version == 0 {
            return Err(DecodeError::NewerFormat { found: version });
        }
        let (entry, used) = bincode::decode_from_slice(body, decode_config()).map_err(|e| {
            DecodeError::Invalid {
                version,
                reason: e.to_string(),
            }
        })?;
        if used != body.len() {
            return Err(DecodeError::Invalid {
                version,
                reason: format!("{} trailing bytes", body.len() - used),
            });
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        let record = |seq, kind| Entry::Saga {
            link: if seq == 1 {
                Link::Start
            } else {
                Link::After {
                    prev: u64::from(seq),
                    first: 0,
                }
            },
            record: Record {
                saga_id: "s-1".into(),
                seq,
                at_ms: 1_700_000_000_000 + u64::from(seq),
                kind,
            },
        };
        vec![
            record(
                1,
                Kind::SagaStarted {
                    saga_type: "order".into(),
                    definition_version: 1,
                    payload: r#"{"sku":"A"}"#.into(),
                    trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                    request_hash: 42,
                },
            ),
            record(
                2,
                Kind::StepFailed {
                    step: 0,
                    action: Action::Execute,
                    attempt: 1,
                    event_id: "e-1".into(),
                    reason: "out of stock".into(),
                    retry_at_ms: Some(5),
                    answer: Status::Started,
                },
            ),
            record(
                3,
                Kind::StatusOverridden {
                    from: Status::Failed,
                    to: Status::Compensated,
                    reason: "manual".into(),
                },
            ),
            Entry::DefinitionRegistered { json: "{}".into() },
            Entry::DeadLettered {
                saga_id: "s-1".into(),
                command_offset: 9,
                reason: "broker refused".into(),
            },
            Entry::DeadLetterReplayed {
                dead_letter_offset: 12,
                command_offset: 9,
            },
        ]
    }

    #[test]
    fn entries_round_trip() {
        for entry in sample() {
            assert_eq!(Entry::decode(&entry.encode()).unwrap(), entry);
        }
    }

    #[test]
    fn peek_reads_what_a_full_decode_reads() {
        let kinds = [
            Kind::SagaStarted {
                saga_type: "order".into(),
                definition_version: 1,
                payload: "{}".into(),
                trace_id: "t".into(),
                request_hash: 5,
            },
            Kind::CommandIssued {
                step: 1,
                action: Action::Execute,
                attempt: 2,
                deadline_ms: 10,
            },
            Kind::SagaCompleted,
            Kind::SagaCompensated,
            Kind::SagaFailed {
                step: 1,
                reason: "x".into(),
            },
            Kind::StatusOverridden {
                from: Status::Failed,
                to: Status::Compensated,
                reason: "r".into(),
            },
            Kind::StatusOverridden {
                from: Status::InProgress,
                to: Status::Failed,
                reason: "r".into(),
            },
            Kind::RetryRequested {
                step: 0,
                action: Action::Compensate,
            },
        ];
        for kind in kinds {
            let record = Record {
                saga_id: "peeked".into(),
                seq: 3,
                at_ms: 99,
                kind: kind.clone(),
            };
            let link = Link::After { prev: 7, first: 2 };
            let bytes = encode_saga_record(link, &record);
            let peeked = peek(&bytes).unwrap().unwrap();
            let finished = match &kind {
                Kind::SagaCompleted => Some(Status::Completed),
                Kind::SagaCompensated => Some(Status::Compensated),
                Kind::StatusOverridden { to, .. } if to.is_terminal() => Some(*to),
                _ => None,
            };
            let shape = match &kind {
                Kind::SagaStarted { .. } => Shape::Started,
                Kind::CommandIssued { .. } => Shape::CommandIssued,
                _ => Shape::Other,
            };
            assert_eq!(
                peeked,
                Peek {
                    link,
                    saga_id: "peeked",
                    at_ms: 99,
                    finished,
                    shape,
                },
                "{kind:?}"
            );
        }
        let other = Entry::DefinitionRegistered { json: "{}".into() }.encode();
        assert_eq!(peek(&other).unwrap(), None);
    }

    #[test]
    fn a_borrowed_saga_record_encodes_like_the_entry() {
        for entry in sample() {
            if let Entry::Saga { link, record } = &entry {
                assert_eq!(encode_saga_record(*link, record), entry.encode());
            }
        }
    }

    #[test]
    fn newer_format_truncation_and_trailing_bytes_are_errors() {
        let mut bytes = sample()[0].encode();
        bytes[0] = FORMAT_VERSION + 1;
        assert!(matches!(
            Entry::decode(&bytes),
            Err(DecodeError::NewerFormat { .. })
        ));
        let bytes = sample()[1].encode();
        assert!(Entry::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Entry::decode(&longer).is_err());
        assert!(matches!(Entry::decode(&[]), Err(DecodeError::Empty)));
    }

    #[test]
    fn status_names_parse_back() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
        }
        assert!("DONE".parse::<Status>().unwrap_err().contains("COMPLETED"));
    }
}
