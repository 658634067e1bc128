//! The JSON bodies of sagalog's HTTP API, typed. Field names are the API's; fields the
//! server may add later are ignored, so an older client keeps working.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A saga as the API shows it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Saga {
    pub saga_id: String,
    #[serde(rename = "type")]
    pub saga_type: String,
    pub definition_version: u32,
    /// `STARTED`, `IN_PROGRESS`, `COMPLETED`, `FAILED`, `COMPENSATED` or
    /// `COMPENSATION_FAILED`.
    pub status: String,
    pub current_step: Option<String>,
    pub steps: Vec<Step>,
    pub created_at: String,
    pub updated_at: String,
    pub failure_reason: Option<String>,
    pub trace_id: String,
    pub payload: Value,
}

impl Saga {
    /// `COMPLETED` or `COMPENSATED`: nothing more happens to it.
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "COMPLETED" | "COMPENSATED")
    }

    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Step {
    pub name: String,
    /// `pending`, `running`, `succeeded`, `failed`, `compensating`, `compensated` or
    /// `compensation_failed`.
    pub status: String,
    pub attempts: u32,
    /// The data the step succeeded with; `None` until it did.
    #[serde(default)]
    pub result: Option<Value>,
}

/// What to start: `POST /api/v1/sagas`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StartSaga {
    #[serde(rename = "type")]
    pub saga_type: String,
    /// Your id for it (retrying a start with the same id and body is safe); the server
    /// makes one when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saga_id: Option<String>,
    pub payload: Value,
}

/// A command, as the outbox and Kafka deliver it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Command {
    /// Unique and stable: the same command delivered twice has the same one.
    pub event_id: String,
    pub saga_id: String,
    pub saga_type: String,
    pub step: String,
    pub action: Action,
    pub attempt: u32,
    pub payload: Value,
    /// The data of each step of the saga that succeeded before this command, by name.
    #[serde(default)]
    pub results: serde_json::Map<String, Value>,
    /// For a compensation: the data of the step it undoes (`None` after a timeout).
    #[serde(default)]
    pub result: Option<Value>,
    /// For a compensation: the step timed out on its last attempt, so its effect is
    /// unknown — "nothing to undo" is a success.
    #[serde(default)]
    pub after_timeout: bool,
    pub offset: u64,
    pub topic: String,
    #[serde(default)]
    pub trace_id: String,
}

/// Execute a step, or undo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Execute,
    Compensate,
}

/// What a participant's reply says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    Compensated,
    CompensationFailed,
}

/// A participant's reply: `POST /api/v1/sagas/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    /// Your reply's id: the same reply sent again gets the first answer.
    pub event_id: String,
    pub step: String,
    pub outcome: Outcome,
    pub attempt: u32,
    /// A success's result, handed to every later command of the saga.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Reply {
    /// The reply to `command` with `outcome`, its `event_id` made from the command's
    /// and `service` (so a duplicate delivery replies with the same id).
    pub fn to(command: &Command, service: &str, outcome: Outcome) -> Reply {
        Reply {
            event_id: format!("{service}:{}", command.event_id),
            step: command.step.clone(),
            outcome,
            attempt: command.attempt,
            data: None,
            reason: None,
        }
    }
}

/// What the server answered a reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReplyAnswer {
    pub saga_id: String,
    pub status: String,
    pub offset: u64,
}

/// One page of the outbox.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OutboxPage {
    pub items: Vec<Command>,
    /// Pass back as `after`; past every record this call looked at.
    pub next_after: Option<Position>,
}

/// A position in the outbox, as a page's `next_after` gives it: an offset on a server
/// with one partition, an opaque cursor over every partition on a server with more.
/// Its text (`Display`, `FromStr`) is what the server sends, for keeping in a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(untagged)]
pub enum Position {
    Offset(u64),
    Cursor(String),
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Offset(offset) => write!(f, "{offset}"),
            Position::Cursor(cursor) => f.write_str(cursor),
        }
    }
}

impl std::str::FromStr for Position {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Position, Self::Err> {
        Ok(match text.parse() {
            Ok(offset) => Position::Offset(offset),
            Err(_) => Position::Cursor(text.to_string()),
        })
    }
}

/// Where an outbox read starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum After {
    /// The start of the log.
    #[default]
    Start,
    /// After this offset (a page's `next_after` on a server with one partition).
    Offset(u64),
    /// After a cursor a page's `next_after` gave (a server with more partitions).
    Cursor(String),
    /// Only what is issued from now on.
    Latest,
}

impl From<Position> for After {
    fn from(position: Position) -> After {
        match position {
            Position::Offset(offset) => After::Offset(offset),
            Position::Cursor(cursor) => After::Cursor(cursor),
        }
    }
}

/// `GET /api/v1/outbox`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutboxQuery {
    /// Only these step topics (every topic when empty).
    pub topics: Vec<String>,
    pub after: After,
    /// At most this many commands (the server's default when `None`).
    pub limit: Option<u32>,
    /// Long poll: wait up to this long for a command.
    pub wait_ms: u64,
    /// Member `.1` of `.0` replicas sharing the topics.
    pub share: Option<(u32, u32)>,
}

impl OutboxQuery {
    pub(crate) fn to_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for topic in &self.topics {
            q.append_pair("topic", topic);
        }
        match &self.after {
            After::Start => {}
            After::Offset(after) => {
                q.append_pair("after", &after.to_string());
            }
            After::Cursor(cursor) => {
                q.append_pair("after", cursor);
            }
            After::Latest => {
                q.append_pair("after", "latest");
            }
        }
        if let Some(limit) = self.limit {
            q.append_pair("limit", &limit.to_string());
        }
        if self.wait_ms > 0 {
            q.append_pair("wait_ms", &self.wait_ms.to_string());
        }
        if let Some((members, member)) = self.share {
            q.append_pair("members", &members.to_string());
            q.append_pair("member", &member.to_string());
        }
        q.finish()
    }
}

/// `GET /api/v1/sagas`: each filter optional.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQuery {
    pub status: Option<String>,
    pub saga_type: Option<String>,
    /// RFC 3339, on `updated_at`.
    pub from_date: Option<String>,
    pub to_date: Option<String>,
    pub limit: Option<u32>,
    /// A page's `next_cursor`.
    pub cursor: Option<String>,
}

impl ListQuery {
    pub(crate) fn to_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        let pairs = [
            ("status", self.status.clone()),
            ("type", self.saga_type.clone()),
            ("fromDate", self.from_date.clone()),
            ("toDate", self.to_date.clone()),
            ("limit", self.limit.map(|l| l.to_string())),
            ("cursor", self.cursor.clone()),
        ];
        for (key, value) in pairs {
            if let Some(value) = value {
                q.append_pair(key, &value);
            }
        }
        q.finish()
    }
}

/// A page of sagas, newest first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SagaPage {
    pub items: Vec<Saga>,
    pub next_cursor: Option<String>,
}

/// One record of a saga's history: `offset`, `seq`, `kind`, `at` and the record's own
/// fields, as the server gives them.
pub type HistoryItem = serde_json::Map<String, Value>;
