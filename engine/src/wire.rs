//! A participant's reply as JSON (SPEC §4 `POST /api/v1/sagas/{id}/events`; on Kafka
//! the same object plus `saga_id`). One parser, so a reply over HTTP and one over
//! Kafka are read alike.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::decider::{Outcome, Reply};

#[derive(Debug, Deserialize)]
pub struct ReplyMessage<'a> {
    /// Required on Kafka (the topic carries every saga's replies); over HTTP the path
    /// names the saga.
    #[serde(default)]
    pub saga_id: Option<String>,
    pub event_id: String,
    pub step: String,
    pub outcome: OutcomeName,
    pub attempt: u32,
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeName {
    Succeeded,
    Failed,
    Compensated,
    CompensationFailed,
}

impl From<OutcomeName> for Outcome {
    fn from(o: OutcomeName) -> Outcome {
        match o {
            OutcomeName::Succeeded => Outcome::Succeeded,
            OutcomeName::Failed => Outcome::Failed,
            OutcomeName::Compensated => Outcome::Compensated,
            OutcomeName::CompensationFailed => Outcome::CompensationFailed,
        }
    }
}

impl ReplyMessage<'_> {
    /// The reply for the engine (the saga id aside).
    pub fn into_reply(self) -> Reply {
        Reply {
            event_id: self.event_id,
            step: self.step,
            outcome: self.outcome.into(),
            attempt: self.attempt,
            data: self.data.map(|d| d.get().to_string()).unwrap_or_default(),
            reason: self.reason.unwrap_or_default(),
        }
    }
}
