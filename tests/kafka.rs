//! `sagalog serve --kafka-brokers` against a real Kafka-protocol broker (`tansu`): the
//! topics are created, a saga's commands reach their step topics as the participants
//! would read them, and the outbox metrics count them.

mod common;

use std::time::{Duration, Instant};

use common::{data_dir, get, post, serve};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sagalog_benches::process::Tansu;
use serde_json::{json, Value};

fn consumer(tansu: &Tansu, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu.brokers())
        .set("group.id", "participant")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..3 {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    consumer
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

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(&mut c, "/metrics").await.text();
        let published = common::samples(&metrics, &["outbox_published_events_total"]);
        if published == ["outbox_published_events_total 2"] {
            let pending = common::samples(&metrics, &["outbox_pending_events_total"]);
            assert_eq!(pending, ["outbox_pending_events_total 0"]);
            break;
        }
        assert!(Instant::now() < deadline, "published count: {published:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.terminate().unwrap().success());
}
