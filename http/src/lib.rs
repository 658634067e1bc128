//! sagalog-http: the HTTP API of http/openapi.yaml and the metrics of docs/server.md, on hyper 1.x.
//!
//! - [`routes`]: the route table (one list the router, the metrics labels and the
//!   OpenAPI test share).
//! - [`app`]: the dispatch — limits and auth first, then the route's handler (in the
//!   private `handlers`: sagas, admin, serving) or the pods it crosses; beside
//!   it [`config`] (its limits), [`readiness`] (what `/readyz` reports of other parts)
//!   and the private `auth` (admin token, origin check), `request` (the body within
//!   its limits, the trace context) and `respond` (JSON and error responses).
//! - [`json`]: request bodies and the fixed response shapes.
//! - [`outbox`]: the long-polled command feed, read from the engine's command feed.
//! - [`overview`]: `GET /api/v1/stats`, the console's overview, and the sampled rates.
//! - [`bulk`]: operator actions on every saga a list filter matches, a page at a time.
//! - [`console`]: the operator console's embedded files and their security headers.
//! - [`query`]: the validators of query strings and path parameters.
//! - [`metrics`]: the Prometheus registry, fed by the engine's and log's observers and
//!   by [`sagalog_engine::Engine::stats`] at each scrape.
//! - [`server`]: the accept loop, connection limit and its overflow lane, the probe
//!   listener, hyper's own answers in the JSON error shape, the graceful stop.
//! - [`cluster`]: the pods of a deployment — forwarding to a saga's pod, asking every
//!   pod, the peers' own client and secret.

pub mod app;
mod auth;
pub mod bulk;
pub mod cgroup;
pub mod cluster;
pub mod config;
pub mod console;
pub mod cursor;
pub mod error;
mod fanout;
#[doc(hidden)]
pub mod fuzzing;
mod handlers;
pub mod json;
pub mod metrics;
pub mod outbox;
pub mod overview;
pub mod query;
pub mod readiness;
mod request;
mod respond;
pub mod routes;
pub mod server;

pub use app::App;
pub use config::ApiConfig;
pub use error::ApiError;
pub use metrics::Metrics;
pub use readiness::Readiness;
pub use server::{serve, serve_probes, ServerConfig};
