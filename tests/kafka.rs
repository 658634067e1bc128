//! `sagalog serve --kafka-brokers` against a real Kafka-protocol broker (`tansu`): the
//! topics are created, a saga's commands reach their step topics as the participants
//! would read them, and the outbox metrics count them.

mod common;

use std::time::{Duration, Instant};

use common::{data_dir, get, post, serve};
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use sagalog_testkit::process::{next_message, Tansu};
use sagalog_testkit::wait_until;
use serde_json::{json, Value};

/// One broker test at a time: each runs its own tansu and sagalog, and several at once
/// on a small machine starve each other past the tests' time bounds.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn consumer(tansu: &Tansu, topic: &str) -> StreamConsumer {
    tansu.consumer_from_start("participant", &[topic], 3)
}

async fn next_command(consumer: &StreamConsumer) -> Value {
    let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("a command within 60 s")
        .unwrap();
    serde_json::from_slice(message.payload().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_their_step_topics_and_the_outbox_metrics_count_them() {
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--kafka-brokers", &tansu.brokers()]);
    let mut c = common::client(&server).await;
    let started = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "k-1", "payload": {"amount": 7}}),
    )
    .await;
    assert_eq!(started.status, 201, "{}", started.text());

    let inventory = consumer(&tansu, "inventory.commands");
    let command = next_command(&inventory).await;
    assert_eq!(
        (
            &command["saga_id"],
            &command["step"],
            &command["action"],
            &command["attempt"]
        ),
        (
            &json!("k-1"),
            &json!("reserve_inventory"),
            &json!("execute"),
            &json!(1)
        )
    );
    assert_eq!(command["payload"], json!({"amount": 7}));
    let reply = json!({"event_id": "inv-1", "step": "reserve_inventory", "outcome": "succeeded", "attempt": 1});
    assert_eq!(
        post(&mut c, "/api/v1/sagas/k-1/events", reply).await.status,
        202
    );
    let payment = consumer(&tansu, "payment.commands");
    assert_eq!(next_command(&payment).await["step"], "charge_payment");
    // The broker answered the topic checks: /readyz has nothing to say.
    let ready: Value = serde_json::from_slice(&get(&mut c, "/readyz").await.body).unwrap();
    assert_eq!(ready, json!({"status": "ready"}));

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(&mut c, "/metrics").await.text();
        let published = common::samples(&metrics, &["outbox_published_events_total"]);
        if published == ["outbox_published_events_total 2"] {
            let pending = common::samples(&metrics, &["outbox_pending_events_total"]);
            assert_eq!(pending, [r#"outbox_pending_events_total{partition="0"} 0"#]);
            // Each command was a batch of its own, published at the first attempt.
            let first = common::samples(&metrics, &["outbox_optimistic_send_total"]);
            assert_eq!(
                first,
                [
                    r#"outbox_optimistic_send_total{outcome="failed"} 0"#,
                    r#"outbox_optimistic_send_total{outcome="succeeded"} 2"#
                ],
                "{metrics}"
            );
            let batches = common::samples(&metrics, &["outbox_publish_batch_size_count"]);
            assert_eq!(batches, ["outbox_publish_batch_size_count 2"]);
            break;
        }
        assert!(Instant::now() < deadline, "published count: {published:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.terminate().unwrap().success());
}

/// Every command in the log, by event id, read through the outbox.
async fn commands_in_log(
    c: &mut sagalog_testkit::client::Client,
) -> std::collections::BTreeSet<String> {
    let mut all = std::collections::BTreeSet::new();
    let mut after: Option<u64> = None;
    loop {
        let path = match after {
            Some(a) => format!("/api/v1/outbox?after={a}&limit=1000"),
            None => "/api/v1/outbox?limit=1000".to_string(),
        };
        let page = get(c, &path).await.json();
        let items = page["items"].as_array().unwrap();
        for item in items {
            all.insert(item["event_id"].as_str().unwrap().to_string());
        }
        let next = page["next_after"].as_u64();
        if items.is_empty() && next == after {
            return all;
        }
        after = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_mid_stream_the_restarted_relay_fills_the_gap() {
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let root = tempfile::tempdir().unwrap();
    let brokers = tansu.brokers();
    let server = serve(&data_dir(&root), &["--kafka-brokers", &brokers]);
    let addr = server.addr;
    let writer = tokio::spawn(async move {
        let mut c = sagalog_testkit::client::Client::connect(addr)
            .await
            .unwrap();
        for n in 0.. {
            let body = json!({"type": "order", "saga_id": format!("kill-{n}")});
            if c.post_json("/api/v1/sagas", &body).await.is_err() {
                return n;
            }
        }
        unreachable!()
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(server); // SIGKILL, mid-stream
    let started_before_kill = writer.await.unwrap();
    assert!(
        started_before_kill > 10,
        "the load ran before the kill ({started_before_kill})"
    );

    let server = serve(&data_dir(&root), &["--kafka-brokers", &brokers]);
    let mut c = common::client(&server).await;
    for n in 0..20 {
        let body = json!({"type": "order", "saga_id": format!("after-{n}")});
        assert_eq!(post(&mut c, "/api/v1/sagas", body).await.status, 201);
    }
    let expected = commands_in_log(&mut c).await;
    let inventory = consumer(&tansu, "inventory.commands");
    let mut received = std::collections::BTreeMap::<String, usize>::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !expected.iter().all(|id| received.contains_key(id)) {
        let Some(message) = next_message(&inventory, deadline).await else {
            let missing = expected
                .iter()
                .filter(|id| !received.contains_key(*id))
                .count();
            panic!("{missing} of {} commands never arrived", expected.len())
        };
        let value: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let event_id = value["event_id"].as_str().unwrap().to_string();
        assert!(
            expected.contains(&event_id),
            "{event_id} is a command of the log"
        );
        *received.entry(event_id).or_default() += 1;
    }
    let duplicates = received.values().filter(|n| **n > 1).count();
    eprintln!(
        "{} commands, {} published more than once across the crash",
        expected.len(),
        duplicates
    );
}

async fn dead_letters(c: &mut sagalog_testkit::client::Client) -> Value {
    common::admin(
        c,
        hyper::Method::GET,
        "/internal/v1/outbox/dead-letters",
        None,
    )
    .await
    .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_and_can_be_replayed_over_the_api() {
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let root = tempfile::tempdir().unwrap();
    let brokers = tansu.brokers();
    let server = serve(
        &data_dir(&root),
        &[
            "--kafka-brokers",
            &brokers,
            "--kafka-max-message-bytes",
            "4096",
            "--admin-token",
            common::TOKEN,
        ],
    );
    let mut c = common::client(&server).await;
    let big = json!({"type": "order", "saga_id": "big-1", "payload": {"blob": "x".repeat(10_000)}});
    assert_eq!(post(&mut c, "/api/v1/sagas", big).await.status, 201);

    let first = wait_until(
        "a dead letter listed",
        Duration::from_secs(60),
        async || {
            let page = dead_letters(&mut c).await;
            let first = page["items"].as_array().and_then(|i| i.first()).cloned();
            first.ok_or(page)
        },
    )
    .await;
    assert_eq!(first["saga_id"], "big-1");
    assert_eq!(first["command"]["step"], "reserve_inventory");
    assert!(
        first["reason"].as_str().unwrap().contains("size"),
        "{first}"
    );
    assert_eq!(first["replayed_at_offset"], Value::Null);

    let offset = first["offset"].as_u64().unwrap();
    let replay = common::admin(
        &mut c,
        hyper::Method::POST,
        &format!("/internal/v1/outbox/dead-letters/{offset}/replay"),
        None,
    )
    .await;
    assert_eq!(replay.status, 202, "{}", replay.text());
    let missing = common::admin(
        &mut c,
        hyper::Method::POST,
        "/internal/v1/outbox/dead-letters/1/replay",
        None,
    )
    .await;
    common::expect_error(&missing, 404, "not_found");
    // Still too large: the replay is dead-lettered again, and the first is marked.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = dead_letters(&mut c).await;
        let items = page["items"].as_array().unwrap();
        if items.len() == 2 && items[0]["replayed_at_offset"].is_u64() {
            assert_eq!(
                items[1]["command"]["event_id"],
                first["command"]["event_id"]
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replay was not dead-lettered again: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Makes every topic the `order` definition's server needs, as an operator would.
async fn make_topics(tansu: &Tansu) {
    let config = sagalog_relay::RelayConfig::new(tansu.brokers());
    let topics: std::collections::BTreeSet<String> = [
        "inventory.commands",
        "payment.commands",
        "shipping.commands",
        "saga.replies",
        "sagalog.dead-letter",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    sagalog_relay::topics::ensure(&config, &topics, Duration::from_secs(30))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_that_may_not_be_created_fails_readiness_and_holds_its_commands() {
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let root = tempfile::tempdir().unwrap();
    let server = serve(
        &data_dir(&root),
        &[
            "--kafka-brokers",
            &tansu.brokers(),
            "--kafka-create-topics",
            "false",
        ],
    );
    let mut c = common::client(&server).await;
    // The server runs; once the relay's first check has answered (it runs beside the
    // listener), readiness and the metric say what is missing.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let ready = get(&mut c, "/readyz").await;
        if ready.status == 503 || Instant::now() > deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let message = common::expect_error(&ready, 503, "not_ready");
    assert!(message.contains("inventory.commands"), "{message}");
    assert!(
        message.contains("--kafka-create-topics is false"),
        "{message}"
    );
    let metrics = get(&mut c, "/metrics").await.text();
    assert!(
        common::gauge(&metrics, "sagalog_kafka_topics_missing") >= 1.0,
        "{metrics}"
    );
    let started = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "wait-1", "payload": {}}),
    )
    .await;
    assert_eq!(started.status, 201, "{}", started.text());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        dead_letters(&mut c).await["items"],
        json!([]),
        "never a dead letter for it"
    );

    // Once the topics exist (an operator made them), readiness comes back by itself
    // and the held command goes out.
    make_topics(&tansu).await;
    let what = "ready once the topics exist";
    wait_until(what, Duration::from_secs(30), async || {
        let ready = get(&mut c, "/readyz").await;
        (ready.status == 200)
            .then_some(())
            .ok_or_else(|| ready.text())
    })
    .await;
    let metrics = get(&mut c, "/metrics").await.text();
    assert_eq!(common::gauge(&metrics, "sagalog_kafka_topics_missing"), 0.0);
    let command = next_command(&consumer(&tansu, "inventory.commands")).await;
    assert_eq!(command["saga_id"], "wait-1");
    assert!(server.log_text().contains("Kafka topics are missing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_cannot_be_reached_is_waited_for_without_flooding_the_log() {
    let _serial = SERIAL.lock().await;
    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root = tempfile::tempdir().unwrap();
    let server = serve(
        &data_dir(&root),
        &["--kafka-brokers", &format!("127.0.0.1:{port}")],
    );
    let mut c = common::client(&server).await;
    // The server listens and is ready while the first topic check still waits for the
    // broker (it runs inside the relay, not before the listener), and says so.
    let ready = get(&mut c, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let notes: Value = serde_json::from_slice(&ready.body).unwrap();
    assert!(
        notes["notes"]["kafka"]
            .as_str()
            .is_some_and(|n| n.contains("waiting for the broker")),
        "{notes}"
    );
    // The API goes on; the command waits for the broker.
    let started = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "outage-1", "payload": {}}),
    )
    .await;
    assert_eq!(started.status, 201, "{}", started.text());
    tokio::time::sleep(Duration::from_secs(8)).await;
    let metrics = get(&mut c, "/metrics").await.text();
    // The records past the relay's position: the saga's start and its command while
    // the relay still waits for its first topic check to end (it times out after 10 s),
    // the command alone once it has read them and holds the command.
    let pending = common::gauge(&metrics, "outbox_pending_events_total");
    assert!((1.0..=2.0).contains(&pending), "{metrics}");
    // Every client reports the outage several times a second; rdkafka's default
    // context logged each report (about 35 lines a second). Each kind of report is
    // logged once a minute now, and librdkafka's own connect failures back off.
    let log = server.log_text();
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#))
        .collect();
    assert!(
        complaints.len() <= 30,
        "{} warnings and errors in about 18 s of outage:\n{}",
        complaints.len(),
        complaints.join("\n")
    );
    assert!(
        log.contains("brokers are down"),
        "the outage is logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_crates_participants_run_sagas_from_their_kafka_topics() {
    use sagalog_client::{Client, Handled, Participant, StartSaga};

    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--kafka-brokers", &tansu.brokers()]);
    let client = Client::new(server.addr);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut runs = Vec::new();
    for (service, topic) in [
        ("inventory", "inventory.commands"),
        ("payment", "payment.commands"),
        ("shipping", "shipping.commands"),
    ] {
        let mut stop = stop_rx.clone();
        let participant = Participant::new(client.clone(), service, topic);
        runs.push(tokio::spawn(participant.run_kafka(
            tansu.brokers(),
            move |c| async move {
                // Each step sees the data of the ones before it, over Kafka too.
                let before = c.results.len();
                let expected = ["reserve_inventory", "charge_payment", "ship_order"]
                    .iter()
                    .position(|s| *s == c.step)
                    .unwrap();
                assert_eq!(before, expected, "{c:?}");
                Handled::Done(Some(json!({ "by": service })))
            },
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )));
    }
    for i in 0..5 {
        let start = StartSaga {
            saga_type: "order".into(),
            saga_id: Some(format!("kp-{i}")),
            payload: json!({}),
        };
        client.start(&start).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    for i in 0..5 {
        loop {
            let saga = client.get(&format!("kp-{i}")).await.unwrap();
            if saga.status == "COMPLETED" {
                assert_eq!(
                    saga.step("charge_payment").unwrap().result,
                    Some(json!({"by": "payment"}))
                );
                break;
            }
            assert!(Instant::now() < deadline, "{saga:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop_tx.send(true).unwrap();
    for run in runs {
        let stats = run.await.unwrap().expect("a participant stops cleanly");
        assert_eq!((stats.handled, stats.stale), (5, 0), "{stats:?}");
    }
}

/// Waits until the gauge `name` reads `value`, or panics after 30 s.
async fn wait_for_gauge(c: &mut sagalog_testkit::client::Client, name: &str, value: f64) {
    let what = format!("{name} = {value}");
    wait_until(&what, Duration::from_secs(30), async || {
        let metrics = get(c, "/metrics").await.text();
        let now = common::gauge(&metrics, name);
        (now == value).then_some(()).ok_or(now)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_holds_a_paused_topic_and_publishes_the_others() {
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let server = serve(&dir, &["--kafka-brokers", &tansu.brokers()]);
    let mut c = common::client(&server).await;
    let audit = json!({"name": "audit", "version": 1, "steps": [
        {"name": "record", "topic": "audit.commands", "compensable": false,
         "timeout_ms": 60000, "max_attempts": 3, "backoff_ms": 100}]});
    common::put_definition(&mut c, &audit).await;
    let pause = json!({"topics": ["inventory.commands"], "reason": "drill"});
    let paused = common::admin(
        &mut c,
        hyper::Method::POST,
        "/internal/v1/pause",
        Some(pause),
    )
    .await;
    assert_eq!(paused.status, 200, "{}", paused.text());
    for (saga_type, id) in [("order", "p-1"), ("audit", "a-1")] {
        let started = post(
            &mut c,
            "/api/v1/sagas",
            json!({"type": saga_type, "saga_id": id}),
        )
        .await;
        assert_eq!(started.status, 201, "{}", started.text());
    }
    // The other topic's command goes out; the paused one's is held by the relay.
    assert_eq!(
        next_command(&consumer(&tansu, "audit.commands")).await["saga_id"],
        "a-1"
    );
    wait_for_gauge(&mut c, "sagalog_delivery_held_commands", 1.0).await;
    let inventory = consumer(&tansu, "inventory.commands");
    assert!(
        tokio::time::timeout(Duration::from_secs(3), inventory.recv())
            .await
            .is_err(),
        "nothing reaches a paused topic"
    );

    // Across a restart the relay reads it again and holds it again.
    assert!(server.terminate().unwrap().success());
    let server = serve(&dir, &["--kafka-brokers", &tansu.brokers()]);
    let mut c = common::client(&server).await;
    wait_for_gauge(&mut c, "sagalog_delivery_held_commands", 1.0).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(2), inventory.recv())
            .await
            .is_err(),
        "still held after the restart"
    );

    // Resumed: it goes out once.
    let resume = json!({"topics": ["inventory.commands"]});
    let resumed = common::admin(
        &mut c,
        hyper::Method::POST,
        "/internal/v1/resume",
        Some(resume),
    )
    .await;
    assert_eq!(resumed.status, 200, "{}", resumed.text());
    assert_eq!(next_command(&inventory).await["saga_id"], "p-1");
    wait_for_gauge(&mut c, "sagalog_delivery_held_commands", 0.0).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(2), inventory.recv())
            .await
            .is_err(),
        "published once"
    );
    assert!(server.terminate().unwrap().success());
}

/// Three pods, 6 partitions, with Kafka: the reply topic gets 6 partitions, each pod
/// reads its own of them (assigned), and replies produced with the Java client's
/// partitioner (murmur2) and with librdkafka's default (CRC32, which lands many on
/// another pod's partition: forwarded there) all reach their sagas; every command
/// reaches its step topic once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_read_their_partitions_of_the_reply_topic() {
    use common::pods::{Pods, NODES};
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let pods = Pods::start(&["--kafka-brokers", &tansu.brokers()]);
    let mut clients = Vec::new();
    for i in 0..NODES {
        clients.push(pods.client(i).await);
    }
    let step = |name: &str| {
        json!({"name": name, "topic": format!("duo.{name}"), "compensable": true,
               "timeout_ms": 3_600_000, "max_attempts": 1, "backoff_ms": 1000})
    };
    let definition = json!({"name": "duo", "version": 1, "steps": [step("hold"), step("pay")]});
    common::put_definition(&mut clients[0], &definition).await;
    let ids: Vec<String> = (0..24).map(|n| format!("k-{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let c = &mut clients[n % NODES as usize];
        let answer = post(
            c,
            "/api/v1/sagas",
            json!({"type": "duo", "saga_id": id, "payload": {}}),
        )
        .await;
        assert_eq!(answer.status, 201, "{}", answer.text());
    }

    // Every saga's first command reaches its topic, once.
    let holds = tansu.consumer_from_start("participant", &["duo.hold"], 3);
    let mut seen: Vec<String> = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while seen.len() < ids.len() && Instant::now() < until {
        let command = next_command(&holds).await;
        seen.push(command["event_id"].as_str().unwrap().to_string());
    }
    // A little longer, for a copy that would come late.
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(2), holds.recv()).await {
        let command: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        seen.push(command["event_id"].as_str().unwrap().to_string());
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "every first command: {seen:?}");
    assert_eq!(seen.len(), ids.len(), "each once: {seen:?}");

    // The reply topic has 6 partitions; replies go to it with both partitioners.
    let producer = |partitioner: &str| -> FutureProducer {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", tansu.brokers())
            .set("partitioner", partitioner)
            .create()
            .unwrap()
    };
    let (java, librdkafka) = (producer("murmur2_random"), producer("consistent_random"));
    let metadata = java
        .client()
        .fetch_metadata(Some("saga.replies"), Duration::from_secs(10))
        .unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), 6);
    for (n, id) in ids.iter().enumerate() {
        let reply = json!({"saga_id": id, "event_id": format!("{id}/hold"), "step": "hold",
                           "outcome": "succeeded", "attempt": 1})
        .to_string();
        let producer = if n % 2 == 0 { &java } else { &librdkafka };
        producer
            .send(
                FutureRecord::to("saga.replies").key(id).payload(&reply),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let until = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let saga = get(&mut clients[1], &format!("/api/v1/sagas/{id}"))
                .await
                .json();
            if saga["status"] == "IN_PROGRESS" {
                break;
            }
            assert!(
                Instant::now() < until,
                "{id}'s reply did not arrive: {saga}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut forwarded = 0.0;
    for c in clients.iter_mut() {
        let metrics = get(c, "/metrics").await.text();
        forwarded += common::gauge(&metrics, "sagalog_replies_forwarded_total");
    }
    assert!(
        forwarded > 0.0,
        "CRC32-partitioned replies on other pods' partitions were forwarded"
    );
}

/// Reads `consumer` until every saga of `ids` had its first command (attempt 1 of
/// `step`) arrive, or panics at `deadline` naming those whose command did not.
async fn first_commands(
    consumer: &StreamConsumer,
    step: &str,
    ids: &[String],
    deadline: Instant,
    what: &str,
) {
    let mut waiting: std::collections::BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    while !waiting.is_empty() {
        let Some(message) = next_message(consumer, deadline).await else {
            panic!(
                "{} of {} commands {what} never arrived: {waiting:?}",
                waiting.len(),
                ids.len()
            )
        };
        let command: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        if command["step"] == step && command["attempt"] == 1 {
            waiting.remove(command["saga_id"].as_str().unwrap());
        }
    }
}

/// Starts sagas `ids`, each acknowledged.
async fn start_all(c: &mut sagalog_testkit::client::Client, ids: &[String]) {
    for id in ids {
        let started = post(
            c,
            "/api/v1/sagas",
            json!({"type": "order", "saga_id": id, "payload": {}}),
        )
        .await;
        assert_eq!(started.status, 201, "{}", started.text());
    }
}

/// Replies on the reply topic that saga `id`'s first step succeeded (its attempt as
/// the saga shows it, again if a timeout issued another meanwhile), and waits until the
/// saga took it, or panics after `within`.
async fn reply_on_kafka_until_taken(
    tansu: &Tansu,
    c: &mut sagalog_testkit::client::Client,
    id: &str,
    within: Duration,
) {
    use rdkafka::producer::FutureRecord;
    let producer = tansu.producer();
    let step = "reserve_inventory";
    let deadline = Instant::now() + within;
    let mut replied = None;
    loop {
        let saga = get(c, &format!("/api/v1/sagas/{id}")).await.json();
        let reserve = &saga["steps"][0];
        assert_eq!(reserve["name"], step, "{saga}");
        if reserve["status"] == "succeeded" {
            return;
        }
        let attempt = reserve["attempts"].as_u64().unwrap();
        if replied != Some(attempt) {
            let reply = json!({"saga_id": id, "event_id": format!("{id}/{step}/{attempt}"),
                               "step": step, "outcome": "succeeded", "attempt": attempt})
            .to_string();
            producer
                .send(
                    FutureRecord::to("saga.replies").key(id).payload(&reply),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            replied = Some(attempt);
        }
        assert!(
            Instant::now() < deadline,
            "the reply on Kafka did not reach {id} within {within:?}: {saga}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A broker that restarts without its state (tansu's memory storage: no topics, no
/// producer ids) while sagas are acknowledged: once it is back, the relay makes the
/// topics again, a new producer publishes every command it holds, and a new reply
/// consumer reads the recreated reply topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_back_empty_gets_every_acknowledged_command_within_30_s() {
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let port = tansu.port;
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--kafka-brokers", &tansu.brokers()]);
    let mut c = common::client(&server).await;
    start_all(&mut c, &["before-0".to_string()]).await;
    {
        let inventory = consumer(&tansu, "inventory.commands");
        assert_eq!(next_command(&inventory).await["saga_id"], "before-0");
    }

    drop(tansu);
    let during: Vec<String> = (0..50).map(|n| format!("during-{n}")).collect();
    start_all(&mut c, &during).await;
    // Longer than a delivery's timeout: the producer's attempts fail meanwhile.
    tokio::time::sleep(Duration::from_secs(12)).await;

    let tansu = Tansu::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    let inventory = consumer(&tansu, "inventory.commands");
    first_commands(
        &inventory,
        "reserve_inventory",
        &during,
        deadline,
        "acknowledged while the broker was down",
    )
    .await;
    // The wait outlasted the server's keep-alive idle limit.
    let mut c = common::client(&server).await;
    // Replies go through the reply topic made anew.
    reply_on_kafka_until_taken(&tansu, &mut c, "during-0", Duration::from_secs(30)).await;
    let log = server.log_text();
    assert!(log.contains("Kafka topics are back"), "{log}");
    assert!(server.terminate().unwrap().success());
}

/// Waits until the server's log has a line containing `text`, or panics after
/// `within`.
async fn wait_for_log(server: &sagalog_testkit::process::Server, text: &str, within: Duration) {
    let what = format!("the server logging {text:?}");
    sagalog_testkit::wait_until(&what, within, || async {
        let log = server.log_text();
        let last = log.lines().last().unwrap_or_default().to_string();
        log.contains(text).then_some(()).ok_or(last)
    })
    .await;
}

/// An operator deletes a step topic and the reply topic under a running server: the
/// relay's watcher finds them gone, makes them again, and the relay publishes and
/// consumes there as before. (The sagas start once the topics are back: tansu
/// acknowledges writes to a deleted topic that no consumer then sees, where Kafka
/// refuses them and the relay retries.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_deleted_under_a_running_server_are_made_again_and_used() {
    use rdkafka::admin::AdminOptions;
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--kafka-brokers", &tansu.brokers()]);
    let mut c = common::client(&server).await;
    start_all(&mut c, &["before-0".to_string()]).await;
    {
        let inventory = consumer(&tansu, "inventory.commands");
        assert_eq!(next_command(&inventory).await["saga_id"], "before-0");
    }
    let admin = tansu.admin();
    let deleted = admin
        .delete_topics(
            &["inventory.commands", "saga.replies"],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    // The watcher's periodic check (every 30 s) finds them.
    wait_for_log(&server, "Kafka topics are back", Duration::from_secs(45)).await;
    let log = server.log_text();
    assert!(
        log.contains("Kafka topics the relay uses are gone"),
        "{log}"
    );

    let mut c = common::client(&server).await;
    let after: Vec<String> = (0..10).map(|n| format!("after-{n}")).collect();
    start_all(&mut c, &after).await;
    let inventory = consumer(&tansu, "inventory.commands");
    first_commands(
        &inventory,
        "reserve_inventory",
        &after,
        Instant::now() + Duration::from_secs(30),
        "issued after the topic was made again",
    )
    .await;
    let mut c = common::client(&server).await;
    let metrics = get(&mut c, "/metrics").await.text();
    assert_eq!(common::gauge(&metrics, "sagalog_kafka_topics_missing"), 0.0);
    reply_on_kafka_until_taken(&tansu, &mut c, "after-0", Duration::from_secs(30)).await;
    assert!(
        server.log_text().contains("the reply topic came back"),
        "a new reply consumer"
    );
    assert!(server.terminate().unwrap().success());
}

/// A step topic deleted under a server that may not create topics: readiness and the
/// metric say it is missing, its commands wait, and once an operator makes it again
/// the log says so and they go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_under_a_server_that_may_not_create_it_is_reported_until_it_is_back() {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    make_topics(&tansu).await;
    let root = tempfile::tempdir().unwrap();
    let server = serve(
        &data_dir(&root),
        &[
            "--kafka-brokers",
            &tansu.brokers(),
            "--kafka-create-topics",
            "false",
        ],
    );
    let mut c = common::client(&server).await;
    let admin = tansu.admin();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    admin
        .delete_topics(&["inventory.commands"], &options)
        .await
        .unwrap();
    // The watcher's periodic check (every 30 s) finds it missing.
    let what = "not ready once the topic was deleted";
    let ready = wait_until(what, Duration::from_secs(45), async || {
        let ready = get(&mut c, "/readyz").await;
        if ready.status == 503 {
            Ok(ready)
        } else {
            Err(ready.text())
        }
    })
    .await;
    let message = common::expect_error(&ready, 503, "not_ready");
    assert!(message.contains("inventory.commands"), "{message}");
    let metrics = get(&mut c, "/metrics").await.text();
    assert_eq!(
        common::gauge(&metrics, "sagalog_kafka_topics_missing"),
        1.0,
        "{metrics}"
    );
    // A saga started meanwhile: its command waits for the topic.
    start_all(&mut c, &["waits-0".to_string()]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(dead_letters(&mut c).await["items"], json!([]));

    let made = admin
        .create_topics(
            &[NewTopic::new(
                "inventory.commands",
                3,
                TopicReplication::Fixed(1),
            )],
            &options,
        )
        .await
        .unwrap();
    assert!(made.iter().all(Result::is_ok), "{made:?}");
    let inventory = consumer(&tansu, "inventory.commands");
    let deadline = Instant::now() + Duration::from_secs(30);
    first_commands(
        &inventory,
        "reserve_inventory",
        &["waits-0".to_string()],
        deadline,
        "held while the topic was missing",
    )
    .await;
    let mut c = common::client(&server).await;
    while get(&mut c, "/readyz").await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after the topic is back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = server.log_text();
    assert!(log.contains("Kafka topics are back"), "{log}");
    assert!(server.terminate().unwrap().success());
}

/// The reply topic deleted and made again at once by an operator, between two of the
/// watcher's checks: the watcher cannot tell, but the reply consumer, left past the
/// end of the new topic, notices that it reads nothing while the broker holds replies
/// and reads the topic from its start with a new consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_topic_made_anew_between_checks_is_read_from_its_start() {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    use rdkafka::producer::FutureRecord;
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--kafka-brokers", &tansu.brokers()]);
    let mut c = common::client(&server).await;
    start_all(&mut c, &["before-0".to_string()]).await;
    // Messages that are not replies move the consumer along the old topic: it stands
    // at offset 5 or past when before-0's reply is taken.
    let producer = tansu.producer();
    for n in 0..4 {
        producer
            .send(
                FutureRecord::to("saga.replies")
                    .key("junk")
                    .payload(&format!("not a reply {n}")),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    reply_on_kafka_until_taken(&tansu, &mut c, "before-0", Duration::from_secs(30)).await;

    let admin = tansu.admin();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deleted = admin
        .delete_topics(&["saga.replies"], &options)
        .await
        .unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    let made = admin
        .create_topics(
            &[NewTopic::new("saga.replies", 1, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .unwrap();
    assert!(made.iter().all(Result::is_ok), "{made:?}");

    start_all(&mut c, &["after-0".to_string()]).await;
    let inventory = consumer(&tansu, "inventory.commands");
    first_commands(
        &inventory,
        "reserve_inventory",
        &["after-0".to_string()],
        Instant::now() + Duration::from_secs(30),
        "issued after the reply topic was made again",
    )
    .await;
    // The consumer's stall bound (30 s) and a lag measurement (every 5 s), with room.
    let mut c = common::client(&server).await;
    reply_on_kafka_until_taken(&tansu, &mut c, "after-0", Duration::from_secs(60)).await;
    assert!(server.terminate().unwrap().success());
}
