//! A client for sagalog's HTTP API, and a runner for the
//! services that take part in its sagas.
//!
//! [`Client`] is the typed API: start a saga, reply to a command, read sagas, their
//! history and the definitions, and read the command outbox. [`Participant`] is the
//! loop a participant service runs: it follows its topic on the outbox (as member `i`
//! of `k` replicas when it shares the topic), calls your handler once per command,
//! replies with the command's step and attempt, drops duplicate deliveries by
//! `event_id`, backs off while the server is busy (`503`), keeps its position in a file
//! you name, and stops when you say. With the `kafka` feature,
//! [`Participant::run_kafka`] reads the step's Kafka topic instead, in a consumer
//! group named after the service (so replicas split its partitions).
//!
//! ```no_run
//! use sagalog_client::{Client, Handled, Participant};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), sagalog_client::Error> {
//! let client = Client::new("127.0.0.1:8080".parse().unwrap());
//! // The payment service: charge on execute, refund on compensate.
//! let payment = Participant::new(client.clone(), "payment", "payment.commands")
//!     .position_file("/var/lib/payment/outbox-position");
//! let stop = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! payment
//!     .run(
//!         |command| async move {
//!             match command.action {
//!                 sagalog_client::Action::Execute => {
//!                     let amount = &command.payload["amount_cents"];
//!                     // ... charge `amount` ...
//!                     Handled::Done(Some(json!({"charge_id": "ch_93", "amount": amount})))
//!                 }
//!                 sagalog_client::Action::Compensate => {
//!                     // The charge id comes back in `result` (None after a timeout:
//!                     // look the charge up by saga id; nothing found is success).
//!                     let _charge = command.result.as_ref().map(|r| &r["charge_id"]);
//!                     Handled::Done(None)
//!                 }
//!             }
//!         },
//!         stop,
//!     )
//!     .await?;
//! # Ok(())
//! # }
//! ```

mod http;
#[cfg(feature = "kafka")]
mod kafka;
mod participant;
mod types;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::Value;

pub use participant::{Handled, Participant, Stats};
pub use types::{
    Action, After, Command, HistoryItem, ListQuery, OutboxPage, OutboxQuery, Outcome, Position,
    Reply, ReplyAnswer, Saga, SagaPage, StartSaga, Step,
};

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Transport(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server refused the request: its status, error code and message.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// What `Retry-After` said, for a `503`.
        retry_after: Option<Duration>,
    },
    #[error("an answer that is not what the API says: {0}")]
    Decode(String),
    #[error("the participant's position file {path}: {source}")]
    Position {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Setting up the Kafka consumer failed (feature `kafka`).
    #[error("Kafka: {0}")]
    Kafka(String),
}

impl Error {
    fn from_answer(answer: http::Answer) -> Error {
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let text = |key: &str| body["error"][key].as_str().unwrap_or_default().to_string();
        Error::Api {
            status: answer.status.as_u16(),
            code: text("code"),
            message: text("message"),
            retry_after: answer.retry_after,
        }
    }

    /// The HTTP status, when the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: the server was busy or out of reach.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Api { status, .. } => *status == 503 || *status == 429,
            Error::Connect { .. } | Error::Transport(_) | Error::Timeout(_) => true,
            Error::Decode(_) | Error::Position { .. } | Error::Kafka(_) => false,
        }
    }
}

/// Characters escaped in a path segment (ids are `[A-Za-z0-9._:-]`, but a caller's
/// typo must not change the path).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'/')
    .add(b'?')
    .add(b'#')
    .add(b'%')
    .add(b'"')
    .add(b'<')
    .add(b'>');

fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// The typed HTTP API. Cheap to clone: clones share their connections.
#[derive(Debug, Clone)]
pub struct Client {
    connections: Arc<http::Connections>,
}

impl Client {
    /// A client of the server at `addr`, with no admin token and a 30 s deadline per
    /// request (plus a long poll's wait).
    pub fn new(addr: SocketAddr) -> Client {
        Client::with(addr, None, Duration::from_secs(30))
    }

    /// A client with the admin token (`Authorization: Bearer`) for `/internal/` routes
    /// and registering definitions, and its own deadline per request.
    pub fn with(addr: SocketAddr, token: Option<String>, timeout: Duration) -> Client {
        Client {
            connections: http::Connections::new(addr, token, timeout),
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        want: &[StatusCode],
    ) -> Result<T, Error> {
        self.connections
            .send(method, path, body, Duration::ZERO)
            .await?
            .into_json(want)
    }

    /// Starts a saga; a repeated start with the same id and body returns the saga.
    pub async fn start(&self, start: &StartSaga) -> Result<Saga, Error> {
        let body = serde_json::to_vec(start).expect("a start serializes");
        let want = [StatusCode::CREATED, StatusCode::OK];
        self.call(Method::POST, "/api/v1/sagas", Some(body), &want)
            .await
    }

    /// Sends a participant's reply.
    pub async fn reply(&self, saga_id: &str, reply: &Reply) -> Result<ReplyAnswer, Error> {
        let body = serde_json::to_vec(reply).expect("a reply serializes");
        let path = format!("/api/v1/sagas/{}/events", segment(saga_id));
        let want = [StatusCode::ACCEPTED, StatusCode::OK];
        self.call(Method::POST, &path, Some(body), &want).await
    }

    pub async fn get(&self, saga_id: &str) -> Result<Saga, Error> {
        let path = format!("/api/v1/sagas/{}", segment(saga_id));
        self.call(Method::GET, &path, None, &[StatusCode::OK]).await
    }

    /// Every record of the saga, oldest first.
    pub async fn history(&self, saga_id: &str) -> Result<Vec<HistoryItem>, Error> {
        #[derive(serde::Deserialize)]
        struct History {
            items: Vec<HistoryItem>,
        }
        let path = format!("/api/v1/sagas/{}/history", segment(saga_id));
        let history: History = self
            .call(Method::GET, &path, None, &[StatusCode::OK])
            .await?;
        Ok(history.items)
    }

    /// A page of sagas, newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<SagaPage, Error> {
        let path = format!("/api/v1/sagas?{}", query.to_query());
        self.call(Method::GET, &path, None, &[StatusCode::OK]).await
    }

    /// Every registered definition version, as JSON (all pages).
    pub async fn definitions(&self) -> Result<Vec<Value>, Error> {
        #[derive(serde::Deserialize)]
        struct Page {
            items: Vec<Value>,
            next_cursor: Option<String>,
        }
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("limit", "1000");
            if let Some(cursor) = &cursor {
                q.append_pair("cursor", cursor);
            }
            let path = format!("/api/v1/definitions?{}", q.finish());
            let page: Page = self
                .call(Method::GET, &path, None, &[StatusCode::OK])
                .await?;
            all.extend(page.items);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Registers a definition version (needs the admin token when the server has one).
    pub async fn put_definition(&self, definition: &Value) -> Result<Value, Error> {
        let name = definition["name"].as_str().unwrap_or_default();
        let path = format!("/api/v1/definitions/{}", segment(name));
        let body = serde_json::to_vec(definition).expect("JSON serializes");
        self.call(Method::PUT, &path, Some(body), &[StatusCode::OK])
            .await
    }

    /// One page of the command outbox (a long poll when `query.wait_ms` is set).
    pub async fn outbox(&self, query: &OutboxQuery) -> Result<OutboxPage, Error> {
        let path = format!("/api/v1/outbox?{}", query.to_query());
        let wait = Duration::from_millis(query.wait_ms);
        self.connections
            .send(Method::GET, &path, None, wait)
            .await?
            .into_json(&[StatusCode::OK])
    }
}
