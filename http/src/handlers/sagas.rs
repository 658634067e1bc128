//! The handlers of a saga's routes: start, reply, get, history, and the list of sagas.

use std::time::Instant;

use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use sagalog_engine::wire::ReplyMessage;
use sagalog_engine::{Routed, StartRequest};

use crate::app::App;
use crate::error::ApiError;
use crate::json;
use crate::query::{list_query, saga_id, DEFAULT_LIMIT};
use crate::respond::{respond, Body};

impl App {
    pub(crate) fn get_saga(&self, param: &str) -> Result<Response<Body>, ApiError> {
        let id = saga_id(param)?;
        let engine = self.engine_of(id)?;
        let view = self.timed("get", || engine.get(id))?;
        Ok(respond(StatusCode::OK, json::saga(&view)))
    }

    pub(crate) async fn start(
        &self,
        body: &[u8],
        trace_id: Option<String>,
    ) -> Result<Response<Body>, ApiError> {
        let body: json::StartBody = json::parse(body)?;
        if let Some(id) = &body.saga_id {
            saga_id(id)?;
        }
        let payload = match body.payload {
            Some(raw) => {
                json::require_object("payload", raw)?;
                serde_json::from_str(raw.get()).map_err(|e| {
                    ApiError::bad_request(crate::error::code::INVALID_JSON, format!("payload: {e}"))
                })?
            }
            None => json!({}),
        };
        let answer = self
            .partitions
            .start(StartRequest {
                saga_type: body.saga_type,
                saga_id: body.saga_id,
                payload,
                trace_id,
            })
            .await
            .map_err(|e| match e {
                Routed::Elsewhere(p) => self.not_held(p),
                Routed::Engine(e) => ApiError::from(e),
            })?;
        let status = if answer.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(respond(status, json::saga(&answer.saga)))
    }

    pub(crate) async fn reply(&self, id: &str, body: &[u8]) -> Result<Response<Body>, ApiError> {
        let id = saga_id(id)?;
        let body: ReplyMessage = json::parse(body)?;
        if body.saga_id.is_some() {
            return Err(ApiError::bad_request(
                "invalid_request",
                "saga_id: the path names the saga; leave it out of the body",
            ));
        }
        if let Some(data) = body.data {
            json::require_object("data", data)?;
        }
        let step = body.step.clone();
        let outcome: sagalog_engine::Outcome = body.outcome.into();
        let reply = body.into_reply();
        match self.engine_of(id)?.reply(id, reply).await {
            Ok(answer) => {
                if !answer.repeated {
                    self.metrics.event(&step, outcome.as_str());
                }
                let status = if answer.repeated {
                    StatusCode::OK
                } else {
                    StatusCode::ACCEPTED
                };
                Ok(respond(
                    status,
                    json!({"saga_id": answer.saga_id, "status": answer.status.as_str(),
                           "offset": answer.offset}),
                ))
            }
            Err(e) => {
                let e = ApiError::from(e);
                if e.status.is_client_error() {
                    self.metrics.event(&step, "rejected");
                }
                Err(e)
            }
        }
    }

    pub(crate) async fn history(&self, id: &str) -> Result<Response<Body>, ApiError> {
        let id = saga_id(id)?;
        let started = Instant::now();
        let engine = self.engine_of(id)?;
        let items = engine.history(id).await;
        self.metrics.query("history", started.elapsed());
        let items = items.map_err(ApiError::from)?;
        let definition = items.first().and_then(|first| match &first.record.kind {
            sagalog_engine::Kind::SagaStarted {
                saga_type,
                definition_version,
                ..
            } => engine
                .definitions()
                .into_iter()
                .find(|d| &d.name == saga_type && d.version == *definition_version),
            _ => None,
        });
        let items: Vec<Value> = items
            .iter()
            .map(|item| json::history_item(item, definition.as_deref()))
            .collect();
        Ok(respond(
            StatusCode::OK,
            json!({"saga_id": id, "items": items}),
        ))
    }

    pub(crate) async fn list(&self, query: &str) -> Result<Response<Body>, ApiError> {
        let list = list_query(query, DEFAULT_LIMIT)?;
        let started = Instant::now();
        let page = self.partitions.list(&list).await;
        self.metrics.query("list", started.elapsed());
        let page = page?;
        let page_body = json::SagaPage {
            items: page.items.iter().map(json::saga).collect(),
            next_cursor: page.next_cursor.as_deref(),
        };
        Ok(respond(StatusCode::OK, page_body))
    }
}
