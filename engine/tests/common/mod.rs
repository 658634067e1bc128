#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sagalog_engine::{
    Clock, Engine, EngineConfig, Outcome, Reply, ReplyAnswer, SagaView, StartRequest,
};
use sagalog_storage::LogConfig;

pub const T0: u64 = 1_700_000_000_000;

/// A clock tests move by hand.
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(T0)))
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn config() -> EngineConfig {
    EngineConfig {
        log: LogConfig {
            segment_bytes: 1 << 20,
            preallocate: false,
            ..LogConfig::default()
        },
        ..EngineConfig::default()
    }
}

pub fn open(dir: &Path, clock: &Arc<ManualClock>) -> Engine {
    Engine::open_with_clock(dir, config(), clock.clone()).expect("engine opens")
}

/// A start request with no trace id.
pub fn request(saga_type: &str, saga_id: Option<&str>, payload: serde_json::Value) -> StartRequest {
    StartRequest {
        saga_type: saga_type.into(),
        saga_id: saga_id.map(str::to_string),
        payload,
        trace_id: None,
    }
}

/// Starts an order saga with the payload `{"order": saga_id, "qty": 2}`.
pub async fn start(engine: &Engine, saga_id: &str) -> SagaView {
    engine
        .start(request(
            "order",
            Some(saga_id),
            serde_json::json!({"order": saga_id, "qty": 2}),
        ))
        .await
        .expect("start")
        .saga
}

/// Replies to the saga's outstanding command with `outcome`.
pub async fn answer(engine: &Engine, saga_id: &str, outcome: Outcome) -> ReplyAnswer {
    let saga = engine.get(saga_id).expect("saga exists");
    let step = saga.current_step.clone().expect("a command is outstanding");
    let attempt = saga
        .steps
        .iter()
        .find(|s| s.name == step)
        .expect("current step is listed")
        .attempts;
    reply_to(engine, saga_id, step, attempt, outcome, String::new())
        .await
        .expect("reply accepted")
}

/// Replies to attempt `attempt` of `step` with `outcome` and `data` (JSON text, empty
/// for none), under an event id made of those.
pub async fn reply_to(
    engine: &Engine,
    saga_id: &str,
    step: String,
    attempt: u32,
    outcome: Outcome,
    data: String,
) -> Result<ReplyAnswer, sagalog_engine::EngineError> {
    engine
        .reply(
            saga_id,
            Reply {
                event_id: format!("{saga_id}/{step}/{attempt}/{}", outcome.as_str()),
                step,
                outcome,
                attempt,
                data,
                reason: String::new(),
            },
        )
        .await
}
