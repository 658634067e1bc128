//! Pods of one deployment (`--nodes R`): each holds the partitions its [`Placement`]
//! gives it, and any pod answers any request. A request for a saga of another pod's
//! partition is forwarded to that pod and its answer passed back as it came; what spans
//! partitions (lists, the outbox, dead letters) is asked of every pod and merged;
//! definitions and delivery pauses are sent to every pod.
//!
//! Peers talk over a keep-alive client with bounded connections, requests in flight
//! and timeouts. Each request a pod sends a peer carries the cluster secret in
//! [`PEER_HEADER`]; a request with it is answered from the pod's own partitions only,
//! never forwarded again (so a misconfigured peer cannot make requests go round). A
//! wrong secret is refused. The admin token travels with forwarded requests as the
//! client sent it, and the owner checks it again.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;

use sagalog_engine::Placement;

use crate::error::{refuses_reply_for_good, ApiError};

/// Carries the cluster secret on the requests pods send each other.
pub const PEER_HEADER: &str = "x-sagalog-peer";
/// Longest a peer may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a forwarded request may take beyond what it asks to wait (an outbox long
/// poll's `wait_ms`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive connections kept per peer, and how long.
const IDLE_PER_PEER: usize = 32;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests to peers in flight at once, all peers together (and as many long polls
/// besides); past it a request waits for a turn (bounded by its timeout).
const MAX_IN_FLIGHT: usize = 512;
/// Largest answer read from a peer (a list page is at most `--max-list-bytes`).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Who this pod is among how many (as configured), and how to reach the others.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: u32,
    pub nodes: u32,
    /// A peer's base URL with `{i}` for its ordinal (`http://sagalog-{i}.sagalog-headless:8080`).
    pub peer_url_template: String,
    pub secret: String,
}

pub struct Cluster {
    config: ClusterConfig,
    placement: Placement,
    client: Client<HttpConnector, Full<Bytes>>,
    turns: Semaphore,
    /// Turns of the requests that may wait (outbox long polls): apart, so that they
    /// never hold up a saga's forwarded request or a health check.
    waiting_turns: Semaphore,
}

/// What a client asked, kept to ask a peer the same.
pub struct Asked {
    pub(crate) method: Method,
    pub(crate) path_and_query: String,
    pub(crate) headers: HeaderMap,
    pub(crate) query: String,
}

impl Asked {
    pub fn of(request: &Request<Incoming>, query: &str) -> Asked {
        Asked {
            method: request.method().clone(),
            path_and_query: request.uri().path_and_query().map_or_else(
                || request.uri().path().to_string(),
                |p| p.as_str().to_string(),
            ),
            headers: request.headers().clone(),
            query: query.to_string(),
        }
    }
}

/// A peer's answer: its status, headers and body.
#[derive(Debug)]
pub struct PeerAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl PeerAnswer {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The answer as the client gets it: status, content type, `Retry-After`, body.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        for name in [CONTENT_TYPE, RETRY_AFTER, hyper::header::ALLOW] {
            if let Some(value) = self.headers.get(&name) {
                response.headers_mut().insert(name, value.clone());
            }
        }
        response
    }
}

impl Cluster {
    /// The pods of `placement` (whose pods are `config`'s), reached as `config` says.
    pub fn new(config: ClusterConfig, placement: Placement) -> Cluster {
        assert_eq!(
            (placement.node(), placement.nodes()),
            (config.node_id, config.nodes),
            "a cluster's placement is of its configured pods"
        );
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(IDLE_PER_PEER)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Cluster {
            config,
            placement,
            client,
            turns: Semaphore::new(MAX_IN_FLIGHT),
            waiting_turns: Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    /// Where the deployment's sagas live, seen from this pod.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The pod that holds partition `p`.
    pub fn node_of(&self, p: u32) -> u32 {
        self.placement.node_of(p)
    }

    /// Every other pod.
    pub fn peers(&self) -> impl Iterator<Item = u32> {
        self.placement.peers()
    }

    /// The base URL of pod `node`.
    pub fn url_of(&self, node: u32) -> String {
        self.config
            .peer_url_template
            .replace("{i}", &node.to_string())
            .trim_end_matches('/')
            .to_string()
    }

    /// Whether the request came from a peer: `Some(true)` with the right secret,
    /// `Some(false)` with a wrong one, `None` without the header.
    pub fn from_peer(&self, headers: &HeaderMap) -> Option<bool> {
        let given = headers.get(PEER_HEADER)?;
        Some(crate::auth::constant_time_eq(
            given.as_bytes(),
            self.config.secret.as_bytes(),
        ))
    }

    /// Sends `method path_and_query` with `body` to pod `node`, with the client's
    /// `Authorization`, `Content-Type` and `traceparent` and the cluster secret; waits
    /// at most `extra_wait` more than [`REQUEST_TIMEOUT`]. A peer that cannot be reached
    /// or does not answer in time is `503 partition_unavailable`, naming it (see
    /// [`unavailable`] for what the caller adds).
    pub async fn send(
        &self,
        node: u32,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
        extra_wait: Duration,
    ) -> Result<PeerAnswer, ApiError> {
        let url = self.url_of(node);
        let down = |why: String| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "partition_unavailable",
                format!("node {node} ({url}), which holds it, does not answer: {why}"),
            )
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{url}{path_and_query}"));
        for name in [
            AUTHORIZATION,
            CONTENT_TYPE,
            HeaderName::from_static("traceparent"),
        ] {
            if let Some(value) = headers.get(&name) {
                request = request.header(name, value.clone());
            }
        }
        let secret = HeaderValue::from_str(&self.config.secret)
            .map_err(|_| down("the cluster secret is not a valid header value".into()))?;
        let request = request
            .header(PEER_HEADER, secret)
            .body(Full::new(body))
            .map_err(|e| down(format!("the request cannot be built: {e}")))?;
        let exchange = async {
            let turns = if extra_wait.is_zero() {
                &self.turns
            } else {
                &self.waiting_turns
            };
            let _turn = turns
                .acquire()
                .await
                .map_err(|_| down("shutting down".into()))?;
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| down(error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| down(format!("reading its answer: {e}")))?
                .to_bytes();
            Ok(PeerAnswer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let limit = REQUEST_TIMEOUT + extra_wait;
        tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or_else(|_| Err(down(format!("no answer within {limit:?}"))))
    }
}

impl Cluster {
    /// `POST path` with a JSON `body` to pod `node` (see [`Cluster::send`]).
    async fn post_json(
        &self,
        node: u32,
        path: &str,
        body: Vec<u8>,
    ) -> Result<PeerAnswer, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.send(
            node,
            Method::POST,
            path,
            &headers,
            body.into(),
            Duration::ZERO,
        )
        .await
    }

    /// Hands a reply read from Kafka for `saga_id`, of partition `p` that another pod
    /// holds, to that pod as a client's reply (`body` without `saga_id`, which the path
    /// names). `Ok` when it was taken, or refused for what it is as it would be here
    /// (see [`refuses_reply_for_good`]: it is not tried again); `Err`, saying why, when
    /// it may be taken later.
    pub async fn forward_reply(&self, p: u32, saga_id: &str, body: Vec<u8>) -> Result<(), String> {
        let what = format!("partition {p} of {}", self.placement.partitions());
        let answer = self
            .post_json(
                self.node_of(p),
                &format!("/api/v1/sagas/{saga_id}/events"),
                body,
            )
            .await
            .map_err(|e| unavailable(e, &what).message)?;
        let code = serde_json::from_slice::<ErrorBody>(&answer.body).map(|b| b.error.code);
        if answer.status.is_success()
            || code.is_ok_and(|code| refuses_reply_for_good(answer.status, &code))
        {
            return Ok(());
        }
        Err(format!(
            "its pod answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        ))
    }
}

/// The API's error body, as a peer sends it.
#[derive(serde::Deserialize)]
struct ErrorBody {
    error: ErrorFields,
}

#[derive(serde::Deserialize)]
struct ErrorFields {
    code: String,
}

/// How often each peer's health is checked, for `sagalog_peer_up`.
const WATCH_EVERY: Duration = Duration::from_secs(5);

impl Cluster {
    /// Checks every peer's `/healthz` now and every [`WATCH_EVERY`] until the stop,
    /// setting `sagalog_peer_up{node}`.
    pub async fn watch(
        self: std::sync::Arc<Self>,
        metrics: std::sync::Arc<crate::Metrics>,
        mut stopping: sagalog_engine::Shutdown,
    ) {
        let mut every = tokio::time::interval(WATCH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stopping.wait() => return,
            }
            for node in self.peers() {
                let answer = self
                    .send(
                        node,
                        Method::GET,
                        "/healthz",
                        &HeaderMap::new(),
                        Bytes::new(),
                        Duration::ZERO,
                    )
                    .await;
                let up = matches!(&answer, Ok(a) if a.status == StatusCode::OK);
                if !up {
                    tracing::debug!(node, "a peer does not answer its health check");
                }
                metrics
                    .service
                    .peer_up
                    .with_label_values(&[node.to_string().as_str()])
                    .set(i64::from(up));
            }
        }
    }
}

/// A peer's error, saying `what` of the deployment it makes unavailable (`partition 3
/// of 6`).
pub fn unavailable(mut e: ApiError, what: &str) -> ApiError {
    e.message = format!("{what} is unavailable: {}", e.message);
    e
}

/// An error with its causes, as one line (hyper's client errors say little alone).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
