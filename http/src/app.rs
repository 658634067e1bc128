//! `App` and its dispatch: each request of http/openapi.yaml routed, with the limits
//! checked first (origin, auth, body size; the handlers then check JSON nesting, ids
//! and `limit`) so that bad input gets a clear 4xx and changes nothing, then answered
//! here (the handlers in `handlers/`) or across the pods (`fanout.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use sagalog_engine::throttle::Throttle;
use sagalog_engine::{Clock, Engine, Partitions, Shutdown};

use crate::auth::{check_admin, same_origin};
use crate::bulk;
use crate::config::ApiConfig;
use crate::console;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::overview::Activity;
use crate::query::path_segment;
use crate::readiness::Readiness;
use crate::request::{read_body, trace_id_of};
use crate::respond::{error_response, respond, Body};
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

    /// The engine of `saga_id`'s partition (`503` naming the partition when this server
    /// does not hold it).
    pub(crate) fn engine_of(&self, saga_id: &str) -> Result<&Arc<Engine>, ApiError> {
        self.partitions.owner(saga_id).map_err(|p| self.not_held(p))
    }

    /// The engine of partition `p`.
    pub(crate) fn partition(&self, p: u32) -> Result<&Arc<Engine>, ApiError> {
        self.partitions.get(p).ok_or_else(|| self.not_held(p))
    }

    pub(crate) fn not_held(&self, p: u32) -> ApiError {
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

    pub(crate) fn timed<T>(
        &self,
        query: &str,
        f: impl FnOnce() -> sagalog_engine::error::Result<T>,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        let result = f();
        self.metrics.query(query, started.elapsed());
        Ok(result?)
    }
}

/// How long a shutdown waits for requests in flight before it gives up on them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
