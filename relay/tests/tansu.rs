//! The relay against a real Kafka-protocol broker (`tansu`): topics created at start,
//! every command of 10,000 sagas published once, in order per saga, with the SPEC §5
//! headers, and the position stored so that a restart publishes only what is new.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use sagalog_engine::{Engine, EngineConfig, Outcome, Reply, StartRequest};
use sagalog_relay::{Relay, RelayConfig, RelayObserver};

use common::Tansu;

struct Quiet;
impl RelayObserver for Quiet {}

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

/// A consumer reading every partition of the step topics from the beginning.
fn consumer(tansu: &Tansu, partitions: i32) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu.brokers())
        .set("group.id", "relay-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for topic in TOPICS {
        for partition in 0..partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&assignment).unwrap();
    consumer
}

/// One received command: saga id, command offset, event id, headers by name (the
/// step is the `step` header).
type Received = (String, u64, String, BTreeMap<String, String>);

async fn receive(consumer: &StreamConsumer, count: usize, within: Duration) -> Vec<Received> {
    let deadline = Instant::now() + within;
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(left, consumer.recv()).await {
            Ok(message) => message.expect("a message"),
            Err(_) => panic!(
                "received {} of {count} commands within {within:?}",
                out.len()
            ),
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
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), EngineConfig::default()).unwrap());
    const SAGAS: usize = 10_000;
    let ids: Vec<String> = (0..SAGAS).map(|n| format!("s-{n}")).collect();

    // Commands issued before the relay starts, and while it runs.
    start_sagas(&engine, ids[..SAGAS / 2].iter().cloned()).await;
    let relay = Relay::start(engine.clone(), config(&tansu), Arc::new(Quiet))
        .await
        .unwrap();
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
    start_sagas(&engine, std::iter::once("late-1".to_string())).await;
    let relay = Relay::start(engine.clone(), config(&tansu), Arc::new(Quiet))
        .await
        .unwrap();
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
}
