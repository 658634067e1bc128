//! Shared helpers for sagalog benchmarks and load generators.

pub mod process;

use sagalog_engine::{Engine, EngineConfig, StartRequest};

/// Starts an order saga with id `saga_id` and a small payload, through the engine API.
pub async fn start_order(engine: &Engine, saga_id: String) {
    engine
        .start(StartRequest {
            saga_type: "order".into(),
            saga_id: Some(saga_id),
            payload: serde_json::json!({"sku": "A-1", "qty": 2}),
            trace_id: None,
        })
        .await
        .unwrap();
}

/// A multi-threaded runtime and an engine in a fresh temporary directory, with no
/// periodic snapshots (so a benchmark measures one thing).
pub fn engine_in_tempdir() -> (tokio::runtime::Runtime, tempfile::TempDir, EngineConfig) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        snapshot_every_records: 0,
        ..EngineConfig::default()
    };
    (runtime, dir, config)
}
