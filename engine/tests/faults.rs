//! The engine over a disk that fails (injected at the storage layer): a write whose
//! fsync fails is refused and changes nothing, the engine takes writes again once the
//! log has healed itself; index commits that fail keep finished sagas in memory (and
//! readable) until the indexer gets through; nothing acknowledged is lost across a
//! restart.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{answer, start, ManualClock};
use sagalog_engine::{Engine, EngineConfig, EngineError, Outcome, Status};
use sagalog_storage::faults::{EIO, ENOSPC};
use sagalog_storage::{FaultPoint, Faults};

fn open_with(dir: &std::path::Path, clock: &Arc<ManualClock>, faults: &Arc<Faults>) -> Engine {
    let config = EngineConfig {
        faults: Some(faults.clone() as Arc<dyn sagalog_storage::FaultInjector>),
        ..common::config()
    };
    Engine::open_with_clock(dir, config, clock.clone()).expect("engine opens")
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(20), "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_fsync_fails_changes_nothing_and_writes_return_once_the_log_heals() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let faults = Faults::new();
    let engine = open_with(dir.path(), &clock, &faults);
    start(&engine, "kept-1").await;
    faults.fail_after(FaultPoint::BatchSync, 0, 2, EIO);
    let refused = engine
        .start(common::request(
            "order",
            Some("lost-1"),
            serde_json::json!({}),
        ))
        .await
        .expect_err("the fsync failed");
    assert!(matches!(refused, EngineError::Unavailable(_)), "{refused}");
    assert!(
        matches!(engine.get("lost-1"), Err(EngineError::SagaNotFound { .. })),
        "a refused start leaves no saga"
    );
    assert!(engine.log().poisoned().is_some(), "the log refuses writes");
    eventually("the log heals", || engine.log().stats().writable).await;
    // The same start again is a new saga, and the engine goes on.
    start(&engine, "lost-1").await;
    answer(&engine, "kept-1", Outcome::Succeeded).await;
    let head = engine.log().next_offset();
    drop(engine);
    let engine = open_with(dir.path(), &clock, &Faults::new());
    assert_eq!(
        engine.log().next_offset(),
        head,
        "the refused records were not kept"
    );
    assert_eq!(engine.get("kept-1").unwrap().status, Status::InProgress);
    assert_eq!(engine.get("lost-1").unwrap().status, Status::Started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_index_commits_keep_finished_sagas_readable_until_the_indexer_gets_through() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let faults = Faults::new();
    let engine = open_with(dir.path(), &clock, &faults);
    faults.fail(FaultPoint::IndexCommit, ENOSPC);
    let ids: Vec<String> = (0..5).map(|i| format!("f-{i}")).collect();
    for id in &ids {
        start(&engine, id).await;
        for _ in 0..3 {
            answer(&engine, id, Outcome::Succeeded).await;
        }
    }
    eventually("the indexer tried", || {
        faults.failed(FaultPoint::IndexCommit) > 0
    })
    .await;
    for id in &ids {
        assert_eq!(engine.get(id).unwrap().status, Status::Completed, "{id}");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), engine.wait_indexed())
            .await
            .is_err(),
        "nothing is indexed while commits fail"
    );
    faults.clear();
    engine.wait_indexed().await.unwrap();
    for id in &ids {
        assert_eq!(engine.get(id).unwrap().status, Status::Completed, "{id}");
    }
    drop(engine);
    let engine = open_with(dir.path(), &clock, &Faults::new());
    for id in &ids {
        assert_eq!(
            engine.get(id).unwrap().status,
            Status::Completed,
            "{id} after a restart"
        );
    }
}
