//! The operator's handlers: override and retry (one saga or in bulk), dead letters and
//! their replay, delivery pause and resume, snapshots, and the definitions.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use sagalog_engine::definition::Registered;
use sagalog_engine::{Definition, Operation, Status};

use crate::app::App;
use crate::bulk;
use crate::cursor;
use crate::error::ApiError;
use crate::json;
use crate::query::{parse_limit, parse_u64, saga_id, DEFAULT_LIMIT};
use crate::respond::{respond, Body};

impl App {
    pub(crate) async fn override_status(
        &self,
        param: &str,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        let id = saga_id(param)?;
        let body: json::OverrideBody = json::parse(body)?;
        let to: Status = body.status.parse().map_err(|e: String| {
            ApiError::bad_request("invalid_request", format!("status: {e}"))
        })?;
        let view = self
            .engine_of(id)?
            .override_status(id, to, body.reason)
            .await?;
        Ok(respond(StatusCode::OK, json::saga(&view)))
    }

    pub(crate) async fn retry(&self, param: &str) -> Result<Response<Body>, ApiError> {
        let id = saga_id(param)?;
        let view = self.engine_of(id)?.retry(id).await?;
        Ok(respond(StatusCode::ACCEPTED, json::saga(&view)))
    }

    pub(crate) async fn bulk(
        &self,
        operation: Operation,
        query: &str,
    ) -> Result<Response<Body>, ApiError> {
        let body = bulk::run(&self.partitions, operation, query, self.clock.now_ms()).await?;
        Ok(respond(StatusCode::OK, body))
    }

    /// With more than one partition, the dead letter's partition is `?partition=N`.
    pub(crate) async fn replay_dead_letter(
        &self,
        param: &str,
        query: &str,
    ) -> Result<Response<Body>, ApiError> {
        let offset = parse_u64("offset", param)?;
        let mut partition = None;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "partition" => partition = Some(parse_u64("partition", &value)?),
                other => {
                    return Err(ApiError::bad_request(
                        "invalid_request",
                        format!("unknown query parameter {other:?}; known: partition"),
                    ))
                }
            }
        }
        let count = self.partitions.count();
        let partition = match partition {
            Some(p) if p < u64::from(count) => p as u32,
            Some(p) => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!("partition: {p} is not one of the {count} partitions"),
                ))
            }
            None if count == 1 => 0,
            None => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!(
                    "partition: required with {count} partitions (each dead letter names its own)"
                ),
                ))
            }
        };
        let engine = self.partition(partition)?;
        let replay = engine.replay_dead_letter(offset).await?;
        Ok(respond(
            StatusCode::ACCEPTED,
            json!({"dead_letter_offset": offset, "replay_offset": replay, "partition": partition}),
        ))
    }

    pub(crate) async fn pause(&self, body: &[u8]) -> Result<Response<Body>, ApiError> {
        let body: json::PauseBody = json::parse(body)?;
        let topics = json::change_topics(body.topics)?;
        let change = self.partitions.pause_delivery(topics, body.reason).await?;
        Ok(self.delivery_response(change.offset, &change.delivery))
    }

    pub(crate) async fn resume(&self, body: &[u8]) -> Result<Response<Body>, ApiError> {
        let body: json::ResumeBody = json::parse(body)?;
        let topics = json::change_topics(body.topics)?;
        let change = self.partitions.resume_delivery(topics).await?;
        Ok(self.delivery_response(change.offset, &change.delivery))
    }

    /// What is paused (as the call left it), and the offset of the entry that made it
    /// so (`null` when the call changed nothing, or only reads).
    pub(crate) fn delivery_response(
        &self,
        offset: Option<u64>,
        delivery: &sagalog_engine::Delivery,
    ) -> Response<Body> {
        let mut body = json::delivery(delivery, &self.partitions.first().step_topics());
        body["offset"] = json!(offset);
        respond(StatusCode::OK, body)
    }

    /// A snapshot of each partition held here: `offset` is the one partition's (null
    /// with more), `partitions` each one's.
    pub(crate) async fn snapshot(&self) -> Result<Response<Body>, ApiError> {
        let taken = self.partitions.snapshot().await?;
        let offset = match taken.as_slice() {
            [(_, only)] if self.partitions.count() == 1 => Some(only.offset),
            _ => None,
        };
        let bytes: u64 = taken.iter().map(|(_, info)| info.bytes).sum();
        let partitions: Vec<Value> = taken
            .iter()
            .map(|(p, info)| json!({"partition": p, "offset": info.offset, "bytes": info.bytes}))
            .collect();
        Ok(respond(
            StatusCode::CREATED,
            json!({"offset": offset, "bytes": bytes, "partitions": partitions}),
        ))
    }

    /// With one partition `after` is an offset; with more, `PARTITION.OFFSET` (the
    /// `next_after` of the page before), dead letters going by partition, then offset.
    pub(crate) fn dead_letters(&self, query: &str) -> Result<Response<Body>, ApiError> {
        let several = self.partitions.count() > 1;
        let (mut after, mut limit) = (None, DEFAULT_LIMIT);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "after" if several => after = Some(cursor::parse_dead_letter(&value)?),
                "after" => after = Some((0, parse_u64("after", &value)?)),
                "limit" => limit = parse_limit(&value)?,
                other => {
                    return Err(ApiError::bad_request(
                        "invalid_request",
                        format!("unknown query parameter {other:?}; known: after, limit"),
                    ))
                }
            }
        }
        let letters = self.timed("dead_letters", || {
            self.partitions.dead_letters(after, limit)
        })?;
        let next_after = letters.last().map(|(p, d)| (*p, d.offset)).or(after);
        let next_after = match next_after {
            Some((p, offset)) if several => json!(cursor::encode_dead_letter(p, offset)),
            Some((_, offset)) => json!(offset),
            None => Value::Null,
        };
        let items: Vec<Value> = letters
            .iter()
            .map(|(p, d)| {
                json!({"offset": d.offset, "partition": p, "saga_id": d.saga_id,
                       "command_offset": d.command_offset, "reason": d.reason,
                       "replayed_at_offset": d.replayed_at, "command": d.command})
            })
            .collect();
        Ok(respond(
            StatusCode::OK,
            json!({"items": items, "next_after": next_after}),
        ))
    }

    /// `GET /api/v1/definitions?name=&limit=&cursor=`: by name then version, paged; the
    /// cursor is the last `name/version` of the page before.
    pub(crate) fn list_definitions(&self, query: &str) -> Result<Response<Body>, ApiError> {
        let (mut name, mut limit, mut after) = (None, DEFAULT_LIMIT, None);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "name" => name = Some(value.into_owned()),
                "limit" => limit = parse_limit(&value)?,
                "cursor" => after = Some(cursor::parse_definition(&value)?),
                other => {
                    return Err(ApiError::bad_request(
                        "invalid_request",
                        format!("unknown query parameter {other:?}; known: name, limit, cursor"),
                    ))
                }
            }
        }
        let all = self.partitions.definitions();
        let page: Vec<&Arc<Definition>> = all
            .iter()
            .filter(|d| name.as_ref().is_none_or(|n| *n == d.name))
            .filter(|d| {
                after
                    .as_ref()
                    .is_none_or(|(n, v)| (d.name.as_str(), d.version) > (n.as_str(), *v))
            })
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        let items: Vec<Value> = page
            .iter()
            .take(limit)
            .map(|d| definition_json(d))
            .collect();
        let next_cursor = more
            .then(|| page.get(limit - 1))
            .flatten()
            .map(|d| cursor::encode_definition(&d.name, d.version));
        Ok(respond(
            StatusCode::OK,
            json!({"items": items, "next_cursor": next_cursor}),
        ))
    }

    pub(crate) async fn put_definition(
        &self,
        name: &str,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        let text = std::str::from_utf8(body).map_err(|_| {
            ApiError::bad_request(crate::error::code::INVALID_JSON, "the body is not UTF-8")
        })?;
        json::parse::<Value>(body)?;
        let definition = Definition::from_json(text).map_err(|e| {
            let status = if e.conflict {
                StatusCode::CONFLICT
            } else {
                StatusCode::BAD_REQUEST
            };
            ApiError::new(status, "invalid_definition", e.to_string())
        })?;
        if definition.name != name {
            // Each part is well formed; together they conflict.
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "name_conflict",
                format!(
                    "name: the body names {:?} but the path names {name:?}",
                    definition.name
                ),
            ));
        }
        let registered = self
            .partitions
            .register_definition(definition.clone())
            .await
            .map_err(ApiError::from)?;
        let mut out = definition_json(&Arc::new(definition));
        out["registered"] = json!(matches!(registered, Registered::New));
        Ok(respond(StatusCode::OK, out))
    }
}

fn definition_json(definition: &Arc<Definition>) -> Value {
    serde_json::from_str(&definition.to_json()).expect("a definition serializes to JSON")
}
