//! The engine service in-process on a real data directory: the order saga end to end,
//! idempotency (also across a restart), timers, listing, definitions, and restarts that
//! rebuild identical state from snapshot plus log.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use common::{answer, open, start, ManualClock};
use sagalog_engine::{
    Definition, Engine, EngineError, Kind, ListQuery, Outcome, Rejection, Reply, SagaView,
    StartRequest, Status, StepStatus,
};

fn reply(event_id: &str, step: &str, outcome: Outcome, attempt: u32) -> Reply {
    Reply {
        event_id: event_id.into(),
        step: step.into(),
        outcome,
        attempt,
        data: r#"{"ok":true}"#.into(),
        reason: "participant said so".into(),
    }
}

/// Every page of `query`, following `next_cursor` from the first page (at most 100
/// pages), checking that no page holds more than `limit` and that each cursor moves on.
async fn list_all(engine: &Engine, mut query: ListQuery) -> Vec<SagaView> {
    let mut items = Vec::new();
    for _ in 0..100 {
        let page = engine.list(&query).await.unwrap();
        assert!(page.items.len() <= query.limit, "a page over its limit");
        items.extend(page.items);
        match page.next_cursor {
            Some(next) => {
                assert_ne!(Some(&next), query.cursor.as_ref(), "each page moves on");
                query.cursor = Some(next);
            }
            None => return items,
        }
    }
    panic!("more than 100 pages of {query:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_saga_completes_and_stays_readable_after_leaving_memory() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    let saga = start(&engine, "order-1").await;
    assert_eq!(saga.status, Status::Started);
    assert_eq!(saga.current_step.as_deref(), Some("reserve_inventory"));
    assert_eq!(saga.payload, r#"{"order":"order-1","qty":2}"#);
    assert_eq!(saga.trace_id.len(), 32);
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(answer(&engine, "order-1", Outcome::Succeeded).await);
    }
    assert_eq!(answers[2].status, Status::Completed);
    engine.wait_indexed().await.unwrap();
    // The saga left memory: a repeated reply is answered from its records.
    let mut same = reply(
        "order-1/charge_payment/1/succeeded",
        "charge_payment",
        Outcome::Succeeded,
        1,
    );
    (same.data, same.reason) = (String::new(), String::new());
    let repeated = engine.reply("order-1", same.clone()).await.unwrap();
    assert!(repeated.repeated);
    assert_eq!(
        (repeated.status, repeated.offset),
        (answers[1].status, answers[1].offset)
    );
    // Its event id with another body is refused there too, and appends nothing.
    let head = engine.log().next_offset();
    let other = Reply {
        data: r#"{"charge_id":"ch_1"}"#.into(),
        ..same
    };
    let refused = engine.reply("order-1", other).await.unwrap_err();
    assert!(
        matches!(&refused, EngineError::Rejected(Rejection::EventConflict { offset, .. }) if *offset == answers[1].offset),
        "{refused}"
    );
    assert_eq!(engine.log().next_offset(), head);
    let done = engine.get("order-1").unwrap();
    assert_eq!(done.status, Status::Completed);
    assert!(done.steps.iter().all(|s| s.status == StepStatus::Succeeded));
    assert_eq!(done.payload, saga.payload);
    let history = engine.history("order-1").await.unwrap();
    let kinds: Vec<_> = history.iter().map(|h| h.record.kind.name()).collect();
    assert_eq!(kinds.first(), Some(&"saga_started"));
    assert_eq!(kinds.last(), Some(&"saga_completed"));
    assert_eq!(history.len(), 8);
    assert!(history.windows(2).all(|w| w[0].offset < w[1].offset));
    let stats = engine.stats();
    assert_eq!(stats.counters.status_counts[Status::Completed.index()], 1);
    assert_eq!(stats.active_by_status.iter().sum::<usize>(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_compensates_and_a_finished_saga_rejects_more_replies() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    start(&engine, "order-2").await;
    answer(&engine, "order-2", Outcome::Succeeded).await;
    for attempt in 1..=3 {
        let got = engine
            .reply(
                "order-2",
                reply(
                    &format!("fail-{attempt}"),
                    "charge_payment",
                    Outcome::Failed,
                    attempt,
                ),
            )
            .await
            .unwrap();
        if attempt < 3 {
            clock.advance(60_000);
            engine.run_due_timers().await;
            assert_eq!(got.status, Status::InProgress);
        } else {
            assert_eq!(got.status, Status::Failed);
        }
    }
    let saga = engine.get("order-2").unwrap();
    assert_eq!(saga.current_step.as_deref(), Some("reserve_inventory"));
    answer(&engine, "order-2", Outcome::Compensated).await;
    engine.wait_indexed().await.unwrap();
    assert_eq!(engine.get("order-2").unwrap().status, Status::Compensated);
    let late = engine
        .reply(
            "order-2",
            reply("late", "ship_order", Outcome::Succeeded, 1),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            late,
            EngineError::Rejected(Rejection::Finished {
                status: Status::Compensated,
                ..
            })
        ),
        "{late}"
    );
    let unknown = engine
        .reply("nope", reply("x", "ship_order", Outcome::Succeeded, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, EngineError::SagaNotFound { .. }),
        "{unknown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_fire_from_the_timer_and_retry_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    start(&engine, "order-3").await;
    clock.advance(29_999);
    engine.run_due_timers().await;
    assert_eq!(engine.get("order-3").unwrap().steps[0].attempts, 1);
    clock.advance(1);
    engine.run_due_timers().await;
    clock.advance(200);
    engine.run_due_timers().await;
    let saga = engine.get("order-3").unwrap();
    assert_eq!(
        saga.steps[0].attempts, 2,
        "the timed-out attempt is retried"
    );
    assert!(saga.failure_reason.unwrap().contains("timed out"));
    answer(&engine, "order-3", Outcome::Succeeded).await;
    assert_eq!(engine.get("order-3").unwrap().status, Status::InProgress);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_start_and_reply_return_the_first_answer_and_append_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let first_answer;
    {
        let engine = open(dir.path(), &clock);
        let first = start(&engine, "order-4").await;
        let head = engine.log().next_offset();
        let again = engine
            .start(common::request(
                "order",
                Some("order-4"),
                serde_json::json!({"qty": 2, "order": "order-4"}),
            ))
            .await
            .unwrap();
        assert!(!again.created);
        assert_eq!(again.saga.saga_id, first.saga_id);
        let conflict = engine
            .start(common::request(
                "order",
                Some("order-4"),
                serde_json::json!({"qty": 3}),
            ))
            .await
            .unwrap_err();
        assert!(matches!(conflict, EngineError::StartConflict { .. }));
        assert_eq!(engine.log().next_offset(), head, "repeats append nothing");

        let r = reply("evt-1", "reserve_inventory", Outcome::Succeeded, 1);
        first_answer = engine.reply("order-4", r.clone()).await.unwrap();
        assert!(!first_answer.repeated);
        let head = engine.log().next_offset();
        let repeated = engine.reply("order-4", r.clone()).await.unwrap();
        assert!(repeated.repeated);
        assert_eq!(
            (repeated.status, repeated.offset),
            (first_answer.status, first_answer.offset)
        );
        assert_eq!(engine.log().next_offset(), head);
        // The same reply with its data written otherwise is the same reply.
        let respaced = Reply {
            data: r#"{ "ok" : true }"#.into(),
            ..r.clone()
        };
        assert!(engine.reply("order-4", respaced).await.unwrap().repeated);
        // Its event id with another outcome, step, attempt, data or reason is refused
        // and appends nothing.
        let others = [
            reply("evt-1", "reserve_inventory", Outcome::Failed, 1),
            reply("evt-1", "charge_payment", Outcome::Succeeded, 1),
            reply("evt-1", "reserve_inventory", Outcome::Succeeded, 2),
            Reply {
                data: r#"{"ok":false}"#.into(),
                ..r.clone()
            },
        ];
        for other in others {
            let refused = engine.reply("order-4", other.clone()).await.unwrap_err();
            assert!(
                matches!(
                    refused,
                    EngineError::Rejected(Rejection::EventConflict { .. })
                ),
                "{other:?}: {refused}"
            );
        }
        assert_eq!(engine.log().next_offset(), head);
        // Event ids are scoped to their saga: another saga's reply may reuse one.
        start(&engine, "order-y").await;
        let other = engine.reply("order-y", r).await.unwrap();
        assert!(!other.repeated);
    }
    // Across a restart the answers come from the index.
    let engine = open(dir.path(), &clock);
    let r = reply("evt-1", "reserve_inventory", Outcome::Succeeded, 1);
    let repeated = engine.reply("order-4", r).await.unwrap();
    assert!(repeated.repeated);
    assert_eq!(
        (repeated.status, repeated.offset),
        (first_answer.status, first_answer.offset)
    );
    let again = start(&engine, "order-4").await;
    assert_eq!(again.status, Status::InProgress);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    let head = engine.log().next_offset();
    let bad_id = engine
        .start(common::request(
            "order",
            Some("has space"),
            serde_json::json!({}),
        ))
        .await
        .unwrap_err();
    assert!(matches!(
        bad_id,
        EngineError::InvalidRequest {
            field: "saga_id",
            ..
        }
    ));
    let unknown_type = engine
        .start(common::request("invoice", None, serde_json::json!({})))
        .await
        .unwrap_err();
    assert!(matches!(
        unknown_type,
        EngineError::UnknownDefinition { .. }
    ));
    start(&engine, "order-5").await;
    let head_after_start = engine.log().next_offset();
    assert!(head_after_start > head);
    let wrong_step = engine
        .reply("order-5", reply("e", "ship_order", Outcome::Succeeded, 1))
        .await
        .unwrap_err();
    assert!(
        wrong_step
            .to_string()
            .contains("reserve_inventory attempt 1"),
        "{wrong_step}"
    );
    let unknown_step = engine
        .reply("order-5", reply("e", "wrap_gift", Outcome::Succeeded, 1))
        .await
        .unwrap_err();
    assert_eq!(unknown_step.class(), sagalog_engine::ErrorClass::Conflict);
    assert!(
        unknown_step
            .to_string()
            .contains("expects a reply to execute of step reserve_inventory"),
        "names what the saga expects: {unknown_step}"
    );
    let zero = engine
        .reply(
            "order-5",
            reply("e", "reserve_inventory", Outcome::Succeeded, 0),
        )
        .await
        .unwrap_err();
    assert_eq!(zero.class(), sagalog_engine::ErrorClass::BadRequest);
    assert_eq!(engine.log().next_offset(), head_after_start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_sagas_complete_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = Arc::new(open(dir.path(), &clock));
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let engine = engine.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    let id = format!("c-{t}-{i}");
                    start(&engine, &id).await;
                    let fail = (t + i) % 4 == 0;
                    answer(&engine, &id, Outcome::Succeeded).await;
                    if fail {
                        for attempt in 1..=3 {
                            answer(&engine, &id, Outcome::Failed).await;
                            if attempt < 3 {
                                // The ticker moves the clock past the backoff.
                                wait_for_attempt(&engine, &id, 1, attempt + 1).await;
                            }
                        }
                        assert_eq!(engine.get(&id).unwrap().status, Status::Failed);
                        answer(&engine, &id, Outcome::Compensated).await;
                    } else {
                        answer(&engine, &id, Outcome::Succeeded).await;
                        answer(&engine, &id, Outcome::Succeeded).await;
                    }
                }
            })
        })
        .collect();
    let ticker = {
        let clock = clock.clone();
        let engine = engine.clone();
        tokio::spawn(async move {
            loop {
                clock.advance(1000);
                engine.run_due_timers().await;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };
    for task in tasks {
        task.await.unwrap();
    }
    ticker.abort();
    engine.wait_indexed().await.unwrap();
    let stats = engine.stats();
    let completed = stats.counters.status_counts[Status::Completed.index()];
    let compensated = stats.counters.status_counts[Status::Compensated.index()];
    assert_eq!(completed + compensated, 640);
    assert_eq!(compensated, 160);
    assert_eq!(stats.active_by_status.iter().sum::<usize>(), 0);
}

/// Waits until attempt `attempt` of step `step` has been issued.
async fn wait_for_attempt(engine: &sagalog_engine::Engine, id: &str, step: usize, attempt: u32) {
    for _ in 0..10_000 {
        if engine.get(id).unwrap().steps[step].attempts >= attempt {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("attempt {attempt} of step {step} of {id} was never issued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_and_pages_through_every_saga_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    let mut two_step = (**engine.definitions().first().unwrap()).clone();
    two_step.name = "refund".into();
    two_step.steps.truncate(1);
    engine.register_definition(two_step).await.unwrap();
    for i in 0..25 {
        clock.advance(10);
        let saga_type = if i % 5 == 0 { "refund" } else { "order" };
        engine
            .start(common::request(
                saga_type,
                Some(&format!("l-{i:02}")),
                serde_json::json!({}),
            ))
            .await
            .unwrap();
        if i % 3 == 0 {
            clock.advance(1);
            answer(&engine, &format!("l-{i:02}"), Outcome::Succeeded).await;
        }
    }
    engine.wait_indexed().await.unwrap();
    let seen: Vec<(u64, String)> = list_all(
        &engine,
        ListQuery {
            limit: 4,
            ..ListQuery::default()
        },
    )
    .await
    .into_iter()
    .map(|s| (s.updated_at_ms, s.saga_id))
    .collect();
    assert_eq!(seen.len(), 25, "every saga once: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");
    let refunds = engine
        .list(&ListQuery {
            limit: 100,
            saga_type: Some("refund".into()),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    let ids: BTreeSet<_> = refunds.items.iter().map(|s| s.saga_id.clone()).collect();
    assert_eq!(
        ids,
        ["l-00", "l-05", "l-10", "l-15", "l-20"]
            .map(String::from)
            .into()
    );
    // Refunds answered once are completed (one step); listed from the finished index.
    let completed = engine
        .list(&ListQuery {
            limit: 100,
            status: Some(Status::Completed),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    let ids: BTreeSet<_> = completed.items.iter().map(|s| s.saga_id.clone()).collect();
    assert_eq!(ids, ["l-00", "l-15"].map(String::from).into());
    let window = engine
        .list(&ListQuery {
            limit: 100,
            from_ms: Some(common::T0 + 100),
            to_ms: Some(common::T0 + 150),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert!(window
        .items
        .iter()
        .all(|s| (common::T0 + 100..=common::T0 + 150).contains(&s.updated_at_ms)));
    assert!(!window.items.is_empty());
    assert!(engine
        .list(&ListQuery {
            limit: 1001,
            ..ListQuery::default()
        })
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_rebuilds_identical_state_with_and_without_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let (stats_before, views_before) = {
        let engine = open(dir.path(), &clock);
        let mut v2 = (**engine.definitions().first().unwrap()).clone();
        v2.version = 2;
        v2.steps.truncate(2);
        for i in 0..30 {
            if i == 15 {
                engine.register_definition(v2.clone()).await.unwrap();
                engine.snapshot().await.unwrap();
            }
            let id = format!("r-{i}");
            start(&engine, &id).await;
            for _ in 0..(i % 3) {
                answer(&engine, &id, Outcome::Succeeded).await;
            }
        }
        engine.wait_indexed().await.unwrap();
        let views: Vec<_> = (0..30)
            .map(|i| engine.get(&format!("r-{i}")).unwrap())
            .collect();
        (engine.stats(), views)
    };
    assert_eq!(views_before[29].definition_version, 2);
    assert_eq!(views_before[2].definition_version, 1);
    assert_eq!(views_before[2].status, Status::InProgress);
    assert_eq!(
        views_before[29].status,
        Status::Completed,
        "two answers end a v2 saga"
    );
    let check = |engine: &sagalog_engine::Engine| {
        let stats = engine.stats();
        assert_eq!(stats.counters, stats_before.counters);
        assert_eq!(stats.active_by_status, stats_before.active_by_status);
        assert_eq!(stats.oldest_updated_ms, stats_before.oldest_updated_ms);
        for (i, before) in views_before.iter().enumerate() {
            assert_eq!(&engine.get(&format!("r-{i}")).unwrap(), before);
        }
    };
    {
        let engine = open(dir.path(), &clock);
        assert!(
            engine.stats().snapshot_offset > 0,
            "restored from the snapshot"
        );
        check(&engine);
    }
    // Without snapshots (and without indexes): the whole log gives the same.
    std::fs::remove_dir_all(dir.path().join("snapshots")).unwrap();
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let engine = open(dir.path(), &clock);
    assert_eq!(engine.stats().snapshot_offset, 0);
    check(&engine);
    // A saga started on version 1 finishes on version 1; new ones start on version 2.
    let old = answer(&engine, "r-2", Outcome::Succeeded).await;
    assert_eq!(old.status, Status::Completed);
    assert_eq!(start(&engine, "r-new").await.definition_version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_validated_and_versions_never_change() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    let mut bad = (**engine.definitions().first().unwrap()).clone();
    bad.steps[0].max_attempts = 0;
    let err = engine.register_definition(bad).await.unwrap_err();
    assert_eq!(err.class(), sagalog_engine::ErrorClass::BadRequest);
    assert!(err.to_string().contains("steps[0].max_attempts"), "{err}");
    let mut changed: Definition = (**engine.definitions().first().unwrap()).clone();
    changed.steps[0].timeout_ms = 1;
    let err = engine.register_definition(changed).await.unwrap_err();
    assert_eq!(err.class(), sagalog_engine::ErrorClass::Conflict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timer_thread_fires_timeouts_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let engine = sagalog_engine::Engine::open(dir.path(), common::config()).unwrap();
    let quick = Definition::from_json(
        r#"{"name": "quick", "version": 1, "steps": [
            {"name": "only", "topic": "quick.commands", "compensable": true,
             "timeout_ms": 30, "max_attempts": 2, "backoff_ms": 5}]}"#,
    )
    .unwrap();
    engine.register_definition(quick).await.unwrap();
    let started = engine
        .start(common::request("quick", Some("q-1"), serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(started.saga.status, Status::Started);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Both attempts time out; the step may have taken effect, so it is compensated,
    // and both attempts of its compensation time out too.
    loop {
        let saga = engine.get("q-1").unwrap();
        if saga.status == Status::CompensationFailed {
            assert_eq!(saga.steps[0].attempts, 2, "both compensations timed out");
            let timeouts = engine
                .history("q-1")
                .await
                .unwrap()
                .iter()
                .filter(|item| matches!(item.record.kind, Kind::StepTimedOut { .. }))
                .count();
            assert_eq!(timeouts, 4);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no timeout fired: {saga:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[derive(Default)]
struct Recorder {
    events: parking_lot::Mutex<Vec<String>>,
}

impl sagalog_engine::EngineObserver for Recorder {
    fn saga_status(&self, saga_type: &str, status: Status, duration_ms: u64) {
        self.events
            .lock()
            .push(format!("{saga_type} {status} {duration_ms}"));
    }

    fn step_outcome(
        &self,
        saga_type: &str,
        step: &str,
        action: sagalog_engine::Action,
        outcome: &'static str,
        duration_ms: u64,
    ) {
        self.events.lock().push(format!(
            "{saga_type} {step} {} {outcome} {duration_ms}",
            action.as_str()
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observer_sees_step_outcomes_and_saga_endings_with_durations() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let recorder = Arc::new(Recorder::default());
    let config = sagalog_engine::EngineConfig {
        observer: Some(recorder.clone()),
        ..common::config()
    };
    let engine =
        sagalog_engine::Engine::open_with_clock(dir.path(), config, clock.clone()).unwrap();
    start(&engine, "o-1").await;
    clock.advance(40);
    answer(&engine, "o-1", Outcome::Succeeded).await;
    clock.advance(60);
    let fail = |attempt| {
        reply(
            &format!("f{attempt}"),
            "charge_payment",
            Outcome::Failed,
            attempt,
        )
    };
    engine.reply("o-1", fail(1)).await.unwrap();
    clock.advance(200);
    engine.run_due_timers().await;
    engine.reply("o-1", fail(2)).await.unwrap();
    clock.advance(400);
    engine.run_due_timers().await;
    engine.reply("o-1", fail(3)).await.unwrap();
    clock.advance(25);
    answer(&engine, "o-1", Outcome::Compensated).await;
    let events = recorder.events.lock().clone();
    assert_eq!(
        events,
        [
            "order reserve_inventory execute succeeded 40",
            "order charge_payment execute failed 60",
            "order charge_payment execute failed 0",
            "order charge_payment execute failed 0",
            "order FAILED 700",
            "order reserve_inventory compensate compensated 25",
            "order COMPENSATED 725",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_rebuilds_the_indexes_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    {
        let engine = open(dir.path(), &clock);
        for i in 0..5 {
            let id = format!("x-{i}");
            start(&engine, &id).await;
            for _ in 0..3 {
                answer(&engine, &id, Outcome::Succeeded).await;
            }
        }
        engine.wait_indexed().await.unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let records = sagalog_engine::Engine::reindex(dir.path(), &common::config()).unwrap();
    assert_eq!(records, 40);
    let engine = open(dir.path(), &clock);
    for i in 0..5 {
        assert_eq!(
            engine.get(&format!("x-{i}")).unwrap().status,
            Status::Completed
        );
    }
    let page = engine
        .list(&ListQuery {
            limit: 10,
            status: Some(Status::Completed),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_mid_append_leaves_the_saga_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    start(&engine, "gone-1").await;
    let r = reply("evt-gone", "reserve_inventory", Outcome::Succeeded, 1);
    // Polled once, up to where it waits for the fsync, then dropped (as hyper drops a
    // handler when its connection closes).
    {
        let pending = engine.reply("gone-1", r.clone());
        tokio::pin!(pending);
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(pending.as_mut().poll(cx))).await;
        assert!(
            first.is_pending(),
            "the reply should be waiting on the disk"
        );
    }
    // The reply was recorded anyway, and the saga is not stuck busy.
    let again = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        engine.reply("gone-1", r),
    )
    .await
    .expect("the saga is not left busy")
    .unwrap();
    assert!(again.repeated, "the dropped reply's records were installed");
    answer(&engine, "gone-1", Outcome::Succeeded).await;
    let history = engine.history("gone-1").await.unwrap();
    let seqs: Vec<u32> = history.iter().map(|h| h.record.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u32).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_without_ids_gets_a_fresh_saga_id_and_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    let mut ids = BTreeSet::new();
    for _ in 0..50 {
        let saga = engine
            .start(common::request("order", None, serde_json::json!({"n": 1})))
            .await
            .unwrap()
            .saga;
        assert!(
            sagalog_engine::is_valid_saga_id(&saga.saga_id),
            "{}",
            saga.saga_id
        );
        assert_eq!(saga.saga_id.len(), 36, "a UUID: {}", saga.saga_id);
        assert_eq!(saga.trace_id.len(), 32);
        assert!(saga.trace_id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(ids.insert(saga.saga_id.clone()), "ids are unique");
        assert_eq!(engine.get(&saga.saga_id).unwrap().trace_id, saga.trace_id);
    }
    let given = engine
        .start(StartRequest {
            saga_type: "order".into(),
            saga_id: Some("traced".into()),
            payload: serde_json::json!({}),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        })
        .await
        .unwrap()
        .saga;
    assert_eq!(given.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sagas_page_newest_first_across_index_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = Arc::new(open(dir.path(), &clock));
    // 200 sagas finishing 4 s apart, in bursts of 80 s (more than a bucket's 60 s span,
    // so a batch can write several buckets), each burst indexed before the next.
    for burst in 0..10 {
        for i in 0..20 {
            let id = format!("p-{:03}", burst * 20 + i);
            clock.advance(4_000);
            start(&engine, &id).await;
            for _ in 0..3 {
                answer(&engine, &id, Outcome::Succeeded).await;
            }
        }
        engine.wait_indexed().await.unwrap();
    }
    let completed = |from_ms: Option<u64>, to_ms: Option<u64>| ListQuery {
        limit: 7,
        status: Some(Status::Completed),
        from_ms,
        to_ms,
        ..ListQuery::default()
    };
    let seen: Vec<(u64, String)> = list_all(&engine, completed(None, None))
        .await
        .into_iter()
        .map(|s| (s.updated_at_ms, s.saga_id))
        .collect();
    let expected: Vec<String> = (0..200).rev().map(|i| format!("p-{i:03}")).collect();
    let ids: Vec<String> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids, expected, "every finished saga once, newest first");
    assert!(seen.windows(2).all(|w| w[0] > w[1]));
    // A window in the middle of the history.
    let (from, to) = (seen[150].0, seen[40].0);
    let window: Vec<String> = list_all(&engine, completed(Some(from), Some(to)))
        .await
        .into_iter()
        .map(|s| s.saga_id)
        .collect();
    assert_eq!(window, expected[40..=150].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_updated_in_one_millisecond_list_by_descending_id_and_page_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = Arc::new(open(dir.path(), &clock));
    // The clock stands still: finished sagas (from the index) and active ones (from
    // memory) all share one updated_at.
    for i in 0..6 {
        let id = format!("t-{i}");
        start(&engine, &id).await;
        if i % 2 == 0 {
            for _ in 0..3 {
                answer(&engine, &id, Outcome::Succeeded).await;
            }
        }
    }
    engine.wait_indexed().await.unwrap();
    let listed = list_all(
        &engine,
        ListQuery {
            limit: 2,
            ..ListQuery::default()
        },
    )
    .await;
    assert!(listed.iter().all(|s| s.updated_at_ms == common::T0));
    let seen: Vec<String> = listed.into_iter().map(|s| s.saga_id).collect();
    let expected: Vec<String> = (0..6).rev().map(|i| format!("t-{i}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_saga_keeps_its_id_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    {
        let engine = open(dir.path(), &clock);
        start(&engine, "done-1").await;
        for _ in 0..3 {
            answer(&engine, "done-1", Outcome::Succeeded).await;
        }
        engine.wait_indexed().await.unwrap();
    }
    let engine = open(dir.path(), &clock);
    let again = engine
        .start(common::request(
            "order",
            Some("done-1"),
            serde_json::json!({"order": "done-1", "qty": 2}),
        ))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.saga.status, Status::Completed);
    let other = engine
        .start(common::request(
            "order",
            Some("done-1"),
            serde_json::json!({"qty": 9}),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(other, EngineError::StartConflict { .. }),
        "{other}"
    );
    let late = engine
        .reply("done-1", reply("late", "ship_order", Outcome::Succeeded, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(late, EngineError::Rejected(Rejection::Finished { .. })),
        "{late}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrow_type_filter_pages_on_past_the_scan_bound() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let config = sagalog_engine::EngineConfig {
        list_scan_limit: 10,
        ..common::config()
    };
    let engine =
        sagalog_engine::Engine::open_with_clock(dir.path(), config, clock.clone()).unwrap();
    let mut rare = (**engine.definitions().first().unwrap()).clone();
    rare.name = "rare".into();
    rare.steps.truncate(1);
    engine.register_definition(rare).await.unwrap();
    // 90 finished order sagas and, among them, 3 finished rare ones.
    let mut rare_ids = Vec::new();
    for i in 0..90 {
        clock.advance(1_000);
        let id = format!("n-{i:02}");
        if i % 30 == 7 {
            engine
                .start(common::request("rare", Some(&id), serde_json::json!({})))
                .await
                .unwrap();
            answer(&engine, &id, Outcome::Succeeded).await;
            rare_ids.push(id);
        } else {
            start(&engine, &id).await;
            for _ in 0..3 {
                answer(&engine, &id, Outcome::Succeeded).await;
            }
        }
        if i % 20 == 19 {
            engine.wait_indexed().await.unwrap();
        }
    }
    engine.wait_indexed().await.unwrap();
    let found: Vec<String> = list_all(
        &engine,
        ListQuery {
            limit: 5,
            status: Some(Status::Completed),
            saga_type: Some("rare".into()),
            ..ListQuery::default()
        },
    )
    .await
    .into_iter()
    .map(|s| s.saga_id)
    .collect();
    rare_ids.reverse();
    assert_eq!(
        found, rare_ids,
        "every rare saga, newest first, none lost at the bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_render_from_any_starting_offset_with_the_saga_payload_and_stable_ids() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    start(&engine, "c-1").await;
    start(&engine, "c-2").await;
    answer(&engine, "c-1", Outcome::Failed).await;
    clock.advance(60_000);
    engine.run_due_timers().await;
    answer(&engine, "c-1", Outcome::Succeeded).await;

    let records = engine.log().read_batch(0, 1000, 1 << 20).unwrap();
    let all = engine.commands(&records).unwrap();
    let seen: Vec<_> = all
        .iter()
        .map(|c| (c.saga_id.as_str(), c.step.as_str(), c.attempt))
        .collect();
    assert_eq!(
        seen,
        [
            ("c-1", "reserve_inventory", 1),
            ("c-2", "reserve_inventory", 1),
            ("c-1", "reserve_inventory", 2),
            ("c-1", "charge_payment", 1),
        ]
    );
    let last = all.last().unwrap();
    assert_eq!(last.topic, "payment.commands");
    assert_eq!(last.action, sagalog_engine::Action::Execute);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&last.payload).unwrap(),
        serde_json::json!({"order": "c-1", "qty": 2})
    );
    assert_eq!(last.trace_id, engine.get("c-1").unwrap().trace_id);
    // Each batch that starts at a command (no saga_started in it) renders the same.
    for command in &all {
        let alone = engine
            .log()
            .read_batch(command.offset, 1, 0)
            .map(|batch| engine.commands(&batch).unwrap())
            .unwrap();
        assert_eq!(
            alone,
            std::slice::from_ref(command),
            "the command at offset {}",
            command.offset
        );
    }
    let ids: BTreeSet<_> = all.iter().map(|c| c.event_id.clone()).collect();
    assert_eq!(ids.len(), all.len(), "event ids are unique: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_and_a_replay_puts_its_command_back_in_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    start(&engine, "d-1").await;
    let head = engine.log().next_offset();
    let command = engine
        .commands(&engine.log().read_batch(0, 100, 1 << 20).unwrap())
        .unwrap()
        .remove(0);
    let dead = engine
        .dead_letter("d-1", command.offset, "too large".into())
        .await
        .unwrap();
    assert_eq!(dead, head);
    engine.wait_indexed().await.unwrap();
    let listed = engine.dead_letters(None, 10).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].offset,
            listed[0].command_offset,
            listed[0].reason.as_str()
        ),
        (dead, command.offset, "too large")
    );
    assert_eq!(listed[0].command.as_ref(), Some(&command));
    assert_eq!(listed[0].replayed_at, None);
    assert!(engine.dead_letters(Some(dead), 10).unwrap().is_empty());

    let replay = engine.replay_dead_letter(dead).await.unwrap();
    let fed = engine
        .commands(&engine.log().read_batch(replay, 1, 0).unwrap())
        .unwrap();
    assert_eq!(fed.len(), 1, "the replay carries the command again");
    assert_eq!(
        (fed[0].offset, fed[0].feed_offset),
        (command.offset, replay)
    );
    assert_eq!(
        fed[0].event_id, command.event_id,
        "with its event id, for deduplication"
    );
    engine.wait_indexed().await.unwrap();
    assert_eq!(
        engine.dead_letters(None, 10).unwrap()[0].replayed_at,
        Some(replay)
    );
    let not_one = engine.replay_dead_letter(command.offset).await.unwrap_err();
    assert!(
        matches!(not_one, EngineError::NoDeadLetter { .. }),
        "{not_one}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_failing_and_compensating_in_one_reply_counts_both_statuses_live_and_on_replay() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let live = {
        let engine = open(dir.path(), &clock);
        let mut single = (**engine.definitions().first().unwrap()).clone();
        single.name = "single".into();
        single.steps.truncate(1);
        single.steps[0].max_attempts = 1;
        engine.register_definition(single).await.unwrap();
        for id in ["f-1", "f-2"] {
            let request = common::request("single", Some(id), serde_json::json!({}));
            engine.start(request).await.unwrap();
            let outcome = answer(&engine, id, Outcome::Failed).await;
            assert_eq!(
                outcome.status,
                Status::Compensated,
                "FAILED, then COMPENSATED"
            );
        }
        let stats = engine.stats();
        let entered = stats.counters.by_type["single"].entered;
        assert_eq!(entered[Status::Failed.index()], 2, "both entered FAILED");
        assert_eq!(entered[Status::Compensated.index()], 2);
        assert_eq!(stats.counters.status_counts[Status::Failed.index()], 0);
        assert!(stats.counters.last_failed_at_ms > 0);
        stats.counters
    };
    std::fs::remove_dir_all(dir.path().join("snapshots")).unwrap();
    let engine = open(dir.path(), &clock);
    assert_eq!(engine.stats().counters, live, "replay counts the same");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_fields_and_id_prefixes_filter_active_and_finished_sagas_past_the_scan_bound() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let config = sagalog_engine::EngineConfig {
        list_scan_limit: 7,
        ..common::config()
    };
    let engine =
        sagalog_engine::Engine::open_with_clock(dir.path(), config, clock.clone()).unwrap();
    // 60 sagas of two customers; every third finished (listed from the index), the
    // rest active (listed from memory).
    let mut of_acme = Vec::new();
    for i in 0..60 {
        clock.advance(1_000);
        let id = format!("{}-{i:02}", if i % 4 == 0 { "vip" } else { "std" });
        let customer = if i % 5 == 0 { "acme" } else { "other" };
        let payload = serde_json::json!({"customer": {"name": customer}, "n": i, "tags": ["a", i]});
        engine
            .start(common::request("order", Some(&id), payload))
            .await
            .unwrap();
        if i % 3 == 0 {
            for _ in 0..3 {
                answer(&engine, &id, Outcome::Succeeded).await;
            }
        }
        if customer == "acme" {
            of_acme.push(id);
        }
    }
    engine.wait_indexed().await.unwrap();
    let query = |payload: Vec<(&str, &str)>, id_prefix: Option<&str>| ListQuery {
        limit: 3,
        id_prefix: id_prefix.map(str::to_string),
        payload: payload
            .into_iter()
            .map(|(path, value)| sagalog_engine::PayloadMatch::parse(path, value).unwrap())
            .collect(),
        ..ListQuery::default()
    };
    let ids = |sagas: Vec<SagaView>| sagas.into_iter().map(|s| s.saga_id).collect::<Vec<_>>();
    let newest_first = |mut ids: Vec<String>| {
        ids.reverse();
        ids
    };
    // A nested field: every match once, newest first, across pages that stop at the
    // scan bound (7 reads) before they are full.
    let acme = ids(list_all(&engine, query(vec![("customer.name", "acme")], None)).await);
    assert_eq!(acme, newest_first(of_acme.clone()));
    // A number matches its JSON text; an array element by index; fields combine.
    let n = ids(list_all(&engine, query(vec![("n", "45"), ("tags.1", "45")], None)).await);
    assert_eq!(n, vec!["std-45".to_string()]);
    assert!(ids(list_all(&engine, query(vec![("n", "\"45\"")], None)).await).is_empty());
    assert!(ids(list_all(&engine, query(vec![("customer", "acme")], None)).await).is_empty());
    // An id prefix, alone and with a payload field.
    let vips: Vec<String> = (0..60)
        .rev()
        .filter(|i| i % 4 == 0)
        .map(|i| format!("vip-{i:02}"))
        .collect();
    assert_eq!(
        ids(list_all(&engine, query(vec![], Some("vip-"))).await),
        vips
    );
    let acme_vips: Vec<String> = newest_first(of_acme)
        .into_iter()
        .filter(|id| id.starts_with("vip-"))
        .collect();
    assert_eq!(
        ids(list_all(&engine, query(vec![("customer.name", "acme")], Some("vip"))).await),
        acme_vips
    );
    // A prefix no saga has: the index scan still stops at its bound (an empty page that
    // goes on), and following it ends with nothing.
    let first = engine.list(&query(vec![], Some("none-"))).await.unwrap();
    assert!(
        first.items.is_empty() && first.next_cursor.is_some(),
        "{:?}",
        first.next_cursor
    );
    assert!(list_all(&engine, query(vec![], Some("none-")))
        .await
        .is_empty());
    // A number, boolean or null matches the JSON it is written as.
    let n = ids(list_all(&engine, query(vec![("n", "45.0")], None)).await);
    assert!(n.is_empty(), "45.0 is not the number 45 as written: {n:?}");
    // Bad fields are refused.
    assert!(sagalog_engine::PayloadMatch::parse("a..b", "x").is_err());
    assert!(sagalog_engine::PayloadMatch::parse(&"k".repeat(300), "x").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_for_the_saga_as_it_was_is_refused_once_it_changed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let engine = open(dir.path(), &clock);
    start(&engine, "op-1").await;
    let as_of = common::T0;
    clock.advance(1_000);
    answer(&engine, "op-1", Outcome::Succeeded).await;
    // Updated after `as_of`: refused, nothing recorded.
    let before = engine.history("op-1").await.unwrap().len();
    let refused = engine
        .operate("op-1", sagalog_engine::Operation::Retry, Some(as_of))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            EngineError::Rejected(Rejection::ChangedSince { .. })
        ),
        "{refused}"
    );
    assert_eq!(engine.history("op-1").await.unwrap().len(), before);
    // Unchanged since a later moment (now past): done, and recorded now, after it.
    let later = common::T0 + 1_000;
    clock.advance(1);
    let retried = engine
        .operate("op-1", sagalog_engine::Operation::Retry, Some(later))
        .await
        .unwrap();
    assert_eq!(
        retried.steps[1].attempts, 2,
        "the pending command re-issued"
    );
    // So the same call again finds it changed after that moment: refused.
    let again = engine
        .operate("op-1", sagalog_engine::Operation::Retry, Some(later))
        .await;
    assert!(
        matches!(
            again,
            Err(EngineError::Rejected(Rejection::ChangedSince { .. }))
        ),
        "a repeat acts once: {again:?}"
    );

    // A saga that finished after the moment, and left memory: changed since, too
    // (not merely finished), as a bulk call that raced another one reports it.
    start(&engine, "op-2").await;
    let before_finish = sagalog_engine::Clock::now_ms(&*clock);
    clock.advance(1_000);
    for _ in 0..3 {
        answer(&engine, "op-2", Outcome::Succeeded).await;
    }
    engine.wait_indexed().await.unwrap();
    // Opened again, the finished saga is read from the index, not memory.
    drop(engine);
    let engine = open(dir.path(), &clock);
    let override_to = |to| sagalog_engine::Operation::Override {
        to,
        reason: "bulk".into(),
    };
    let late = engine
        .operate(
            "op-2",
            override_to(Status::Compensated),
            Some(before_finish),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(late, EngineError::Rejected(Rejection::ChangedSince { .. })),
        "{late}"
    );
    let finished = engine
        .operate(
            "op-2",
            override_to(Status::Compensated),
            Some(sagalog_engine::Clock::now_ms(&*clock)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(finished, EngineError::Rejected(Rejection::Finished { .. })),
        "{finished}"
    );
}
