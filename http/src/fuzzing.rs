//! What the `http_bodies` fuzz target in `fuzz/` checks, kept here so that its corpus
//! (and every crash found, saved there) runs as an ordinary test on stable too
//! (`http/tests/fuzz_corpus.rs`). It panics when an invariant breaks.

use std::path::Path;
use std::sync::Arc;

use sagalog_engine::{Clock, Engine, EngineConfig, Partitions, Shutdown, SystemClock};

use crate::app::App;
use crate::config::ApiConfig;
use crate::json;
use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// An app over a new engine in `dir`, with one saga (`fuzz-1`) waiting on its first step.
pub async fn app(dir: &Path) -> Arc<App> {
    let engine = Arc::new(Engine::open(dir, EngineConfig::default()).expect("a scratch engine"));
    let app = Arc::new(App {
        partitions: Arc::new(Partitions::single(engine)),
        cluster: None,
        metrics: Metrics::new(),
        config: ApiConfig::default(),
        clock: Arc::new(SystemClock) as Arc<dyn Clock>,
        stopping: Shutdown::new().1,
        readiness: Readiness::default(),
        activity: Default::default(),
    });
    let start = br#"{"type": "order", "saga_id": "fuzz-1", "payload": {}}"#;
    app.start(start, None)
        .await
        .expect("the fixture saga starts");
    app
}

/// A request body, its first byte choosing the route: a start, a reply, a definition,
/// an operator override. Whatever the rest holds, the answer is a success or a 4xx —
/// never a 5xx, never a panic.
pub async fn bodies(app: &App, bytes: &[u8]) {
    let Some((&route, body)) = bytes.split_first() else {
        return;
    };
    let result = match route % 4 {
        0 => app.start(body, None).await,
        1 => app.reply("fuzz-1", body).await,
        2 => app.put_definition("fuzzed", body).await,
        _ => json::parse::<json::OverrideBody>(body)
            .map(|_| hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()))),
    };
    if let Err(e) = result {
        assert!(
            e.status.is_client_error(),
            "bad input got {} {}: {}",
            e.status,
            e.code,
            e.message
        );
        assert!(!e.message.is_empty());
    }
}
