//! Snapshots off the write path: a snapshot is captured while writes go on (held in
//! the middle of writing its file by an injected hold), it is exactly the state at its
//! cut, and one that fails at any step leaves the engine serving and nothing behind.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{answer, start, ManualClock};
use sagalog_engine::{Definition, Engine, EngineConfig, EngineStats, Outcome, SagaView, Status};
use sagalog_storage::faults::ENOSPC;
use sagalog_storage::{FaultPoint, Faults};

fn open_with(dir: &std::path::Path, clock: &Arc<ManualClock>, faults: &Arc<Faults>) -> Engine {
    let config = EngineConfig {
        snapshot_every_records: 0,
        faults: Some(faults.clone() as Arc<dyn sagalog_storage::FaultInjector>),
        ..common::config()
    };
    Engine::open_with_clock(dir, config, clock.clone()).expect("engine opens")
}

/// Every saga's view and the engine's counters, to compare across a restart.
fn state_of(engine: &Engine, ids: &[String]) -> (Vec<SagaView>, EngineStats) {
    let views = ids.iter().map(|id| engine.get(id).unwrap()).collect();
    (views, engine.stats())
}

fn assert_same(engine: &Engine, ids: &[String], before: &(Vec<SagaView>, EngineStats)) {
    let (views, stats) = state_of(engine, ids);
    assert_eq!(stats.counters, before.1.counters);
    assert_eq!(stats.active_by_status, before.1.active_by_status);
    for (view, expected) in views.iter().zip(&before.0) {
        assert_eq!(view, expected, "saga {}", expected.saga_id);
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 30 s"))
}

/// Enough active sagas (at steps 0 to 2) that a snapshot file is flushed more than once
/// while the shards are captured (its buffer holds 1 MiB); their ids.
async fn many_active_sagas(engine: &Arc<Engine>) -> Vec<String> {
    let ids: Vec<String> = (0..20_000).map(|i| format!("s-{i}")).collect();
    let mut starting = tokio::task::JoinSet::new();
    for chunk in ids.chunks(1000).map(<[String]>::to_vec) {
        let engine = engine.clone();
        starting.spawn(async move {
            for (n, id) in chunk.iter().enumerate() {
                start(&engine, id).await;
                for _ in 0..n % 3 {
                    answer(&engine, id, Outcome::Succeeded).await;
                }
            }
        });
    }
    while let Some(done) = starting.join_next().await {
        done.unwrap();
    }
    ids
}

/// Lets held steps go when dropped: a failing test must not leave a snapshot's thread
/// held (the runtime would wait for it forever).
struct ReleaseOnDrop(Arc<Faults>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Waits until `faults` holds a step.
async fn until_held(faults: &Faults) {
    within("the snapshot reaching its hold", async {
        while faults.held() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_while_a_snapshot_is_captured_and_it_is_the_state_at_its_cut() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let faults = Faults::new();
    let engine = Arc::new(open_with(dir.path(), &clock, &faults));
    let mut ids = many_active_sagas(&engine).await;

    // Hold the snapshot at its second write: a chunk of sagas has gone to the file and
    // the shards are being captured.
    faults.hold_after(FaultPoint::SnapshotWrite, 1);
    let snapshot = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.snapshot().await })
    };
    until_held(&faults).await;
    // Meanwhile: replies across every shard (sagas captured and not yet), sagas that
    // finish and leave memory, new sagas, a new definition.
    within("writes during the capture", async {
        for (n, id) in ids.iter().enumerate().step_by(37) {
            let saga = engine.get(id).unwrap();
            if saga.status == Status::Completed {
                continue;
            }
            let outcome = if n % 2 == 0 {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            };
            answer(&engine, id, outcome).await;
        }
        for i in 0..300 {
            let id = format!("during-{i}");
            start(&engine, &id).await;
            ids.push(id);
        }
        let mut v2: Definition = (**engine.definitions().first().unwrap()).clone();
        v2.version = 2;
        engine.register_definition(v2).await.unwrap();
    })
    .await;
    assert_eq!(faults.held(), 1, "the snapshot was held all along");
    faults.release();
    let info = within("the snapshot", snapshot).await.unwrap().unwrap();
    assert!(
        faults.hits(FaultPoint::SnapshotWrite) >= 4,
        "the hold came before the last of the file's writes"
    );
    for i in 0..100 {
        let id = format!("after-{i}");
        start(&engine, &id).await;
        ids.push(id);
    }
    engine.wait_indexed().await.unwrap();
    let before = state_of(&engine, &ids);
    let head = before.1.log_next_offset;
    drop(engine);

    let engine = open_with(dir.path(), &clock, &Faults::new());
    let stats = engine.stats();
    assert_eq!(
        stats.snapshot_offset, info.offset,
        "restored from the snapshot"
    );
    assert_eq!(
        stats.replayed_records,
        head - info.offset,
        "and the records after its cut"
    );
    assert_same(&engine, &ids, &before);
    drop(engine);
    // The whole log gives the same.
    std::fs::remove_dir_all(dir.path().join("snapshots")).unwrap();
    let engine = open_with(dir.path(), &clock, &Faults::new());
    assert_eq!(engine.stats().snapshot_offset, 0);
    assert_same(&engine, &ids, &before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_failing_at_any_step_leaves_nothing_behind_and_the_next_one_works() {
    for point in [
        FaultPoint::SnapshotCreate,
        FaultPoint::SnapshotWrite,
        FaultPoint::SnapshotSync,
        FaultPoint::SnapshotRename,
        FaultPoint::DirSync,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let faults = Faults::new();
        let engine = open_with(dir.path(), &clock, &faults);
        let mut ids = Vec::new();
        for i in 0..200 {
            let id = format!("a-{i}");
            start(&engine, &id).await;
            ids.push(id);
        }
        faults.fail_after(point, 0, 1, ENOSPC);
        let err = engine.snapshot().await.expect_err("the step fails");
        assert!(
            err.to_string().contains("No space left"),
            "{point:?}: {err}"
        );
        let files: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            files.is_empty() || point == FaultPoint::DirSync,
            "{point:?}: left {files:?}"
        );
        // Writes go on; the next snapshot captures everything again.
        for id in ids.iter().step_by(3) {
            answer(&engine, id, Outcome::Succeeded).await;
        }
        let info = engine.snapshot().await.unwrap();
        let before = state_of(&engine, &ids);
        drop(engine);
        let engine = open_with(dir.path(), &clock, &Faults::new());
        assert_eq!(engine.stats().snapshot_offset, info.offset, "{point:?}");
        assert_same(&engine, &ids, &before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_caller_went_away_finishes_before_the_next_one_captures() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let faults = Faults::new();
    let engine = Arc::new(open_with(dir.path(), &clock, &faults));
    let ids = many_active_sagas(&engine).await;

    // A snapshot held while its shards are captured, whose caller then goes away (as
    // an HTTP client that closes its connection does).
    let _release = ReleaseOnDrop(faults.clone());
    faults.hold_after(FaultPoint::SnapshotWrite, 1);
    let abandoned = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.snapshot().await })
    };
    until_held(&faults).await;
    abandoned.abort();
    assert!(abandoned.await.unwrap_err().is_cancelled());
    // The next one waits for it, while writes go on.
    let next = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.snapshot().await })
    };
    within("writes while the first snapshot is held", async {
        for id in ids.iter().step_by(41) {
            if engine.get(id).unwrap().status != Status::Completed {
                answer(&engine, id, Outcome::Succeeded).await;
            }
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !next.is_finished(),
        "the second snapshot waits for the first to be written"
    );
    faults.release();
    let info = within("the second snapshot", next).await.unwrap().unwrap();
    engine.wait_indexed().await.unwrap();
    let before = state_of(&engine, &ids);
    drop(engine);

    let engine = open_with(dir.path(), &clock, &Faults::new());
    assert_eq!(engine.stats().snapshot_offset, info.offset);
    assert_same(&engine, &ids, &before);
}
