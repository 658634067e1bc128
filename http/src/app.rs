//! The request handlers: each route of http/openapi.yaml turned into one engine call, with the
//! limits checked first (auth, body size, JSON nesting, ids, `limit`) so that bad input
//! gets a clear 4xx and changes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use sagalog_engine::definition::Registered;
use sagalog_engine::throttle::Throttle;
use sagalog_engine::wire::ReplyMessage;
use sagalog_engine::{
    Clock, Definition, Engine, Operation, Partitions, Routed, Shutdown, StartRequest, Status,
};

use crate::auth::{check_admin, same_origin};
use crate::bulk;
use crate::config::ApiConfig;
use crate::console;
use crate::error::ApiError;
use crate::json;
use crate::metrics::Metrics;
use crate::outbox::{self, OutboxQuery};
use crate::overview::{self, Activity};
use crate::query::{
    list_query, parse_definition_cursor, parse_limit, parse_u64, path_segment, saga_id,
    DEFAULT_LIMIT,
};
use crate::readiness::Readiness;
use crate::request::{read_body, trace_id_of};
use crate::respond::{error_response, respond, respond_bytes, Body};
use crate::routes::{route, Matched, Route, Scope};

pub struct App {
    /// The engines of the partitions this server holds.
    pub partitions: Arc<Partitions>,
    /// The other pods of the deployment, with `--nodes` over 1.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub metrics: Arc<Metrics>,
    pub config: ApiConfig,
    pub clock: Arc<dyn Clock>,
    /// True once shutdown began: `/readyz` fails and long polls return.
    pub stopping: Shutdown,
    /// Problems other parts report (the relay's missing topics): `/readyz` fails while
    /// there are any.
    pub readiness: Readiness,
    /// The engine's running totals over the last minutes (`GET /api/v1/stats`), sampled
    /// while [`crate::serve`] runs.
    pub activity: Activity,
}

/// What a route's handler may read of its request.
struct Here<'a> {
    param: &'a str,
    query: &'a str,
    body: &'a Bytes,
    trace_id: Option<String>,
    from_peer: bool,
}

/// Server errors of one kind (a full disk answers every write with the same 503) are
/// logged once per this interval, with the count held back.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
static FAILED_REQUESTS: std::sync::LazyLock<Throttle> =
    std::sync::LazyLock::new(|| Throttle::new(ERROR_LOG_EVERY));

impl App {
    /// Answers one request, timing it under its route pattern.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        if console::is_console(&path) {
            let response = console::respond(&method, &path, request.headers());
            self.metrics
                .api_request(console::PREFIX, method.as_str(), started.elapsed());
            return response;
        }
        let (endpoint, result) = match route(&method, &path) {
            Ok(matched) => {
                let pattern = matched.pattern;
                (pattern, self.dispatch(matched, request).await)
            }
            Err(e) => ("unmatched", Err(e)),
        };
        let response = result.unwrap_or_else(|e| {
            if e.status == StatusCode::REQUEST_TIMEOUT {
                self.metrics.service.body_timeouts.inc();
            }
            if let Some(reason) = e.refusal {
                self.metrics
                    .service
                    .refused
                    .with_label_values(&[reason])
                    .inc();
            }
            if e.is_server_error() {
                let kind = format!("{}:{}", e.status.as_u16(), e.refusal.unwrap_or(e.code));
                if let Some(held_back) = FAILED_REQUESTS.admit(&kind, Instant::now()) {
                    tracing::warn!(%method, %path, code = e.code, message = %e.message, held_back, "request failed");
                }
            }
            error_response(&e)
        });
        self.metrics
            .api_request(endpoint, method.as_str(), started.elapsed());
        response
    }

    async fn dispatch(
        &self,
        matched: Matched<'_>,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            same_origin(request.headers())?;
        }
        if matched.needs_admin() {
            check_admin(
                request.headers(),
                self.config.admin_token.as_deref(),
                matched.route,
            )?;
        }
        let param = path_segment(matched.param.unwrap_or_default())?;
        let query = request.uri().query().unwrap_or_default().to_string();
        let trace_id = request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(trace_id_of);
        // With other pods: a request of a peer is answered from this pod's partitions;
        // a client's goes to the saga's pod, or to every pod.
        let mut from_peer = false;
        let cluster = match &self.cluster {
            Some(cluster) => match cluster.from_peer(request.headers()) {
                Some(true) => {
                    from_peer = true;
                    None
                }
                Some(false) => {
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "the x-sagalog-peer header does not carry this cluster's secret",
                    ))
                }
                None => Some((cluster.clone(), crate::cluster::Asked::of(&request, &query))),
            },
            None => None,
        };
        let body = read_body(request, &self.config, self.stopping.clone()).await?;
        let here = Here {
            param: &param,
            query: &query,
            body: &body,
            trace_id,
            from_peer,
        };
        let Some((cluster, asked)) = cluster else {
            return self
                .answer_here(matched.route, here)
                .await
                .map_err(|e| self.counted(e));
        };
        if let Some(answer) = self
            .across_pods(&cluster, &asked, &matched, &param, &body)
            .await
        {
            return answer.map_err(|e| self.counted(e));
        }
        let result = match self.answer_here(matched.route, here).await {
            Ok(local) if matched.scope == Scope::Everywhere => {
                self.everywhere(&cluster, &asked, &body, local).await
            }
            result => result,
        };
        result.map_err(|e| self.counted(e))
    }

    /// The answer of this pod alone, from its own partitions.
    async fn answer_here(&self, route: Route, here: Here<'_>) -> Result<Response<Body>, ApiError> {
        let Here {
            param,
            query,
            body,
            trace_id,
            from_peer,
        } = here;
        match route {
            Route::StartSaga => self.start(body, trace_id).await,
            Route::Reply => self.reply(param, body).await,
            Route::GetSaga => self.get_saga(param),
            Route::History => self.history(param).await,
            Route::ListSagas => self.list(query).await,
            Route::Stats => self.stats().await,
            Route::Outbox => self.outbox(query, from_peer).await,
            Route::PutDefinition => self.put_definition(param, body).await,
            Route::ListDefinitions => self.list_definitions(query),
            Route::OverrideStatus => self.override_status(param, body).await,
            Route::Retry => self.retry(param).await,
            Route::BulkRetry => self.bulk(bulk::retry(body)?, query).await,
            Route::BulkOverride => self.bulk(bulk::override_status(body)?, query).await,
            Route::DeadLetters => self.dead_letters(query),
            Route::ReplayDeadLetter => self.replay_dead_letter(param, query).await,
            Route::Snapshot => self.snapshot().await,
            Route::Delivery => {
                let delivery = self.partitions.first().delivery();
                Ok(self.delivery_response(None, &delivery))
            }
            Route::Pause => self.pause(body).await,
            Route::Resume => self.resume(body).await,
            Route::Metrics => Ok(self.metrics_response()),
            Route::Healthz => Ok(respond(StatusCode::OK, json!({"status": "ok"}))),
            Route::Readyz => self.ready(),
        }
    }

    fn get_saga(&self, param: &str) -> Result<Response<Body>, ApiError> {
        let id = saga_id(param)?;
        let engine = self.engine_of(id)?;
        let view = self.timed("get", || engine.get(id))?;
        Ok(respond(StatusCode::OK, json::saga(&view)))
    }

    async fn outbox(&self, query: &str, from_peer: bool) -> Result<Response<Body>, ApiError> {
        let query = OutboxQuery::parse(query, self.config.max_outbox_wait_ms)?;
        let page = outbox::poll(&self.partitions, &query, self.stopping.clone(), from_peer).await?;
        Ok(respond_bytes(StatusCode::OK, page))
    }

    async fn override_status(&self, param: &str, body: &[u8]) -> Result<Response<Body>, ApiError> {
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

    async fn retry(&self, param: &str) -> Result<Response<Body>, ApiError> {
        let id = saga_id(param)?;
        let view = self.engine_of(id)?.retry(id).await?;
        Ok(respond(StatusCode::ACCEPTED, json::saga(&view)))
    }

    async fn bulk(&self, operation: Operation, query: &str) -> Result<Response<Body>, ApiError> {
        let body = bulk::run(&self.partitions, operation, query, self.clock.now_ms()).await?;
        Ok(respond(StatusCode::OK, body))
    }

    /// Off the async runtime: it scans the sagas in memory and counts dead letters.
    async fn stats(&self) -> Result<Response<Body>, ApiError> {
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

    /// With more than one partition, the dead letter's partition is `?partition=N`.
    async fn replay_dead_letter(
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
    fn delivery_response(
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
    async fn snapshot(&self) -> Result<Response<Body>, ApiError> {
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

    /// The engine of `saga_id`'s partition (`503` naming the partition when this server
    /// does not hold it).
    fn engine_of(&self, saga_id: &str) -> Result<&Arc<Engine>, ApiError> {
        self.partitions.owner(saga_id).map_err(|p| self.not_held(p))
    }

    /// The engine of partition `p`.
    fn partition(&self, p: u32) -> Result<&Arc<Engine>, ApiError> {
        self.partitions.get(p).ok_or_else(|| self.not_held(p))
    }

    fn not_held(&self, p: u32) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "partition_unavailable",
            format!(
                "partition {p} of {} is not held by this server",
                self.partitions.count()
            ),
        )
    }

    pub(crate) fn counted(&self, e: ApiError) -> ApiError {
        if e.storage {
            self.metrics.storage_error();
        }
        e
    }

    fn timed<T>(
        &self,
        query: &str,
        f: impl FnOnce() -> sagalog_engine::error::Result<T>,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        let result = f();
        self.metrics.query(query, started.elapsed());
        Ok(result?)
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

    async fn history(&self, id: &str) -> Result<Response<Body>, ApiError> {
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

    async fn list(&self, query: &str) -> Result<Response<Body>, ApiError> {
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

    /// With one partition `after` is an offset; with more, `PARTITION.OFFSET` (the
    /// `next_after` of the page before), dead letters going by partition, then offset.
    pub(crate) fn dead_letters(&self, query: &str) -> Result<Response<Body>, ApiError> {
        let several = self.partitions.count() > 1;
        let (mut after, mut limit) = (None, DEFAULT_LIMIT);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "after" if several => after = Some(parse_dead_letter_after(&value)?),
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
            Some((p, offset)) if several => json!(format!("{p}.{offset}")),
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
    fn list_definitions(&self, query: &str) -> Result<Response<Body>, ApiError> {
        let (mut name, mut limit, mut after) = (None, DEFAULT_LIMIT, None);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "name" => name = Some(value.into_owned()),
                "limit" => limit = parse_limit(&value)?,
                "cursor" => after = Some(parse_definition_cursor(&value)?),
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
            .map(|d| format!("{}/{}", d.name, d.version));
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

    fn metrics_response(&self) -> Response<Body> {
        let text = self.metrics.render(&self.partitions, self.clock.now_ms());
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    fn ready(&self) -> Result<Response<Body>, ApiError> {
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

/// A dead-letter cursor of a partitioned server: `PARTITION.OFFSET`.
fn parse_dead_letter_after(value: &str) -> Result<(u32, u64), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_request",
            format!("after: {value:?} is not PARTITION.OFFSET (a next_after this server returned)"),
        )
    };
    let (p, offset) = value.split_once('.').ok_or_else(bad)?;
    Ok((
        p.parse().map_err(|_| bad())?,
        offset.parse().map_err(|_| bad())?,
    ))
}

fn definition_json(definition: &Arc<Definition>) -> Value {
    serde_json::from_str(&definition.to_json()).expect("a definition serializes to JSON")
}

/// How long a shutdown waits for requests in flight before it gives up on them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
