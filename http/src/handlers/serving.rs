//! The handlers of what the server says about itself and hands out: the outbox long
//! poll, the stats, the metrics and readiness.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::app::App;
use crate::error::ApiError;
use crate::outbox::{self, OutboxQuery};
use crate::overview;
use crate::respond::{respond, respond_bytes, Body};

impl App {
    pub(crate) async fn outbox(
        &self,
        query: &str,
        from_peer: bool,
    ) -> Result<Response<Body>, ApiError> {
        let query = OutboxQuery::parse(query, self.config.max_outbox_wait_ms)?;
        let page = outbox::poll(&self.partitions, &query, self.stopping.clone(), from_peer).await?;
        Ok(respond_bytes(StatusCode::OK, page))
    }

    /// Off the async runtime: it scans the sagas in memory and counts dead letters.
    pub(crate) async fn stats(&self) -> Result<Response<Body>, ApiError> {
        let now_ms = self.clock.now_ms();
        let required = self.config.admin_token.is_some();
        let (partitions, activity) = (self.partitions.clone(), self.activity.clone());
        let started = Instant::now();
        // A few at a time (anyone may ask): the others wait their turn.
        let turn = overview::TURNS.acquire().await.map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "shutting down",
            )
        })?;
        let body = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            overview::stats(&partitions, &activity, now_ms, required)
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the overview's task failed: {e}"),
            )
        })?;
        self.metrics.query("stats", started.elapsed());
        Ok(respond(StatusCode::OK, body?))
    }

    pub(crate) fn metrics_response(&self) -> Response<Body> {
        let text = self.metrics.render(&self.partitions, self.clock.now_ms());
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    pub(crate) fn ready(&self) -> Result<Response<Body>, ApiError> {
        let not_ready =
            |reason: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason);
        if self.stopping.is_set() {
            return Err(not_ready("shutting down".into()));
        }
        let several = self.partitions.count() > 1;
        for (p, engine) in self.partitions.local() {
            let log = if several {
                format!("the log of partition {p}")
            } else {
                "the log".to_string()
            };
            let health = engine.log_health();
            if let Some(reason) = health.poisoned {
                return Err(not_ready(format!("{log} cannot be written: {reason}")));
            }
            if let Some(reason) = health.refusing {
                return Err(not_ready(format!("{log} refuses writes: {reason}")));
            }
        }
        let problems = self.readiness.problems();
        if !problems.is_empty() {
            return Err(not_ready(problems.join("; ")));
        }
        let mut notes = self.readiness.notes();
        let delivery = self.partitions.first().delivery();
        if !delivery.is_open() {
            // Paused on purpose: the API, replies and reads go on, so the pod stays ready.
            notes.insert("delivery", delivery.describe());
        }
        if notes.is_empty() {
            return Ok(respond(StatusCode::OK, json!({"status": "ready"})));
        }
        Ok(respond(
            StatusCode::OK,
            json!({"status": "ready", "notes": notes}),
        ))
    }
}
