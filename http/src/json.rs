//! The JSON bodies of http/openapi.yaml: requests parsed with their limits, and sagas, history
//! items and commands rendered with the fixed field names.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use sagalog_engine::{Definition, HistoryItem, Kind, SagaView, StoredJson};

use crate::error::ApiError;

/// Deepest nesting of arrays and objects a request body may have.
pub const MAX_JSON_DEPTH: usize = 32;

/// Unix ms as RFC 3339 in UTC with milliseconds (`2026-11-23T10:00:00.123Z`).
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// An RFC 3339 date-time as unix ms (`2026-11-23T10:00:00Z`, `…T12:00:00.5+02:00`, any
/// year from 0000, lowercase `t`/`z` too), clamped to 0 for times before 1970: the range
/// the OpenAPI file's `date-time` declares. `field` names it in the error.
pub fn parse_rfc3339(field: &str, text: &str) -> Result<u64, ApiError> {
    let ms = rfc3339_ms(text).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_request",
            format!("{field}: {text:?} is not an RFC 3339 date-time such as 2026-11-23T10:00:00Z"),
        )
    })?;
    Ok(u64::try_from(ms).unwrap_or(0))
}

/// Unix ms of an RFC 3339 `date-time` (RFC 3339 §5.6), or `None` when it is not one.
fn rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let number = |at: usize, len: usize| -> Option<i64> {
        let digits = b.get(at..at + len)?;
        digits.iter().all(u8::is_ascii_digit).then(|| {
            digits
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if b.len() < 20 || separators.iter().any(|&(i, c)| b[i] != c) || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 2)?, number(8, 2)?);
    let (hour, minute, second) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        millis = fraction[..digits.min(3)]
            .iter()
            .chain(std::iter::repeat(&b'0'))
            .take(3)
            .fold(0, |n, d| n * 10 + i64::from(d - b'0'));
        rest = &fraction[digits..];
    }
    let offset_s = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| -> Option<i64> {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (hours, minutes) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return None,
    };
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(seconds * 1000 + millis)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The nesting depth of a JSON text (strings skipped), without parsing it: a body nested
/// deeper than [`MAX_JSON_DEPTH`] is refused before serde recurses into it.
pub fn depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parses a request body: `400 invalid_json` for malformed JSON or a nesting past the
/// limit, `400 invalid_request` for a missing or mistyped field (serde's message names it).
pub fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            crate::error::code::INVALID_JSON,
            "the request needs a JSON body",
        ));
    }
    let deepest = depth(body);
    if deepest > MAX_JSON_DEPTH {
        return Err(ApiError::bad_request(
            crate::error::code::INVALID_JSON,
            format!("the body nests {deepest} levels deep; at most {MAX_JSON_DEPTH} are accepted"),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let code = match e.classify() {
            serde_json::error::Category::Data => "invalid_request",
            _ => crate::error::code::INVALID_JSON,
        };
        ApiError::bad_request(code, format!("request body: {e}"))
    })
}

/// `POST /api/v1/sagas`. Strict: an unknown field (a `sagaId` typo) is refused, naming
/// the fields there are, rather than starting a saga under a new id.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody<'a> {
    #[serde(rename = "type")]
    pub saga_type: String,
    #[serde(default, deserialize_with = "sagalog_engine::wire::present_string")]
    pub saga_id: Option<String>,
    /// As sent, `null` included (only absence is `None`).
    #[serde(default, borrow, deserialize_with = "sagalog_engine::wire::present")]
    pub payload: Option<&'a RawValue>,
}

/// `POST /internal/v1/pause`: the topics (every topic when absent) and why.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    #[serde(default, deserialize_with = "present_list")]
    pub topics: Option<Vec<String>>,
    pub reason: String,
}

/// `POST /internal/v1/resume`: the topics (every topic when absent).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeBody {
    #[serde(default, deserialize_with = "present_list")]
    pub topics: Option<Vec<String>>,
}

/// An optional list of strings: absent is `None`, `null` is refused (leave the field
/// out to mean every topic).
fn present_list<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    match Option::<Vec<String>>::deserialize(deserializer)? {
        Some(list) => Ok(Some(list)),
        None => Err(serde::de::Error::custom(
            "topics: null is not a list of topics; leave the field out for every topic",
        )),
    }
}

/// The topics of a pause or resume: absent is every topic; an empty list is refused, so
/// that `[]` built by a script from an empty selection does not stop everything.
pub fn change_topics(topics: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    match topics {
        None => Ok(Vec::new()),
        Some(topics) if topics.is_empty() => Err(ApiError::bad_request(
            "invalid_request",
            "topics: name at least one topic, or leave `topics` out for every topic",
        )),
        Some(topics) => Ok(topics),
    }
}

/// What is paused, as `/internal/v1/pause` answers it; `topics` are the step topics
/// of the registered definitions.
pub fn delivery(
    delivery: &sagalog_engine::Delivery,
    topics: &std::collections::BTreeSet<String>,
) -> Value {
    let (paused, except): (Vec<&String>, Vec<&String>) = if delivery.all {
        (Vec::new(), delivery.topics.iter().collect())
    } else {
        (delivery.topics.iter().collect(), Vec::new())
    };
    let paused_topics: Vec<&String> = topics.iter().filter(|t| delivery.is_paused(t)).collect();
    serde_json::json!({
        "all": delivery.all,
        "topics": paused,
        "except": except,
        "paused_topics": paused_topics,
        "summary": delivery.describe(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideBody {
    pub status: String,
    pub reason: String,
}

/// `raw` (a field named `field`) must be a JSON object: `400` otherwise, `null` included.
pub fn require_object(field: &str, raw: &RawValue) -> Result<(), ApiError> {
    if raw.get().trim_start().starts_with('{') {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_request",
            format!("{field}: must be a JSON object, not {}", raw.get()),
        ))
    }
}

/// A JSON text the engine stored (a payload or reply data) as a value; empty is null.
fn stored_json(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// A saga as the API shows it (the field names of http/openapi.yaml).
#[derive(Serialize)]
pub struct SagaBody<'a> {
    saga_id: &'a str,
    #[serde(rename = "type")]
    saga_type: &'a str,
    definition_version: u32,
    status: &'static str,
    current_step: Option<&'a str>,
    steps: Vec<StepBody<'a>>,
    created_at: String,
    updated_at: String,
    failure_reason: Option<&'a str>,
    trace_id: &'a str,
    payload: StoredJson<'a>,
    failed_step: Option<&'a str>,
    failed_at: Option<String>,
}

#[derive(Serialize)]
struct StepBody<'a> {
    name: &'a str,
    status: &'static str,
    attempts: u32,
    /// The data it succeeded with (null until it did).
    result: Option<StoredJson<'a>>,
}

pub fn saga(view: &SagaView) -> SagaBody<'_> {
    SagaBody {
        saga_id: &view.saga_id,
        saga_type: &view.saga_type,
        definition_version: view.definition_version,
        status: view.status.as_str(),
        current_step: view.current_step.as_deref(),
        steps: view
            .steps
            .iter()
            .map(|s| StepBody {
                name: &s.name,
                status: s.status.as_str(),
                attempts: s.attempts,
                result: s.result.as_deref().map(StoredJson),
            })
            .collect(),
        created_at: rfc3339(view.created_at_ms),
        updated_at: rfc3339(view.updated_at_ms),
        failure_reason: view.failure_reason.as_deref(),
        trace_id: &view.trace_id,
        payload: StoredJson(&view.payload),
        failed_step: view.failed_step.as_deref(),
        failed_at: view.failed_at_ms.map(rfc3339),
    }
}

/// A page of sagas (`GET /api/v1/sagas`).
#[derive(Serialize)]
pub struct SagaPage<'a> {
    pub items: Vec<SagaBody<'a>>,
    pub next_cursor: Option<&'a str>,
}

/// A history item: `offset`, `seq`, `kind`, `at`, then the record's own fields, with
/// step numbers given as the step names of the saga's definition.
pub fn history_item(item: &HistoryItem, definition: Option<&Definition>) -> Value {
    let record = &item.record;
    let step_name = |step: u16| -> Value {
        definition
            .and_then(|d| d.steps.get(usize::from(step)))
            .map_or_else(|| json!(step), |s| json!(s.name))
    };
    let mut out = Map::new();
    out.insert("offset".into(), json!(item.offset));
    out.insert("seq".into(), json!(record.seq));
    out.insert("kind".into(), json!(record.kind.name()));
    out.insert("at".into(), json!(rfc3339(record.at_ms)));
    let fields = match &record.kind {
        Kind::SagaStarted {
            saga_type,
            definition_version,
            payload,
            trace_id,
            ..
        } => json!({"type": saga_type, "definition_version": definition_version,
                    "payload": stored_json(payload), "trace_id": trace_id}),
        Kind::CommandIssued {
            step,
            action,
            attempt,
            deadline_ms,
        } => json!({"step": step_name(*step), "action": action.as_str(), "attempt": attempt,
                    "deadline": rfc3339(*deadline_ms)}),
        Kind::StepSucceeded {
            step,
            attempt,
            event_id,
            data,
            ..
        }
        | Kind::StepCompensated {
            step,
            attempt,
            event_id,
            data,
            ..
        } => json!({"step": step_name(*step), "attempt": attempt, "event_id": event_id,
                    "data": stored_json(data)}),
        Kind::StepFailed {
            step,
            action,
            attempt,
            event_id,
            reason,
            retry_at_ms,
            ..
        } => json!({"step": step_name(*step), "action": action.as_str(), "attempt": attempt,
                    "event_id": event_id, "reason": reason,
                    "retry_at": retry_at_ms.map(rfc3339)}),
        Kind::StepTimedOut {
            step,
            action,
            attempt,
            retry_at_ms,
        } => json!({"step": step_name(*step), "action": action.as_str(), "attempt": attempt,
                    "retry_at": retry_at_ms.map(rfc3339)}),
        Kind::CompensationFailed { step, reason } | Kind::SagaFailed { step, reason } => {
            json!({"step": step_name(*step), "reason": reason})
        }
        Kind::SagaCompleted | Kind::SagaCompensated => json!({}),
        Kind::StatusOverridden { from, to, reason } => {
            json!({"from": from.as_str(), "to": to.as_str(), "reason": reason})
        }
        Kind::RetryRequested { step, action } => {
            json!({"step": step_name(*step), "action": action.as_str()})
        }
    };
    if let Value::Object(fields) = fields {
        out.extend(fields);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_nesting_and_skips_brackets_in_strings() {
        assert_eq!(depth(br#"{"a": [1, {"b": "[[[{{"}]}"#), 3);
        assert_eq!(depth(br#""\"[""#), 0);
        assert_eq!(depth(b"[[[[]]]]"), 4);
    }

    #[test]
    fn parse_tells_malformed_json_from_a_missing_field() {
        let e = parse::<OverrideBody>(b"{nope").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse::<OverrideBody>(br#"{"status": "COMPENSATED"}"#).unwrap_err();
        assert_eq!(e.code, "invalid_request");
        assert!(e.message.contains("reason"), "{}", e.message);
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH + 1),
            "]".repeat(MAX_JSON_DEPTH + 1)
        );
        assert_eq!(
            parse::<Value>(deep.as_bytes()).unwrap_err().code,
            "invalid_json"
        );
    }

    #[test]
    fn times_round_trip_through_rfc3339() {
        let ms = 1_795_000_000_123;
        let text = rfc3339(ms);
        assert!(text.ends_with(".123Z"), "{text}");
        assert_eq!(parse_rfc3339("fromDate", &text).unwrap(), ms);
        assert!(parse_rfc3339("fromDate", "yesterday")
            .unwrap_err()
            .message
            .contains("fromDate"));
    }

    #[test]
    fn every_rfc3339_date_time_parses_and_what_is_not_one_is_refused() {
        let ms = |text| parse_rfc3339("toDate", text).map_err(|e| e.message);
        assert_eq!(ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(ms("2026-11-23T10:00:00.123Z"), Ok(1_795_428_000_123));
        assert_eq!(ms("2026-11-23t12:00:00.1234+02:00"), Ok(1_795_428_000_123));
        assert_eq!(ms("2026-11-23T05:30:00-04:30"), Ok(1_795_428_000_000));
        assert_eq!(ms("2024-02-29T00:00:00z"), Ok(1_709_164_800_000));
        // Before 1970 (any year from 0000) is the start of time.
        assert_eq!(ms("0000-01-01T00:00:00Z"), Ok(0));
        assert_eq!(ms("0999-12-31T23:59:60Z"), Ok(0));
        for bad in [
            "",
            "2026-11-23",
            "2026-11-23 10:00:00Z",
            "2026-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T10:00:00",
            "2026-11-23T10:00:00.Z",
            "2026-11-23T10:00:00+2:00",
            "2026-11-23T10:00:00+24:00",
            "+2026-11-23T10:00:00Z",
        ] {
            assert!(ms(bad).is_err(), "{bad:?} was taken");
        }
    }
}
