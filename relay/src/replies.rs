//! Replies over Kafka (docs/server.md#kafka): a consumer on the reply topic feeds each message to
//! the same engine path as `POST /api/v1/sagas/{id}/events` — same parser, same
//! validation, idempotency by `event_id`. A message's offset is committed only after
//! the engine made the reply durable (or refused it for good); a message that is not
//! a reply is logged, counted and skipped. When the engine cannot write, the consumer
//! waits and tries the same message again, so nothing is skipped.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use sagalog_engine::wire::ReplyMessage;
use sagalog_engine::{is_valid_saga_id, ErrorClass, Partitions, Shutdown, Stop};
use tokio::task::JoinHandle;

use crate::{KafkaContext, RelayConfig, Result};

/// The pause after a failed read of the reply topic.
const READ_RETRY: Duration = Duration::from_millis(500);
/// The first pause before a reply the engine could not take now is tried again (it
/// doubles from there).
const FIRST_REPLY_RETRY: Duration = Duration::from_millis(100);

/// Longest wait before a reply the engine could not take is tried again.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);
/// How often the consumer lag is measured.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// Longest a watermark query may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the reply consumer reports.
pub trait ReplyObserver: Send + Sync + 'static {
    /// A reply was recorded (`outcome`) or refused by the engine (`rejected`).
    fn reply(&self, _step: &str, _status: &str) {}
    /// A message that is not a reply was skipped.
    fn invalid(&self) {}
    /// Messages on the reply topic not consumed yet.
    fn lag(&self, _messages: i64) {}
    /// A reply for a saga of another pod's partition was sent to that pod.
    fn forwarded(&self) {}
}

/// Sends a reply for a saga of another pod's partition to that pod (the reply topic's
/// partition it came on is this pod's, but its producer hashed the key differently).
pub trait ReplyForwarder: Send + Sync + 'static {
    /// Hands `reply` (the message's JSON, without `saga_id`) to the pod of `saga_id`'s
    /// partition `partition`; `Err` says why it could not (the pod does not answer),
    /// and the message is tried again.
    fn forward(
        &self,
        partition: u32,
        saga_id: String,
        reply: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;
}

/// Which pod of how many this consumer is: it is assigned the reply topic's
/// partitions `k` with `k % nodes == node` (no group rebalance), and forwards what is
/// not its own.
pub struct Assignment {
    pub node: u32,
    pub nodes: u32,
    pub forwarder: Option<Arc<dyn ReplyForwarder>>,
}

/// How long a metadata query for the reply topic's partitions may take, and the pause
/// before it is asked again.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const METADATA_RETRY: Duration = Duration::from_secs(2);

pub struct ReplyConsumer {
    task: JoinHandle<()>,
    stop: Stop,
}

impl ReplyConsumer {
    /// Subscribes to the reply topic once `ready` resolves (the relay's first topic
    /// check, [`crate::Relay::topics_checked`], which creates the topic where it may:
    /// librdkafka notices a topic created after its subscription only at its next
    /// metadata refresh, minutes later), then consumes it.
    pub fn start(
        partitions: Arc<Partitions>,
        config: &RelayConfig,
        observer: Arc<dyn ReplyObserver>,
        ready: impl std::future::Future<Output = ()> + Send + 'static,
        assignment: Assignment,
    ) -> Result<ReplyConsumer> {
        let consumer: StreamConsumer<KafkaContext> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.reply_group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create_with_context(KafkaContext)?;
        let (stop, stopping) = Shutdown::new();
        let topic = config.reply_topic.clone();
        let task = tokio::spawn(async move {
            let mut waiting = stopping.clone();
            tokio::select! {
                () = ready => {}
                () = waiting.wait() => return,
            }
            let consumer = Arc::new(consumer);
            if !assign(&consumer, &topic, &assignment, &mut waiting).await {
                return;
            }
            let forwarder = assignment.forwarder.clone();
            run(consumer, partitions, observer, forwarder, stopping).await;
        });
        Ok(ReplyConsumer { task, stop })
    }

    pub async fn stop(self) {
        self.stop.stop();
        let _ = self.task.await;
    }
}

async fn run(
    consumer: Arc<StreamConsumer<KafkaContext>>,
    partitions: Arc<Partitions>,
    observer: Arc<dyn ReplyObserver>,
    forwarder: Option<Arc<dyn ReplyForwarder>>,
    mut stopping: Shutdown,
) {
    let mut lag_tick = tokio::time::interval(LAG_INTERVAL);
    let mut stop_signal = stopping.clone();
    loop {
        tokio::select! {
            biased;
            () = stop_signal.wait() => return,
            _ = lag_tick.tick() => {
                let consumer = consumer.clone();
                if let Ok(Some(lag)) = tokio::task::spawn_blocking(move || lag(&consumer)).await {
                    observer.lag(lag);
                }
            }
            message = consumer.recv() => match message {
                Ok(message) => {
                    let forwarder = forwarder.as_deref();
                    if !handle(&partitions, observer.as_ref(), forwarder, &message, &mut stopping).await {
                        return;
                    }
                    if let Err(e) = consumer.commit_message(&message, CommitMode::Async) {
                        tracing::warn!(error = %e, "committing a reply's offset failed; it may be read again (replies are idempotent)");
                    }
                }
                Err(e) => {
                    crate::logs::kafka_problem("reply consumer", &e, "reading the reply topic failed; retrying");
                    tokio::time::sleep(READ_RETRY).await;
                }
            }
        }
    }
}

/// Feeds one message to the engine; false when a stop came first (the message is then
/// not committed, and is read again after a restart).
async fn handle(
    partitions: &Partitions,
    observer: &dyn ReplyObserver,
    forwarder: Option<&dyn ReplyForwarder>,
    message: &BorrowedMessage<'_>,
    stopping: &mut Shutdown,
) -> bool {
    let where_ = format!(
        "{}[{}]@{}",
        message.topic(),
        message.partition(),
        message.offset()
    );
    let parsed = message
        .payload()
        .ok_or_else(|| "the message has no value".to_string())
        .and_then(|bytes| serde_json::from_slice::<ReplyMessage>(bytes).map_err(|e| e.to_string()))
        .and_then(|reply| match &reply.saga_id {
            _ if !reply.data_is_object() => Err("data: must be a JSON object".to_string()),
            Some(id) if is_valid_saga_id(id) => Ok((id.clone(), reply)),
            Some(id) => Err(format!(
                "saga_id {id:?} must match [A-Za-z0-9._:-]{{1,128}}"
            )),
            None => Err("saga_id: missing field".to_string()),
        });
    let (saga_id, reply) = match parsed {
        Ok(parsed) => parsed,
        Err(reason) => {
            observer.invalid();
            tracing::warn!(message = %where_, reason, "skipping a message that is not a reply");
            return true;
        }
    };
    let reply = reply.into_reply();
    let engine = match partitions.owner(&saga_id) {
        Ok(engine) => engine,
        Err(p) => {
            let Some(forwarder) = forwarder else {
                observer.reply(&reply.step, "rejected");
                tracing::warn!(message = %where_, saga_id, partition = p, "a reply for a partition this server does not hold");
                return true;
            };
            return forward(forwarder, observer, message, p, &saga_id, &where_, stopping).await;
        }
    };
    let mut wait = FIRST_REPLY_RETRY;
    loop {
        match engine.reply(&saga_id, reply.clone()).await {
            Ok(answer) => {
                if !answer.repeated {
                    observer.reply(&reply.step, reply.outcome.as_str());
                }
                return true;
            }
            Err(e) if matches!(e.class(), ErrorClass::Unavailable | ErrorClass::Internal) => {
                tracing::warn!(message = %where_, saga_id, error = %e, "the engine could not take a reply; trying again");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stopping.wait() => return false,
                }
                wait = (wait * 2).min(MAX_RETRY_WAIT);
            }
            Err(e) => {
                observer.reply(&reply.step, "rejected");
                tracing::info!(message = %where_, saga_id, error = %e, "reply refused");
                return true;
            }
        }
    }
}

/// Sends a reply of another pod's saga there, trying again (with a growing pause)
/// while that pod does not answer; false when a stop came first.
async fn forward(
    forwarder: &dyn ReplyForwarder,
    observer: &dyn ReplyObserver,
    message: &BorrowedMessage<'_>,
    partition: u32,
    saga_id: &str,
    where_: &str,
    stopping: &mut Shutdown,
) -> bool {
    // The reply as the HTTP route takes it: without `saga_id`, which its path names.
    let mut body: serde_json::Value = message
        .payload()
        .and_then(|bytes| serde_json::from_slice(bytes).ok())
        .unwrap_or_default();
    if let Some(fields) = body.as_object_mut() {
        fields.remove("saga_id");
    }
    let body = body.to_string().into_bytes();
    let mut wait = FIRST_REPLY_RETRY;
    loop {
        match forwarder
            .forward(partition, saga_id.to_string(), body.clone())
            .await
        {
            Ok(()) => {
                observer.forwarded();
                return true;
            }
            Err(e) => {
                tracing::warn!(message = %where_, saga_id, partition, error = %e, "a reply for another pod's saga could not be handed to it; trying again");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stopping.wait() => return false,
                }
                wait = (wait * 2).min(MAX_RETRY_WAIT);
            }
        }
    }
}

/// Assigns the consumer its partitions of the reply topic (those numbered as this pod,
/// modulo the pods), asking the broker how many the topic has until it answers; false
/// when a stop came first.
async fn assign(
    consumer: &Arc<StreamConsumer<KafkaContext>>,
    topic: &str,
    assignment: &Assignment,
    stopping: &mut Shutdown,
) -> bool {
    loop {
        let (asked, name) = (consumer.clone(), topic.to_string());
        let count = tokio::task::spawn_blocking(move || {
            let metadata = asked.fetch_metadata(Some(&name), METADATA_TIMEOUT)?;
            let partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .map_or(0, |t| t.partitions().len());
            Ok::<usize, rdkafka::error::KafkaError>(partitions)
        })
        .await
        .unwrap_or(Ok(0));
        match count {
            Ok(count) if count > 0 => {
                let mut list = rdkafka::TopicPartitionList::new();
                let nodes = assignment.nodes.max(1) as usize;
                for k in (0..count).filter(|k| k % nodes == assignment.node as usize) {
                    list.add_partition(topic, k as i32);
                }
                match consumer.assign(&list) {
                    Ok(()) => {
                        tracing::info!(
                            topic,
                            partitions = count,
                            assigned = list.count(),
                            "reading the reply topic"
                        );
                        return true;
                    }
                    Err(e) => {
                        tracing::error!(topic, error = %e, "assigning the reply topic's partitions failed; trying again")
                    }
                }
            }
            Ok(_) => tracing::warn!(topic, "the reply topic has no partitions yet; asking again"),
            Err(e) => crate::logs::kafka_problem(
                "reply consumer",
                &e,
                "asking for the reply topic's partitions failed; trying again",
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(METADATA_RETRY) => {}
            () = stopping.wait() => return false,
        }
    }
}

/// Messages behind the high watermark on the partitions this consumer holds.
fn lag(consumer: &StreamConsumer<KafkaContext>) -> Option<i64> {
    let positions = consumer.position().ok()?;
    let mut total = 0;
    for element in positions.elements() {
        let (_, high) = consumer
            .fetch_watermarks(element.topic(), element.partition(), WATERMARK_TIMEOUT)
            .ok()?;
        let at = element.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0);
        total += (high - at).max(0);
    }
    Some(total)
}
