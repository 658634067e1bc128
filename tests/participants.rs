//! What a participant service meets over HTTP: the outbox split per service (`topic`)
//! and among its replicas (`members`/`member`), `after=latest`, a long poll that waits
//! for its own commands only, and the data of earlier steps in every command.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{get, post};
use sagalog_testkit::client::Client;
use serde_json::{json, Value};

/// Every command the outbox gives for `query` (a filter), paging with `next_after` to
/// the end: (commands, the last `next_after`).
async fn read_all(c: &mut Client, query: &str) -> (Vec<Value>, Option<u64>) {
    let mut items = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let page_query = match after {
            Some(after) => format!("{query}&after={after}&limit=7"),
            None => format!("{query}&limit=7"),
        };
        let page = get(c, &format!("/api/v1/outbox?{page_query}")).await;
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        let got = page["items"].as_array().unwrap().clone();
        let next = page["next_after"].as_u64();
        if got.is_empty() && next == after {
            return (items, after);
        }
        items.extend(got);
        after = next;
    }
}

fn event_ids(commands: &[Value]) -> BTreeSet<String> {
    commands
        .iter()
        .map(|c| c["event_id"].as_str().unwrap().to_string())
        .collect()
}

async fn succeed(c: &mut Client, command: &Value, data: Value) {
    let id = command["saga_id"].as_str().unwrap();
    let answer = post(
        c,
        &format!("/api/v1/sagas/{id}/events"),
        json!({"event_id": format!("{}-done", command["event_id"].as_str().unwrap()),
               "step": command["step"], "outcome": "succeeded",
               "attempt": command["attempt"], "data": data}),
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_a_topic_disjointly_by_saga_and_latest_skips_history() {
    let root = tempfile::tempdir().unwrap();
    let server = common::serve(&common::data_dir(&root), &[]);
    let mut c = common::client(&server).await;
    for i in 0..30 {
        let started = post(
            &mut c,
            "/api/v1/sagas",
            json!({"type": "order", "saga_id": format!("m-{i}"), "payload": {"n": i}}),
        )
        .await;
        assert_eq!(started.status, 201, "{}", started.text());
    }
    // The inventory service takes its commands (only those) and answers with data.
    let (inventory, _) = read_all(&mut c, "topic=inventory.commands").await;
    assert_eq!(inventory.len(), 30);
    for command in &inventory {
        assert_eq!(command["topic"], "inventory.commands");
        assert_eq!(command["results"], json!({}));
        let reservation = format!("r-{}", command["saga_id"].as_str().unwrap());
        succeed(&mut c, command, json!({"reservation": reservation})).await;
    }
    // The payment service sees the reservation in its commands.
    let (payment, _) = read_all(&mut c, "topic=payment.commands").await;
    assert_eq!(payment.len(), 30);
    for command in &payment {
        let saga_id = command["saga_id"].as_str().unwrap();
        assert_eq!(
            command["results"],
            json!({"reserve_inventory": {"reservation": format!("r-{saga_id}")}})
        );
    }
    let saga = get(&mut c, "/api/v1/sagas/m-3").await.json();
    assert_eq!(saga["steps"][0]["result"], json!({"reservation": "r-m-3"}));
    assert_eq!(saga["steps"][1]["result"], Value::Null);

    // Three replicas of one service reading both topics: disjoint, covering, and each
    // saga's commands with one replica.
    let (all, _) = read_all(&mut c, "topic=inventory.commands&topic=payment.commands").await;
    assert_eq!(all.len(), 60);
    let mut owner: BTreeMap<String, u32> = BTreeMap::new();
    let mut union = BTreeSet::new();
    for member in 0..3 {
        let query =
            format!("topic=inventory.commands&topic=payment.commands&members=3&member={member}");
        let (mine, _) = read_all(&mut c, &query).await;
        assert!(!mine.is_empty(), "member {member} got nothing of 30 sagas");
        for command in &mine {
            let saga_id = command["saga_id"].as_str().unwrap().to_string();
            let first = *owner.entry(saga_id.clone()).or_insert(member);
            assert_eq!(first, member, "saga {saga_id} went to two members");
            assert_eq!(sagalog_engine::member_of(&saga_id, 3), member);
        }
        let ids = event_ids(&mine);
        assert!(union.is_disjoint(&ids), "member {member} shares commands");
        union.extend(ids);
    }
    assert_eq!(union, event_ids(&all));

    // `after=latest` skips all of that; what comes next is there.
    let latest = get(&mut c, "/api/v1/outbox?after=latest").await.json();
    assert_eq!(latest["items"], json!([]));
    let resume = latest["next_after"].as_u64().unwrap();
    // A long poll for payment commands is not woken by an inventory command.
    let addr = server.addr;
    let waiting = tokio::spawn(async move {
        let mut c = Client::connect(addr).await.unwrap();
        let query = format!("/api/v1/outbox?topic=payment.commands&after={resume}&wait_ms=20000");
        c.get(&query).await.unwrap().json()
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "late", "payload": {}}),
    )
    .await;
    let page = get(&mut c, &format!("/api/v1/outbox?after={resume}"))
        .await
        .json();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["saga_id"], "late");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "woken by another topic's command");
    succeed(&mut c, &items[0], json!({"reservation": "r-late"})).await;
    let woken = waiting.await.unwrap();
    let items = woken["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{woken}");
    assert_eq!(
        (items[0]["saga_id"].as_str(), items[0]["step"].as_str()),
        (Some("late"), Some("charge_payment"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_outbox_filter_is_refused_naming_the_form_that_works() {
    let root = tempfile::tempdir().unwrap();
    let server = common::serve(&common::data_dir(&root), &[]);
    let mut c = common::client(&server).await;
    for (query, says) in [
        ("members=3&member=3", "member 3 of 3"),
        ("members=0&member=0", "members must be in 1..=1024"),
        ("member=1", "members=K&member=I"),
        ("topic=no%20spaces", "not a topic name"),
        ("after=earliest", "after"),
        (
            "topics=x",
            "known: after, limit, wait_ms, topic, members, member",
        ),
    ] {
        let answer = get(&mut c, &format!("/api/v1/outbox?{query}")).await;
        let message = common::expect_error(&answer, 400, "invalid_request");
        assert!(message.contains(says), "{query}: {message}");
    }
}

/// A definition with quick retries, for sagas that fail on purpose.
fn trip() -> Value {
    json!({"name": "trip", "version": 1, "steps": [
        {"name": "hold_seat", "topic": "seats.commands", "compensable": true,
         "timeout_ms": 30000, "max_attempts": 2, "backoff_ms": 10},
        {"name": "charge", "topic": "payment.commands", "compensable": true,
         "timeout_ms": 30000, "max_attempts": 2, "backoff_ms": 10},
        {"name": "issue_ticket", "topic": "tickets.commands", "compensable": false,
         "timeout_ms": 30000, "max_attempts": 2, "backoff_ms": 10}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_crates_participants_run_sagas_to_their_end_and_resume_where_they_stopped() {
    use sagalog_client::{Action, Client, Handled, Participant, StartSaga};

    let root = tempfile::tempdir().unwrap();
    let server = common::serve(&common::data_dir(&root), &[]);
    let client = Client::new(server.addr);
    client.put_definition(&trip()).await.unwrap();
    let refunds = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<Value>::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let position = |name: &str| root.path().join(format!("{name}.position"));
    let mut runs = Vec::new();
    // Seats: two replicas sharing the topic.
    for member in 0..2 {
        let p = Participant::new(client.clone(), "seats", "seats.commands")
            .member(member, 2)
            .position_file(position(&format!("seats-{member}")))
            .poll_wait(std::time::Duration::from_millis(500));
        runs.push(tokio::spawn(p.run(
            |c| async move { Handled::Done(Some(json!({"seat": format!("s-{}", c.saga_id)}))) },
            stopped(),
        )));
    }
    let seen = refunds.clone();
    let payment = Participant::new(client.clone(), "payment", "payment.commands")
        .position_file(position("payment"))
        .poll_wait(std::time::Duration::from_millis(500));
    runs.push(tokio::spawn(payment.run(
        move |c| {
            let seen = seen.clone();
            async move {
                match c.action {
                    Action::Execute => {
                        assert_eq!(c.results["hold_seat"]["seat"], format!("s-{}", c.saga_id));
                        Handled::Done(Some(json!({"charge_id": format!("ch-{}", c.saga_id)})))
                    }
                    Action::Compensate => {
                        seen.lock().push(c.result.clone().unwrap_or(Value::Null));
                        Handled::Done(None)
                    }
                }
            }
        },
        stopped(),
    )));
    let tickets = Participant::new(client.clone(), "tickets", "tickets.commands")
        .position_file(position("tickets"))
        .poll_wait(std::time::Duration::from_millis(500));
    runs.push(tokio::spawn(tickets.run(
        |c| async move {
            if c.payload["sold_out"] == true {
                Handled::Failed("sold out".into())
            } else {
                Handled::Done(None)
            }
        },
        stopped(),
    )));

    for i in 0..20 {
        let start = StartSaga {
            saga_type: "trip".into(),
            saga_id: Some(format!("t-{i}")),
            payload: json!({"sold_out": i % 5 == 0}),
        };
        client.start(&start).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for i in 0..20 {
        let id = format!("t-{i}");
        let saga = loop {
            let saga = client.get(&id).await.unwrap();
            if saga.is_finished() {
                break saga;
            }
            assert!(std::time::Instant::now() < deadline, "{saga:?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let want = if i % 5 == 0 {
            "COMPENSATED"
        } else {
            "COMPLETED"
        };
        assert_eq!(saga.status, want, "{saga:?}");
        assert_eq!(
            saga.step("charge").unwrap().result,
            Some(json!({"charge_id": format!("ch-{id}")}))
        );
    }
    let mut refunded: Vec<String> = refunds
        .lock()
        .iter()
        .map(|r| r["charge_id"].as_str().unwrap().to_string())
        .collect();
    refunded.sort();
    assert_eq!(refunded, ["ch-t-0", "ch-t-10", "ch-t-15", "ch-t-5"]);

    stop_tx.send(true).unwrap();
    let mut handled = 0;
    for run in runs {
        let stats = run.await.unwrap().expect("a participant stops cleanly");
        assert_eq!(stats.stale, 0, "{stats:?}");
        handled += stats.handled;
    }
    // 20 seats, 20 charges, 20 tickets (4 failing twice, so 24), 4 refunds, 4 seat
    // releases.
    assert_eq!(handled, 20 + 20 + 24 + 4 + 4);

    // Started again on their positions, they find nothing to do.
    let (again_tx, again_rx) = tokio::sync::watch::channel(false);
    let payment = Participant::new(client.clone(), "payment", "payment.commands")
        .position_file(position("payment"))
        .poll_wait(std::time::Duration::from_millis(200));
    let run = tokio::spawn(payment.run(
        |_| async { panic!("every payment command was handled before") },
        async move {
            let mut rx = again_rx;
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    again_tx.send(true).unwrap();
    assert_eq!(run.await.unwrap().unwrap().handled, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_the_server_refuses_fails_the_step_and_the_participant_goes_on() {
    use sagalog_client::{Client, Handled, Participant, StartSaga};

    let root = tempfile::tempdir().unwrap();
    let server = common::serve(&common::data_dir(&root), &["--max-step-data-bytes", "100"]);
    let client = Client::new(server.addr);
    client
        .put_definition(&json!({"name": "big", "version": 1, "steps": [
            {"name": "fill", "topic": "fill.commands", "compensable": false,
             "timeout_ms": 30000, "max_attempts": 1, "backoff_ms": 10}]}))
        .await
        .unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(
        Participant::new(client.clone(), "filler", "fill.commands")
            .poll_wait(std::time::Duration::from_millis(200))
            .run(
                |c| async move {
                    let size = c.payload["size"].as_u64().unwrap() as usize;
                    Handled::Done(Some(json!({"pad": "x".repeat(size)})))
                },
                async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                },
            ),
    );
    for (id, size) in [("too-big", 500), ("fits", 10)] {
        let start = StartSaga {
            saga_type: "big".into(),
            saga_id: Some(id.into()),
            payload: json!({ "size": size }),
        };
        client.start(&start).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for (id, status) in [("too-big", "COMPENSATED"), ("fits", "COMPLETED")] {
        let saga = loop {
            let saga = client.get(id).await.unwrap();
            if saga.is_finished() {
                break saga;
            }
            assert!(std::time::Instant::now() < deadline, "{saga:?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(saga.status, status, "{saga:?}");
    }
    let failed = client.get("too-big").await.unwrap();
    let reason = failed.failure_reason.unwrap_or_default();
    assert!(reason.contains("--max-step-data-bytes"), "{reason}");
    stop_tx.send(true).unwrap();
    let stats = run.await.unwrap().unwrap();
    assert_eq!(
        (stats.handled, stats.refused, stats.stale),
        (2, 0, 0),
        "{stats:?}"
    );
}

/// Commands carry every earlier step's data: a page of them ends once it holds about
/// 16 MiB (the server's page bound), and the next page goes on from its last command,
/// with none skipped or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_commands_ends_by_size_and_the_next_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let server = common::serve(&common::data_dir(&root), &[]);
    let mut c = common::client(&server).await;
    let data = json!({"pad": "x".repeat(60_000)});
    let sagas = 320;
    for n in 0..sagas {
        let id = format!("big-{n}");
        let started = post(
            &mut c,
            "/api/v1/sagas",
            json!({"type": "order", "saga_id": id, "payload": {}}),
        )
        .await;
        assert_eq!(started.status, 201, "{}", started.text());
        let reply = json!({"event_id": format!("{id}/r"), "step": "reserve_inventory",
                           "outcome": "succeeded", "attempt": 1, "data": data});
        let answer = post(&mut c, &format!("/api/v1/sagas/{id}/events"), reply).await;
        assert_eq!(answer.status, 202, "{}", answer.text());
    }
    // 320 payment commands of about 60 KB each: more than one page of 16 MiB.
    let mut seen = BTreeSet::new();
    let mut pages = 0;
    let mut after: Option<u64> = None;
    for _ in 0..20 {
        let path = match after {
            Some(after) => {
                format!("/api/v1/outbox?topic=payment.commands&limit=1000&after={after}")
            }
            None => "/api/v1/outbox?topic=payment.commands&limit=1000".to_string(),
        };
        let page = get(&mut c, &path).await;
        assert_eq!(page.status, 200);
        assert!(
            page.body.len() < 17 << 20,
            "a page of {} bytes",
            page.body.len()
        );
        let page = page.json();
        let items = page["items"].as_array().unwrap();
        if items.is_empty() {
            break;
        }
        pages += 1;
        for id in event_ids(items) {
            assert!(seen.insert(id.clone()), "{id} twice");
        }
        after = page["next_after"].as_u64();
    }
    assert!(pages >= 2, "{pages} pages");
    assert_eq!(seen.len(), sagas, "every payment command once");
}
