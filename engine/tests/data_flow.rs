//! Data between steps: what a step's success reply carries reaches every later command
//! of its saga as `results` (and a compensation as `result`), a step that timed out on
//! its last attempt is compensated first with `after_timeout`, and both hold when the
//! engine restarts mid-saga, from a snapshot or from the whole log.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{open, request, ManualClock};
use sagalog_engine::decider::MAX_BACKOFF_MS;
use sagalog_engine::{Engine, EngineConfig, ErrorClass, Outcome};
use serde_json::{json, Value};

/// How the engine restarts halfway through the sagas.
#[derive(Debug, Clone, Copy)]
enum Restart {
    /// From the snapshot taken just before closing.
    FromSnapshot,
    /// With no snapshot: every record is folded again.
    FullReplay,
}

/// Every command the log holds for `saga_id`, as the JSON participants get.
fn commands(engine: &Engine, saga_id: &str) -> Vec<Value> {
    let records = engine.log().read_batch(0, 100_000, 64 << 20).unwrap();
    engine
        .commands(&records)
        .unwrap()
        .into_iter()
        .filter(|c| c.saga_id == saga_id)
        .map(|c| serde_json::from_slice(&c.to_json()).unwrap())
        .collect()
}

fn last_command(engine: &Engine, saga_id: &str) -> Value {
    commands(engine, saga_id).pop().expect("a command")
}

/// Answers the saga's outstanding command with `outcome` and `data`.
async fn reply(engine: &Engine, saga_id: &str, outcome: Outcome, data: Value) {
    try_reply(engine, saga_id, outcome, data).await.unwrap();
}

async fn try_reply(
    engine: &Engine,
    saga_id: &str,
    outcome: Outcome,
    data: Value,
) -> Result<(), sagalog_engine::EngineError> {
    let command = last_command(engine, saga_id);
    let step = command["step"].as_str().unwrap().to_string();
    let attempt = command["attempt"].as_u64().unwrap() as u32;
    let data = if data.is_null() {
        String::new()
    } else {
        data.to_string()
    };
    common::reply_to(engine, saga_id, step, attempt, outcome, data)
        .await
        .map(|_| ())
}

async fn restart(dir: &Path, clock: &Arc<ManualClock>, engine: Engine, how: Restart) -> Engine {
    match how {
        Restart::FromSnapshot => {
            engine.snapshot().await.unwrap();
            drop(engine);
        }
        Restart::FullReplay => {
            drop(engine);
            let _ = std::fs::remove_dir_all(dir.join("snapshots"));
        }
    }
    let engine = open(dir, clock);
    let snapshot_offset = engine.stats().snapshot_offset;
    match how {
        Restart::FromSnapshot => assert!(snapshot_offset > 0),
        Restart::FullReplay => assert_eq!(snapshot_offset, 0),
    }
    engine
}

async fn data_flows_through_a_restart(how: Restart) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let mut engine = open(dir.path(), &clock);
    for id in ["ship", "refund"] {
        engine
            .start(request("order", Some(id), json!({"order": id})))
            .await
            .unwrap();
        let first = last_command(&engine, id);
        assert_eq!(first["results"], json!({}), "nothing succeeded yet");
        reply(
            &engine,
            id,
            Outcome::Succeeded,
            json!({"reservation": "r-7"}),
        )
        .await;
    }
    // "refund": the charge goes out a third and last time; then "ship"'s succeeds
    // (after the clock moved, so that its ship_order command is fresh).
    for _ in 0..2 {
        clock.advance(30_000);
        engine.run_due_timers().await;
        clock.advance(MAX_BACKOFF_MS);
        engine.run_due_timers().await;
    }
    let charge = last_command(&engine, "refund");
    assert_eq!(
        (charge["step"].as_str(), charge["attempt"].as_u64()),
        (Some("charge_payment"), Some(3))
    );
    assert_eq!(
        charge["results"],
        json!({"reserve_inventory": {"reservation": "r-7"}})
    );
    assert!(charge.get("result").is_none() && charge.get("after_timeout").is_none());
    reply(
        &engine,
        "ship",
        Outcome::Succeeded,
        json!({"charge": "c-9"}),
    )
    .await;

    engine = restart(dir.path(), &clock, engine, how).await;

    // ship_order sees both results; an operator then fails the saga, which undoes the
    // charge with the charge's own data.
    let ship = last_command(&engine, "ship");
    assert_eq!(ship["step"], "ship_order");
    assert_eq!(
        ship["results"],
        json!({"reserve_inventory": {"reservation": "r-7"}, "charge_payment": {"charge": "c-9"}})
    );
    engine
        .override_status("ship", sagalog_engine::Status::Failed, "cancelled".into())
        .await
        .unwrap();
    let undo_charge = last_command(&engine, "ship");
    assert_eq!(
        (undo_charge["step"].as_str(), undo_charge["action"].as_str()),
        (Some("charge_payment"), Some("compensate"))
    );
    assert_eq!(undo_charge["result"], json!({"charge": "c-9"}));
    assert_eq!(undo_charge["after_timeout"], false);
    assert_eq!(undo_charge["results"], ship["results"]);
    let view = engine.get("ship").unwrap();
    let results: Vec<_> = view.steps.iter().map(|s| s.result.as_deref()).collect();
    assert_eq!(
        results,
        [
            Some(r#"{"reservation":"r-7"}"#),
            Some(r#"{"charge":"c-9"}"#),
            None
        ]
    );

    // The charge's last attempt times out: it may have gone through, so it is undone
    // first, saying so, and then the reservation.
    clock.advance(30_000);
    engine.run_due_timers().await;
    let undo = last_command(&engine, "refund");
    assert_eq!(
        (undo["step"].as_str(), undo["action"].as_str()),
        (Some("charge_payment"), Some("compensate")),
        "{undo}"
    );
    assert_eq!(undo["after_timeout"], true);
    assert_eq!(undo["result"], Value::Null);
    assert_eq!(
        engine.get("refund").unwrap().steps[1].status.as_str(),
        "compensating"
    );

    engine = restart(dir.path(), &clock, engine, how).await;

    reply(&engine, "refund", Outcome::Compensated, Value::Null).await;
    let undo = last_command(&engine, "refund");
    assert_eq!(undo["step"], "reserve_inventory");
    assert_eq!(undo["result"], json!({"reservation": "r-7"}));
    assert_eq!(undo["after_timeout"], false);
    reply(&engine, "refund", Outcome::Compensated, Value::Null).await;
    assert_eq!(
        engine.get("refund").unwrap().status,
        sagalog_engine::Status::Compensated
    );
    // A finished saga read back from the log shows its results too.
    engine.wait_indexed().await.unwrap();
    drop(engine);
    let engine = open(dir.path(), &clock);
    let results: Vec<_> = engine
        .get("refund")
        .unwrap()
        .steps
        .into_iter()
        .map(|s| s.result)
        .collect();
    assert_eq!(
        results,
        [Some(r#"{"reservation":"r-7"}"#.to_string()), None, None]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_timed_out_compensations_survive_a_restart_from_a_snapshot() {
    data_flows_through_a_restart(Restart::FromSnapshot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_timed_out_compensations_survive_a_full_replay() {
    data_flows_through_a_restart(Restart::FullReplay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_data_over_its_limits_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let config = EngineConfig {
        max_step_data_bytes: 100,
        max_saga_data_bytes: 150,
        ..common::config()
    };
    let engine = Engine::open_with_clock(dir.path(), config.clone(), clock.clone()).unwrap();
    engine
        .start(request("order", Some("big"), json!({})))
        .await
        .unwrap();
    let pad = |n: usize| json!({ "pad": "x".repeat(n) });
    let err = try_reply(&engine, "big", Outcome::Succeeded, pad(100))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::TooLarge);
    assert!(err.to_string().contains("--max-step-data-bytes"), "{err}");
    reply(&engine, "big", Outcome::Succeeded, pad(80)).await;
    let before = engine.history("big").await.unwrap().len();
    // 91 bytes held; another 91 passes the saga's 150.
    let err = try_reply(&engine, "big", Outcome::Succeeded, pad(80))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::TooLarge);
    assert!(err.to_string().contains("--max-saga-data-bytes"), "{err}");
    assert_eq!(engine.history("big").await.unwrap().len(), before);
    // The count survives a restart from a snapshot: still refused, a smaller one fits.
    engine.snapshot().await.unwrap();
    drop(engine);
    let engine = Engine::open_with_clock(dir.path(), config, clock.clone()).unwrap();
    let err = try_reply(&engine, "big", Outcome::Succeeded, pad(80))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--max-saga-data-bytes"), "{err}");
    reply(&engine, "big", Outcome::Succeeded, pad(40)).await;
    assert_eq!(engine.history("big").await.unwrap().len(), before + 2);
}

/// A saga as format 2 snapshots stored it (before results were counted).
#[derive(bincode::Encode)]
struct SnapshotSagaV2 {
    saga: StoredSagaV2,
    first_offset: u64,
    last_offset: u64,
    events: u64,
}

#[derive(bincode::Encode)]
struct StoredSagaV2 {
    saga_id: String,
    saga_type: String,
    definition_version: u32,
    status: Option<sagalog_engine::Status>,
    seq: u32,
    created_at_ms: u64,
    updated_at_ms: u64,
    steps: Vec<sagalog_engine::state::StepState>,
    pending: Option<sagalog_engine::state::Pending>,
    failure_reason: Option<String>,
    trace_id: String,
    request_hash: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_before_results_were_counted_still_restores_its_sagas() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    engine
        .start(request("order", Some("old"), json!({})))
        .await
        .unwrap();
    reply(
        &engine,
        "old",
        Outcome::Succeeded,
        json!({"reservation": "r-1"}),
    )
    .await;
    let state = engine.get("old").unwrap();
    let (first, last) = (0, engine.log_bounds().1 - 1);
    let offset = engine.log_bounds().1;
    let definitions: Vec<String> = engine.definitions().iter().map(|d| d.to_json()).collect();
    let counters = engine.stats().counters;
    drop(engine);
    // What a build before data between steps wrote for this saga, as format 2.
    let record_state = {
        let records = sagalog_storage::DataDir::open(dir.path())
            .unwrap()
            .open_log(common::config().log)
            .unwrap()
            .0
            .read_batch(0, 100, 1 << 20)
            .unwrap();
        let mut s = sagalog_engine::SagaState::new(
            "old",
            sagalog_engine::Registry::with_builtin()
                .get("order", 1)
                .unwrap()
                .clone(),
        );
        for r in &records {
            if let sagalog_engine::Entry::Saga { record, .. } =
                sagalog_engine::Entry::decode(&r.payload).unwrap()
            {
                s = sagalog_engine::apply(s, &record);
            }
        }
        s
    };
    let v2 = SnapshotSagaV2 {
        saga: StoredSagaV2 {
            saga_id: "old".into(),
            saga_type: "order".into(),
            definition_version: 1,
            status: record_state.status,
            seq: record_state.seq,
            created_at_ms: record_state.created_at_ms,
            updated_at_ms: record_state.updated_at_ms,
            steps: record_state.steps.to_vec(),
            pending: record_state.pending,
            failure_reason: None,
            trace_id: sagalog_engine::state::trace_id_hex(&record_state.trace_id),
            request_hash: record_state.request_hash,
        },
        first_offset: first,
        last_offset: last,
        events: u64::MAX,
    };
    let mut body = Vec::new();
    let config = bincode::config::standard();
    bincode::encode_into_std_write(2u8, &mut body, config).unwrap();
    bincode::encode_into_std_write(offset, &mut body, config).unwrap();
    bincode::encode_into_std_write(&definitions, &mut body, config).unwrap();
    bincode::encode_into_std_write(&counters, &mut body, config).unwrap();
    bincode::encode_into_std_write(vec![v2], &mut body, config).unwrap();
    bincode::encode_into_std_write(Vec::<SnapshotSagaV2>::new(), &mut body, config).unwrap();
    {
        let data = sagalog_storage::DataDir::open(dir.path()).unwrap();
        let store = data.open_snapshots(common::config().snapshots).unwrap();
        store.save(offset, &body).unwrap();
    }
    let engine = open(dir.path(), &clock);
    assert_eq!(
        engine.stats().snapshot_offset,
        offset,
        "the format 2 snapshot was used"
    );
    let restored = engine.get("old").unwrap();
    assert_eq!(restored.status, state.status);
    assert_eq!(restored.steps, state.steps);
    reply(&engine, "old", Outcome::Succeeded, json!({"charge": "c-1"})).await;
    assert_eq!(
        last_command(&engine, "old")["results"],
        json!({"reserve_inventory": {"reservation": "r-1"}, "charge_payment": {"charge": "c-1"}})
    );
}
