//! Shared helpers for sagalog benchmarks and load generators.

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

/// The `p` quantile (0 to 1, nearest rank) of latencies in µs sorted ascending, in ms;
/// 0 when there are none.
pub fn quantile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}
