//! Pausing command delivery: held commands stay in the log and out of a holding feed,
//! the timeouts of the steps waiting on them do not fire, a resume gives them their
//! whole timeout again, and the pause survives a restart from a snapshot and from the
//! log alone.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{open, start, ManualClock};
use sagalog_engine::{Delivery, Engine, EngineError};

const INVENTORY: &str = "inventory.commands";
const PAYMENT: &str = "payment.commands";
/// The built-in order definition's reserve_inventory timeout.
const TIMEOUT_MS: u64 = 30_000;

fn topics(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The saga's first step: its status and attempts.
fn first_step(engine: &Engine, id: &str) -> (String, u32) {
    let saga = engine.get(id).unwrap();
    (
        saga.steps[0].status.as_str().to_string(),
        saga.steps[0].attempts,
    )
}

/// How many of the saga's attempts timed out.
async fn timeouts(engine: &Engine, id: &str) -> usize {
    engine
        .history(id)
        .await
        .unwrap()
        .iter()
        .filter(|item| item.record.kind.name() == "step_timed_out")
        .count()
}

/// The commands a holding feed hands out from the log's start, and whether it held.
async fn held_feed(engine: &Engine) -> (Vec<String>, bool) {
    let mut feed = engine.command_feed(0).holding();
    let batch = feed.next(1000, 1 << 20).await.unwrap();
    let ids = batch.commands.iter().map(|c| c.saga_id.clone()).collect();
    (ids, batch.held)
}

#[tokio::test]
async fn a_paused_topic_holds_its_commands_and_their_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    start(&engine, "before").await;
    let change = engine
        .pause_delivery(topics(&[INVENTORY]), "a participant double-charges".into())
        .await
        .unwrap();
    assert!(change.offset.is_some());
    assert!(engine.delivery().is_paused(INVENTORY));
    assert!(!engine.delivery().is_paused(PAYMENT));
    // Pausing again records nothing.
    let again = engine
        .pause_delivery(topics(&[INVENTORY]), "again".into())
        .await
        .unwrap();
    assert_eq!(again.offset, None);
    start(&engine, "during").await;

    // The commands are in the log (a feed that does not hold sees both), but a holding
    // feed stops before the first.
    let mut all = engine.command_feed(0);
    assert_eq!(all.next(1000, 1 << 20).await.unwrap().commands.len(), 2);
    assert_eq!(held_feed(&engine).await, (vec![], true));

    // No timeout fires while paused, however long.
    clock.advance(10 * TIMEOUT_MS);
    engine.run_due_timers().await;
    assert_eq!(first_step(&engine, "before"), ("running".into(), 1));
    assert_eq!(first_step(&engine, "during"), ("running".into(), 1));
    assert_eq!(timeouts(&engine, "before").await, 0);

    // Resumed: the holding feed hands them out, and each step has its whole timeout
    // again from the resume.
    let resumed = engine.resume_delivery(topics(&[INVENTORY])).await.unwrap();
    assert_eq!(resumed.delivery, Delivery::default());
    assert_eq!(
        held_feed(&engine).await,
        (vec!["before".into(), "during".into()], false)
    );
    clock.advance(TIMEOUT_MS - 1);
    engine.run_due_timers().await;
    assert_eq!(
        timeouts(&engine, "before").await,
        0,
        "the whole timeout again"
    );
    assert_eq!(timeouts(&engine, "during").await, 0);
    clock.advance(1);
    engine.run_due_timers().await;
    assert_eq!(timeouts(&engine, "before").await, 1);
    clock.advance(1_000);
    engine.run_due_timers().await;
    assert_eq!(
        first_step(&engine, "before"),
        ("running".into(), 2),
        "timed out, retried"
    );
    assert_eq!(first_step(&engine, "during"), ("running".into(), 2));
}

#[tokio::test]
async fn everything_paused_then_resumed_topic_by_topic() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    engine
        .pause_delivery(Vec::new(), "emergency stop".into())
        .await
        .unwrap();
    assert!(engine.delivery().is_paused(INVENTORY) && engine.delivery().is_paused(PAYMENT));
    start(&engine, "a").await;
    assert_eq!(held_feed(&engine).await, (vec![], true));
    engine.resume_delivery(topics(&[INVENTORY])).await.unwrap();
    assert!(!engine.delivery().is_paused(INVENTORY));
    assert!(engine.delivery().is_paused(PAYMENT));
    assert_eq!(held_feed(&engine).await, (vec!["a".into()], false));
    engine.resume_delivery(Vec::new()).await.unwrap();
    assert_eq!(engine.delivery(), Delivery::default());
}

#[tokio::test]
async fn bad_topics_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    let head = engine.log_bounds().1;
    for bad in [
        topics(&["inventory.comands"]),
        topics(&[INVENTORY, INVENTORY]),
        (0..65).map(|i| format!("t{i}")).collect(),
    ] {
        let e = engine
            .pause_delivery(bad.clone(), String::new())
            .await
            .unwrap_err();
        assert!(
            matches!(e, EngineError::InvalidRequest { .. }),
            "{bad:?}: {e}"
        );
    }
    let e = engine
        .pause_delivery(Vec::new(), "x".repeat(1025))
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::InvalidRequest { .. }), "{e}");
    let message = engine
        .resume_delivery(topics(&["nope"]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(INVENTORY),
        "names the known topics: {message}"
    );
    assert_eq!(engine.log_bounds().1, head, "nothing was recorded");
    assert_eq!(engine.delivery(), Delivery::default());
}

async fn reopen(dir: &Path, clock: &Arc<ManualClock>, engine: Engine, snapshot: bool) -> Engine {
    if snapshot {
        engine.snapshot().await.unwrap();
    }
    drop(engine);
    if !snapshot {
        let _ = std::fs::remove_dir_all(dir.join("snapshots"));
    }
    open(dir, clock)
}

async fn a_pause_survives_a_restart(snapshot: bool) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let mut engine = open(dir.path(), &clock);
    start(&engine, "held").await;
    engine
        .pause_delivery(Vec::new(), "stop".into())
        .await
        .unwrap();
    engine.resume_delivery(topics(&[PAYMENT])).await.unwrap();
    let paused = engine.delivery();
    engine = reopen(dir.path(), &clock, engine, snapshot).await;
    assert_eq!(engine.delivery(), paused, "snapshot: {snapshot}");
    assert_eq!(held_feed(&engine).await, (vec![], true));
    // Timers rebuilt at open do not fire for the held step either.
    clock.advance(10 * TIMEOUT_MS);
    engine.run_due_timers().await;
    assert_eq!(timeouts(&engine, "held").await, 0);
    // A resume before the restart extends the deadline the same way replay does.
    engine.resume_delivery(Vec::new()).await.unwrap();
    engine = reopen(dir.path(), &clock, engine, snapshot).await;
    assert_eq!(engine.delivery(), Delivery::default());
    clock.advance(TIMEOUT_MS - 1);
    engine.run_due_timers().await;
    assert_eq!(timeouts(&engine, "held").await, 0, "snapshot: {snapshot}");
    clock.advance(1);
    engine.run_due_timers().await;
    assert_eq!(timeouts(&engine, "held").await, 1);
    clock.advance(1_000);
    engine.run_due_timers().await;
    assert_eq!(first_step(&engine, "held"), ("running".into(), 2));
}

#[tokio::test]
async fn a_pause_survives_a_restart_from_a_snapshot() {
    a_pause_survives_a_restart(true).await;
}

#[tokio::test]
async fn a_pause_survives_a_restart_from_the_log() {
    a_pause_survives_a_restart(false).await;
}
