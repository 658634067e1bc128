//! The engine's API: what callers hand it and get back, and the rules its inputs are
//! checked by before anything is decided (saga ids, trace ids, event ids, reasons,
//! sizes). A check that fails changes nothing.

use crate::error::{EngineError, Result};
use crate::model::decider::Reply;
use crate::model::record::{Record, Status};
use crate::render::view::SagaView;
use crate::service::projection::Counters;

/// Longest a reply's or an override's reason may be, in characters (as the OpenAPI
/// file's `maxLength` counts them).
pub const MAX_REASON_CHARS: usize = 4096;
/// Largest `limit` of a list page (the HTTP outbox's too).
pub const MAX_LIST_LIMIT: usize = 1000;
/// Longest an `event_id` may be, in characters.
pub const MAX_EVENT_ID_CHARS: usize = 256;

/// `[A-Za-z0-9._:-]{1,128}`: saga ids.
pub fn is_valid_saga_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

pub struct StartRequest {
    pub saga_type: String,
    pub saga_id: Option<String>,
    pub payload: serde_json::Value,
    /// 32 lowercase hex digits (a W3C trace id); one is made when absent.
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StartAnswer {
    pub saga: SagaView,
    /// False when the saga existed already (a repeated start with the same body).
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyAnswer {
    pub saga_id: String,
    pub status: Status,
    /// The log offset of the reply's record.
    pub offset: u64,
    /// True when this `event_id` was answered before: nothing was appended.
    pub repeated: bool,
}

#[derive(Debug, Clone)]
pub struct HistoryItem {
    pub offset: u64,
    pub record: Record,
}

/// What an operator does to a saga ([`crate::Engine::operate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Re-issue the pending command with a fresh attempt budget.
    Retry,
    /// Set the status, with a reason that is recorded.
    Override { to: Status, reason: String },
}

impl Operation {
    /// Its own rules, whatever saga it is for (an override's reason is at most
    /// [`MAX_REASON_CHARS`]): a bulk action checks them once, before any saga.
    pub fn check(&self) -> Result<()> {
        match self {
            Operation::Retry => Ok(()),
            Operation::Override { reason, .. } => check_reason(reason),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<Status>,
    pub saga_type: Option<String>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub limit: usize,
    pub cursor: Option<String>,
    /// Only sagas whose id starts with this.
    pub id_prefix: Option<String>,
    /// Only sagas whose start payload has each of these fields (all must match).
    pub payload: Vec<PayloadMatch>,
}

/// Most payload fields one list may match on.
pub const MAX_PAYLOAD_FILTERS: usize = 4;
/// Most names in a payload field's path (`a.b.c.d`), and the longest each may be, in
/// characters.
pub const MAX_PAYLOAD_PATH_NAMES: usize = 4;
pub const MAX_PAYLOAD_NAME_CHARS: usize = 64;
/// Longest a payload field's value may be, in characters.
pub const MAX_PAYLOAD_VALUE_CHARS: usize = 256;

/// `payload.a.b=value`: the field at `path` in the saga's start payload (objects by key,
/// arrays by index) is the string `value`, or a number, boolean or null written as
/// `value` in JSON (`payload.items=2` matches `{"items": 2}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadMatch {
    pub path: Vec<String>,
    pub value: String,
}

impl PayloadMatch {
    /// From a query parameter's key after `payload.` and its value, checked.
    pub fn parse(path: &str, value: &str) -> Result<PayloadMatch> {
        let names: Vec<String> = path.split('.').map(str::to_string).collect();
        let fits = |name: &String| (1..=MAX_PAYLOAD_NAME_CHARS).contains(&name.chars().count());
        if names.len() > MAX_PAYLOAD_PATH_NAMES || !names.iter().all(fits) {
            return Err(invalid(
                "payload",
                format!(
                    "payload.{path}: a field path is 1 to {MAX_PAYLOAD_PATH_NAMES} names joined by dots, each 1 to {MAX_PAYLOAD_NAME_CHARS} characters"
                ),
            ));
        }
        if value.chars().count() > MAX_PAYLOAD_VALUE_CHARS {
            return Err(invalid(
                "payload",
                format!("payload.{path}: a value is at most {MAX_PAYLOAD_VALUE_CHARS} characters"),
            ));
        }
        Ok(PayloadMatch {
            path: names,
            value: value.to_string(),
        })
    }

    /// Whether `payload` (a start payload) holds this field with this value.
    pub fn matches(&self, payload: &serde_json::Value) -> bool {
        let mut at = payload;
        for key in &self.path {
            let next = match at {
                serde_json::Value::Object(fields) => fields.get(key),
                serde_json::Value::Array(items) => {
                    key.parse::<usize>().ok().and_then(|i| items.get(i))
                }
                _ => None,
            };
            match next {
                Some(next) => at = next,
                None => return false,
            }
        }
        match at {
            serde_json::Value::String(s) => *s == self.value,
            serde_json::Value::Object(_) | serde_json::Value::Array(_) => false,
            scalar => serde_json::from_str::<serde_json::Value>(&self.value)
                .is_ok_and(|written| written == *scalar),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListPage {
    pub items: Vec<SagaView>,
    pub next_cursor: Option<String>,
}

/// The gauges and counters the metrics endpoint exports.
#[derive(Debug, Clone)]
pub struct EngineStats {
    pub counters: Counters,
    /// Active sagas (in memory, not finished) per status.
    pub active_by_status: [usize; 6],
    /// Unix ms of the oldest `updated_at` among the active sagas in each status, if any
    /// (a scan of the sagas in memory).
    pub oldest_updated_ms: [Option<u64>; 6],
    /// The active saga that has waited longest since its last record (the same scan).
    pub oldest_active: Option<crate::service::active::OldestActive>,
    pub log_next_offset: u64,
    pub index_watermark: u64,
    pub snapshot_offset: u64,
    /// Unix ms when the newest snapshot was written (its file's modification time), 0
    /// when there is none.
    pub snapshot_at_ms: u64,
    /// The configured snapshot interval, in records.
    pub snapshot_every_records: u64,
    pub replayed_records: u64,
}

/// A partition's newest snapshot and what its open replayed.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotFigures {
    pub offset: u64,
    /// Unix ms when it was written, 0 when there is none.
    pub at_ms: u64,
    pub replayed_records: u64,
}

/// 32 lowercase hex digits, not all zero: a W3C trace id.
pub fn is_valid_trace_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && id.bytes().any(|b| b != b'0')
}

pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> EngineError {
    EngineError::InvalidRequest {
        field,
        message: message.into(),
    }
}

/// A saga id a caller chose, checked.
pub(crate) fn check_saga_id(id: &str) -> Result<()> {
    if is_valid_saga_id(id) {
        return Ok(());
    }
    Err(invalid(
        "saga_id",
        format!("{id:?} must match [A-Za-z0-9._:-]{{1,128}}"),
    ))
}

/// A trace id a caller gave, checked.
pub(crate) fn check_trace_id(id: &str) -> Result<()> {
    if is_valid_trace_id(id) {
        return Ok(());
    }
    Err(invalid(
        "trace_id",
        format!("{id:?} is not 32 lowercase hex digits"),
    ))
}

/// A start's payload or a reply's data (`field`), `bytes` long as JSON, against the
/// `limit` that `option` sets.
pub(crate) fn check_size(
    field: &'static str,
    bytes: usize,
    (limit, option): (usize, &'static str),
) -> Result<()> {
    if bytes <= limit {
        return Ok(());
    }
    Err(EngineError::TooLarge {
        field,
        bytes,
        limit,
        option,
    })
}

/// A reply's or an override's reason.
pub(crate) fn check_reason(reason: &str) -> Result<()> {
    if reason.chars().count() <= MAX_REASON_CHARS {
        return Ok(());
    }
    Err(invalid(
        "reason",
        format!("at most {MAX_REASON_CHARS} characters"),
    ))
}

/// A participant's reply, with data of at most `max_step_data_bytes`.
pub(crate) fn check_reply(reply: &Reply, max_step_data_bytes: usize) -> Result<()> {
    if !(1..=MAX_EVENT_ID_CHARS).contains(&reply.event_id.chars().count()) {
        return Err(invalid(
            "event_id",
            format!("must be 1 to {MAX_EVENT_ID_CHARS} characters"),
        ));
    }
    if reply.attempt == 0 {
        return Err(invalid("attempt", "attempts are numbered from 1"));
    }
    let limit = (max_step_data_bytes, "--max-step-data-bytes");
    check_size("data", reply.data.len(), limit)?;
    check_reason(&reply.reason)
}
