//! The engine over a disk that fails (injected at the storage layer): a write whose
//! fsync fails is refused and changes nothing, the engine takes writes again once the
//! log has healed itself; index commits that fail keep finished sagas in memory (and
//! readable) until the indexer gets through; nothing acknowledged is lost across a
//! restart. A decision that must read the log (a repeated reply) or the index (a saga
//! that left memory) reads it without its shard's lock, so a slow read holds up no
//! other saga.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{answer, start, ManualClock};
use sagalog_engine::{Engine, EngineConfig, EngineError, Outcome, Reply, Status};
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

/// Runs `work` on `runtime` and waits for it from this thread (not one of the
/// runtime's, which a saga lock held across a read would block): whether it finished
/// within `limit`.
fn finishes_within(
    runtime: &tokio::runtime::Runtime,
    limit: Duration,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) -> bool {
    let (done, finished) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        work.await;
        let _ = done.send(());
    });
    finished.recv_timeout(limit).is_ok()
}

#[test]
fn a_slow_read_for_a_repeated_reply_or_a_finished_saga_holds_up_no_other_saga_of_its_shard() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let faults = Faults::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    // One shard: every saga shares its lock.
    let config = EngineConfig {
        shards: 1,
        faults: Some(faults.clone() as Arc<dyn sagalog_storage::FaultInjector>),
        ..common::config()
    };
    let engine = Arc::new(Engine::open_with_clock(dir.path(), config, clock.clone()).unwrap());
    let (reply, first) = runtime.block_on(async {
        start(&engine, "repeated").await;
        let saga = engine.get("repeated").unwrap();
        let reply = Reply {
            event_id: "repeated/first".into(),
            step: saga.current_step.clone().unwrap(),
            outcome: Outcome::Succeeded,
            attempt: 1,
            data: String::new(),
            reason: String::new(),
        };
        let first = engine.reply("repeated", reply.clone()).await.unwrap();
        // A saga that finishes and leaves memory: its only step fails for good.
        let mut single = (**engine.definitions().first().unwrap()).clone();
        single.name = "single".into();
        single.steps.truncate(1);
        single.steps[0].max_attempts = 1;
        engine.register_definition(single).await.unwrap();
        let request = common::request("single", Some("finished"), serde_json::json!({}));
        engine.start(request).await.unwrap();
        answer(&engine, "finished", Outcome::Failed).await;
        engine.wait_indexed().await.unwrap();
        start(&engine, "other").await;
        (reply, first)
    });
    assert_eq!(engine.get("finished").unwrap().status, Status::Compensated);
    let order = engine.definitions().into_iter().find(|d| d.name == "order");
    let mut steps = order.unwrap().steps.clone().into_iter().map(|s| s.name);

    for (what, saga) in [
        ("a repeated reply", "repeated"),
        ("a finished saga", "finished"),
    ] {
        // Every read of a record waits until released.
        let _release = ReleaseOnDrop(faults.clone());
        faults.hold(FaultPoint::RecordRead);
        let slow = {
            let engine = engine.clone();
            // The same reply again; a new one to the finished saga.
            let again = match saga {
                "repeated" => reply.clone(),
                _ => Reply {
                    event_id: "finished/late".into(),
                    ..reply.clone()
                },
            };
            runtime.spawn(async move { engine.reply(saga, again).await })
        };
        let started = Instant::now();
        while faults.held() == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{what}: no read was held"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Meanwhile the shard's other sagas go on (replies, which read no record).
        let others = {
            let engine = engine.clone();
            let reply = Reply {
                event_id: format!("other/{saga}"),
                step: steps.next().unwrap(),
                ..reply.clone()
            };
            async move {
                engine.reply("other", reply).await.unwrap();
            }
        };
        let went_on = finishes_within(&runtime, Duration::from_secs(10), others);
        assert_eq!(faults.held(), 1, "{what}: its read was held all along");
        faults.release();
        let answered = runtime.block_on(slow).unwrap();
        assert!(
            went_on,
            "{what}: a read held up the other sagas of its shard"
        );
        match saga {
            "repeated" => assert_eq!(answered.unwrap().offset, first.offset, "the first answer"),
            _ => assert!(
                matches!(answered, Err(EngineError::Rejected(_))),
                "{what}: a finished saga takes no new reply: {answered:?}"
            ),
        }
    }
}

/// Lets held steps go when dropped: a failing test must not leave a runtime's thread
/// held.
struct ReleaseOnDrop(Arc<Faults>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}
