//! A participant's reply as JSON (`POST /api/v1/sagas/{id}/events` of http/openapi.yaml; on Kafka
//! the same object plus `saga_id`). One parser, so a reply over HTTP and one over
//! Kafka are read alike.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::model::decider::{Outcome, Reply};

/// Strict: an unknown field (`error` for `reason`) is refused, naming the fields there
/// are, rather than dropped.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyMessage<'a> {
    /// Required on Kafka (the topic carries every saga's replies); over HTTP the path
    /// names the saga.
    #[serde(default, deserialize_with = "present_string")]
    pub saga_id: Option<String>,
    pub event_id: String,
    pub step: String,
    pub outcome: OutcomeName,
    pub attempt: u32,
    /// As sent, `null` included (only absence is `None`).
    #[serde(default, borrow, deserialize_with = "present")]
    pub data: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present_string")]
    pub reason: Option<String>,
}

/// A field's raw JSON as sent, `null` included: serde's `Option` reads `null` as absent,
/// which would let `"data": null` pass for an object.
pub fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// An optional string field: absent is `None`, `null` is refused (it is not a string).
pub fn present_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    String::deserialize(deserializer).map(Some)
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
    /// Whether `data`, when given, is a JSON object (as the protocol has it).
    pub fn data_is_object(&self) -> bool {
        self.data
            .is_none_or(|d| d.get().trim_start().starts_with('{'))
    }

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
