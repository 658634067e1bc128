//! Retention: only whole finished sagas below every hold go, and what stays reads whole.

mod common;

use std::time::Duration;

use common::*;
use sagalog_engine::{Engine, EngineConfig, EngineError, ErrorClass, Kind, ListQuery, Outcome};
use sagalog_storage::LogConfig;

fn small_segments() -> EngineConfig {
    EngineConfig {
        log: LogConfig {
            segment_bytes: 4096,
            preallocate: false,
            ..LogConfig::default()
        },
        snapshot_every_records: 0,
        ..EngineConfig::default()
    }
}

async fn complete(engine: &Engine, id: &str) {
    start(engine, id).await;
    for _ in 0..3 {
        answer(engine, id, Outcome::Succeeded).await;
    }
}

/// Runs a retention pass off the runtime, as the server does.
async fn retain(
    engine: &std::sync::Arc<Engine>,
    hold: Option<u64>,
) -> sagalog_engine::RetentionReport {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.apply_retention(Duration::ZERO, hold))
        .await
        .unwrap()
        .expect("retention pass")
}

/// How retention left the sagas: whole (their history begins with their start, at or
/// past the log's start), gone (a 404 that says retention may have removed them), or
/// removed (a 410 naming them: they began below the cut, some of their records kept).
#[derive(Debug, Default, PartialEq, Eq)]
struct Fates {
    whole: usize,
    gone: usize,
    removed: usize,
}

async fn fates(engine: &Engine, ids: &[String]) -> Fates {
    let start = engine.log().start_offset();
    let mut fates = Fates::default();
    for id in ids {
        match engine.history(id).await {
            Ok(history) => {
                assert!(matches!(history[0].record.kind, Kind::SagaStarted { .. }));
                assert!(history[0].offset >= start, "{id} reaches below the start");
                engine.get(id).expect("a whole saga reads");
                fates.whole += 1;
            }
            Err(e @ EngineError::SagaNotFound { .. }) => {
                assert!(e.to_string().contains("retention removed it"), "{e}");
                assert_eq!(engine.get(id).unwrap_err().class(), ErrorClass::NotFound);
                fates.gone += 1;
            }
            Err(e @ EngineError::SagaRemoved { .. }) => {
                assert!(e.to_string().contains(id.as_str()), "{e}");
                assert_eq!(engine.get(id).unwrap_err().class(), ErrorClass::Gone);
                fates.removed += 1;
            }
            Err(e) => panic!("{id}: {e}"),
        }
    }
    fates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_only_finished_sagas_below_every_hold() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = std::sync::Arc::new(
        Engine::open_with_clock(dir.path(), small_segments(), clock.clone()).unwrap(),
    );
    // A long saga starts first and stays active while many others come and go.
    start(&engine, "long").await;
    let mut ids: Vec<String> = Vec::new();
    for i in 0..150 {
        let id = format!("early-{i}");
        complete(&engine, &id).await;
        ids.push(id);
    }
    engine.wait_indexed().await.unwrap();
    engine.snapshot().await.unwrap();
    let report = retain(&engine, None).await;
    assert_eq!(
        report.removed_segments, 0,
        "the active long saga holds the log: {report:?}"
    );
    assert_eq!(engine.log().start_offset(), 0);

    // It finishes after them, then more come and go, and one stays open.
    for _ in 0..3 {
        answer(&engine, "long", Outcome::Succeeded).await;
    }
    ids.push("long".into());
    let long_history = engine.history("long").await.unwrap();
    let long_last_command = long_history
        .iter()
        .rev()
        .find(|item| matches!(item.record.kind, Kind::CommandIssued { .. }))
        .unwrap()
        .offset;
    for i in 0..150 {
        let id = format!("late-{i}");
        complete(&engine, &id).await;
        ids.push(id);
    }
    start(&engine, "open").await;
    engine.wait_indexed().await.unwrap();
    engine.snapshot().await.unwrap();

    // A holder that has yet to publish the long saga's last command keeps the whole
    // saga, start and payload included.
    let report = retain(&engine, Some(long_last_command)).await;
    assert!(report.floor <= long_history[0].offset, "{report:?}");
    assert_eq!(engine.log().start_offset(), 0);
    let batch = engine.log().read_batch(long_last_command, 1, 0).unwrap();
    let commands = engine.commands(&batch).unwrap();
    assert_eq!(commands[0].saga_id, "long");
    assert_eq!(fates(&engine, &ids).await.whole, ids.len());

    // Without the hold the log may go up to the oldest snapshot kept (the first one,
    // taken after the early sagas): they go, the long saga is cut through.
    let report = retain(&engine, None).await;
    let start = engine.log().start_offset();
    assert!(
        report.removed_segments > 0 && start <= report.floor,
        "{report:?}"
    );
    let after = fates(&engine, &ids).await;
    assert!(after.gone >= 140 && after.whole >= 150, "{after:?}");
    assert!(
        (1..=2).contains(&after.removed),
        "only the long saga and the one the cut went through: {after:?}"
    );
    assert_eq!(
        engine.get("long").unwrap_err().class(),
        ErrorClass::Gone,
        "the long saga lost its start"
    );
    assert_eq!(report.removed_sagas, after.gone as u64, "{report:?}");
    assert!(engine.get("open").is_ok(), "the active saga stays");

    // Listing shows what is whole and the open saga; the command feed reads from the
    // new start, skipping the commands of the saga the cut went through.
    let listed = engine
        .list(&ListQuery {
            limit: 1000,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.items.len(), after.whole + 1);
    let mut from = start;
    while from < engine.log().next_offset() {
        let batch = engine.log().read_batch(from, 512, 1 << 20).unwrap();
        for command in engine
            .commands(&batch)
            .expect("commands render after the cut")
        {
            assert!(engine.get(&command.saga_id).is_ok(), "{command:?}");
        }
        from = batch.last().unwrap().offset + 1;
    }
    answer(&engine, "open", Outcome::Succeeded).await;

    // The data directory reopens on the snapshot and the retained log.
    let before = engine.stats();
    drop(listed);
    let engine = std::sync::Arc::try_unwrap(engine).ok().expect("one owner");
    drop(engine);
    let engine = Engine::open_with_clock(dir.path(), small_segments(), clock).unwrap();
    assert_eq!(engine.log().start_offset(), start);
    assert_eq!(engine.stats().counters, before.counters);
    assert_eq!(fates(&engine, &ids).await, after);
    assert_eq!(
        engine.get("open").unwrap().steps[0].status.as_str(),
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_waits_for_age_and_for_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine =
        std::sync::Arc::new(Engine::open_with_clock(dir.path(), small_segments(), clock).unwrap());
    for i in 0..100 {
        complete(&engine, &format!("s-{i}")).await;
    }
    engine.wait_indexed().await.unwrap();
    let report = retain(&engine, None).await;
    assert_eq!(
        (report.floor, report.removed_segments),
        (0, 0),
        "no snapshot: {report:?}"
    );
    engine.snapshot().await.unwrap();
    let young = {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || engine.apply_retention(Duration::from_secs(3600), None))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(
        young.removed_segments, 0,
        "segments younger than the age stay: {young:?}"
    );
    let report = retain(&engine, None).await;
    assert!(
        report.removed_segments > 0,
        "{report:?} head {}",
        engine.log().next_offset()
    );
}
