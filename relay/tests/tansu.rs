//! The relay against a real Kafka-protocol broker (`tansu`): topics created at start,
//! every command of 10,000 sagas published once, in order per saga, with the documented
//! headers, and the position stored so that a restart publishes only what is new.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Headers, Message};
use sagalog_engine::{Engine, EngineConfig, Outcome, Reply, StartRequest};
use sagalog_relay::{Relay, RelayConfig, RelayObserver, TopicWatch};

use common::Tansu;
use sagalog_testkit::process::next_message;

/// One broker test at a time: each runs its own tansu, and several at once on a small
/// machine starve each other past the tests' time bounds.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Quiet;
impl sagalog_relay::TopicObserver for Quiet {}
impl RelayObserver for Quiet {}

/// What the relay and the reply consumer reported.
#[derive(Default)]
struct Counts {
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    invalid: AtomicU64,
    recorded: AtomicU64,
}

impl Counts {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl sagalog_relay::TopicObserver for Counts {}

impl RelayObserver for Counts {
    fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
}

impl sagalog_relay::ReplyObserver for Counts {
    fn reply(&self, _step: &str, status: &str) {
        if status != "rejected" {
            self.recorded.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn invalid(&self) {
        self.invalid.fetch_add(1, Ordering::Relaxed);
    }
}

const TOPICS: [&str; 3] = [
    "inventory.commands",
    "payment.commands",
    "shipping.commands",
];

fn config(tansu: &Tansu) -> RelayConfig {
    RelayConfig {
        topic_partitions: 3,
        ..RelayConfig::new(tansu.brokers())
    }
}

/// A relay over `engine` and the topic watcher it follows (stop the relay first).
async fn start_relay(
    engine: &Arc<Engine>,
    config: RelayConfig,
    observer: Arc<dyn RelayObserver>,
) -> (Relay, TopicWatch) {
    let watch = TopicWatch::start(vec![engine.clone()], config.clone(), observer.clone());
    let relay = Relay::start(engine.clone(), config, watch.topics(), observer)
        .await
        .unwrap();
    (relay, watch)
}

/// A consumer reading every partition of the step topics from the beginning.
fn consumer(tansu: &Tansu, partitions: i32) -> StreamConsumer {
    tansu.consumer_from_start("relay-test", &TOPICS, partitions)
}

/// One received command: saga id, command offset, event id, headers by name (the
/// step is the `step` header).
type Received = (String, u64, String, BTreeMap<String, String>);

async fn receive(consumer: &StreamConsumer, count: usize, within: Duration) -> Vec<Received> {
    let deadline = Instant::now() + within;
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let Some(message) = next_message(consumer, deadline).await else {
            panic!(
                "received {} of {count} commands within {within:?}",
                out.len()
            )
        };
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let mut headers = BTreeMap::new();
        if let Some(h) = message.headers() {
            for header in h.iter() {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                headers.insert(header.key.to_string(), value.unwrap_or_default());
            }
        }
        let key = String::from_utf8_lossy(message.key().unwrap()).into_owned();
        assert_eq!(key, value["saga_id"], "the key is the saga id");
        out.push((
            value["saga_id"].as_str().unwrap().to_string(),
            value["offset"].as_u64().unwrap(),
            value["event_id"].as_str().unwrap().to_string(),
            headers,
        ));
    }
    out
}

async fn start_sagas(engine: &Engine, ids: impl Iterator<Item = String>) {
    for id in ids {
        engine
            .start(StartRequest {
                saga_type: "order".into(),
                saga_id: Some(id.clone()),
                payload: serde_json::json!({"order": id}),
                trace_id: None,
            })
            .await
            .unwrap();
    }
}

/// Answers the first step: every other saga fails its first attempt (the step is
/// issued again to the same topic after its backoff), the others succeed (the next
/// step's command goes to another topic).
async fn answer_first_step(engine: &Engine, n: usize, id: &str) {
    let outcome = if n.is_multiple_of(2) {
        Outcome::Failed
    } else {
        Outcome::Succeeded
    };
    engine
        .reply(
            id,
            Reply {
                event_id: format!("{id}/reserve"),
                step: "reserve_inventory".into(),
                outcome,
                attempt: 1,
                data: String::new(),
                reason: String::new(),
            },
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_ten_thousand_sagas_arrives_once_in_order_per_saga() {
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), EngineConfig::default()).unwrap());
    const SAGAS: usize = 10_000;
    let ids: Vec<String> = (0..SAGAS).map(|n| format!("s-{n}")).collect();

    // Commands issued before the relay starts, and while it runs.
    start_sagas(&engine, ids[..SAGAS / 2].iter().cloned()).await;
    let (relay, watch) = start_relay(&engine, config(&tansu), Arc::new(Quiet)).await;
    start_sagas(&engine, ids[SAGAS / 2..].iter().cloned()).await;
    for (n, id) in ids.iter().enumerate() {
        answer_first_step(&engine, n, id).await;
    }
    let consumer = consumer(&tansu, 3);
    let received = receive(&consumer, 2 * SAGAS, Duration::from_secs(120)).await;

    let event_ids: BTreeSet<&str> = received.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(event_ids.len(), 2 * SAGAS, "every command exactly once");
    // Kafka orders messages within a partition: a saga's commands to one topic (a
    // step and its retry) arrive in the order they were issued.
    let mut per_saga_topic: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for (saga, offset, _, headers) in &received {
        per_saga_topic
            .entry((saga, headers["step"].as_str()))
            .or_default()
            .push(*offset);
    }
    let retried = per_saga_topic.values().filter(|o| o.len() == 2).count();
    assert_eq!(
        retried,
        SAGAS / 2,
        "every other saga's first step was issued twice"
    );
    for ((saga, step), offsets) in &per_saga_topic {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "saga {saga} step {step} out of order: {offsets:?}"
        );
    }
    let headers = &received[0].3;
    for name in [
        "event_id",
        "saga_id",
        "saga_type",
        "step",
        "action",
        "traceparent",
    ] {
        assert!(headers.contains_key(name), "header {name} in {headers:?}");
    }
    assert_eq!(headers["event_id"], received[0].2);

    // The position reaches the head and is stored: a restarted relay publishes only
    // what is new.
    let head = engine.log().next_offset();
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.position() < head {
        assert!(
            Instant::now() < deadline,
            "position {} never reached {head}",
            relay.position()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.stop().await.unwrap();
    watch.stop().await;
    start_sagas(&engine, std::iter::once("late-1".to_string())).await;
    let (relay, watch) = start_relay(&engine, config(&tansu), Arc::new(Quiet)).await;
    let more = receive(&consumer, 1, Duration::from_secs(60)).await;
    assert_eq!(
        more[0].0, "late-1",
        "only the new command is published after a restart"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(2), consumer.recv())
            .await
            .is_err(),
        "nothing else is republished"
    );
    relay.stop().await.unwrap();
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_for_30_s_delays_commands_but_loses_none() {
    let _serial = SERIAL.lock().await;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("sagalog_relay=debug")
        .try_init();
    let tansu = Tansu::start();
    let port = tansu.port;
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), EngineConfig::default()).unwrap());
    let observer = Arc::new(Counts::default());
    let (relay, watch) = start_relay(&engine, config(&tansu), observer.clone()).await;
    start_sagas(&engine, (0..500).map(|n| format!("before-{n}"))).await;
    let before = receive(&consumer(&tansu, 3), 500, Duration::from_secs(60)).await;
    assert_eq!(before.len(), 500);

    // The broker goes away (with its in-memory topics); sagas keep starting.
    drop(tansu);
    start_sagas(&engine, (0..500).map(|n| format!("during-{n}"))).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let head = engine.log().next_offset();
    assert!(
        relay.position() < head,
        "nothing can be published while the broker is down"
    );
    assert!(Counts::get(&observer.failed) > 0);

    // It comes back empty on the same port: the relay creates the topic again and
    // delivers every command it held back.
    let tansu = Tansu::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.position() < head {
        assert!(
            Instant::now() < deadline,
            "the relay did not catch up within 30 s of the broker's return: position {} head {head}",
            relay.position()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let consumer = consumer(&tansu, 3);
    let expected: BTreeSet<String> = (0..500).map(|n| format!("during-{n}")).collect();
    let mut arrived = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // The sagas started before the outage time out meanwhile and have their first step
    // issued again: those commands arrive too and are not counted here.
    while !expected.is_subset(&arrived) {
        let left = deadline.saturating_duration_since(Instant::now());
        let missing = expected.difference(&arrived).count();
        assert!(
            !left.is_zero(),
            "{missing} sagas' commands from the outage never arrived"
        );
        let batch = receive(&consumer, 1, left).await;
        arrived.insert(batch[0].0.clone());
    }
    relay.stop().await.unwrap();
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_broker_refuses_is_dead_lettered_and_the_stream_goes_on() {
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), EngineConfig::default()).unwrap());
    let observer = Arc::new(Counts::default());
    let config = RelayConfig {
        max_message_bytes: 4096,
        retry_backoff: Duration::from_millis(20),
        ..config(&tansu)
    };
    let (relay, watch) = start_relay(&engine, config, observer.clone()).await;
    start_sagas(&engine, std::iter::once("fine-1".to_string())).await;
    engine
        .start(StartRequest {
            saga_type: "order".into(),
            saga_id: Some("poison".into()),
            payload: serde_json::json!({"blob": "x".repeat(10_000)}),
            trace_id: None,
        })
        .await
        .unwrap();
    start_sagas(&engine, std::iter::once("fine-2".to_string())).await;

    let received = receive(&consumer(&tansu, 3), 2, Duration::from_secs(60)).await;
    // Two partitions may hand them over in either order.
    let sagas: BTreeSet<&str> = received.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        sagas,
        BTreeSet::from(["fine-1", "fine-2"]),
        "the stream goes on past the poison record"
    );
    let head = engine.log().next_offset();
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.position() < head {
        assert!(
            Instant::now() < deadline,
            "the position moves past the dead letter"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Counted once the relay's position is past it: the commands after the poison one
    // are published while its dead letter is still being made durable, so they may
    // reach the consumer first.
    assert_eq!(Counts::get(&observer.dead_lettered), 1);
    relay.stop().await.unwrap();
    watch.stop().await;
    // The dead letter is a record in the log, naming the command and why.
    let dead: Vec<_> = engine
        .log()
        .iter_from(0)
        .map(|r| sagalog_engine::Entry::decode(&r.unwrap().payload).unwrap())
        .filter_map(|entry| match entry {
            sagalog_engine::Entry::DeadLettered {
                saga_id, reason, ..
            } => Some((saga_id, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "poison");
    assert!(
        dead[0].1.contains("size"),
        "the reason says why: {}",
        dead[0].1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_on_kafka_drive_a_saga_to_completion_and_malformed_ones_are_skipped() {
    let _serial = SERIAL.lock().await;
    use rdkafka::producer::FutureRecord;
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), EngineConfig::default()).unwrap());
    let relay_config = config(&tansu);
    let (relay, watch) = start_relay(&engine, relay_config.clone(), Arc::new(Quiet)).await;
    let counts = Arc::new(Counts::default());
    let replies = sagalog_relay::ReplyConsumer::start(
        Arc::new(sagalog_engine::Partitions::single(engine.clone())),
        &relay_config,
        counts.clone(),
        watch.topics(),
        None,
    )
    .unwrap();
    start_sagas(&engine, std::iter::once("r-1".to_string())).await;

    let producer = tansu.producer();
    let reply = |event: &str, step: &str| {
        serde_json::json!({"saga_id": "r-1", "event_id": event, "step": step,
                           "outcome": "succeeded", "attempt": 1, "data": {"by": "kafka"}})
        .to_string()
    };
    let messages = [
        "not json at all".to_string(),
        r#"{"saga_id": "r-1", "step": "reserve_inventory"}"#.to_string(),
        reply("k1", "reserve_inventory"),
        reply("k1", "reserve_inventory"),
        reply("k2", "charge_payment"),
        reply("k3", "ship_order"),
    ];
    for message in &messages {
        producer
            .send(
                FutureRecord::to("saga.replies").key("r-1").payload(message),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.get("r-1").unwrap().status != sagalog_engine::Status::Completed {
        assert!(
            Instant::now() < deadline,
            "the saga did not complete from Kafka replies: {:?}",
            engine.get("r-1").unwrap().status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let invalid = Counts::get(&counts.invalid);
    let recorded = Counts::get(&counts.recorded);
    assert_eq!(
        (invalid, recorded),
        (2, 3),
        "two skipped, three recorded, the repeat answered"
    );
    replies.stop().await;
    relay.stop().await.unwrap();
    watch.stop().await;
}
