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
}

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
            if let Err(e) = consumer.subscribe(&[topic.as_str()]) {
                tracing::error!(topic, error = %e, "subscribing to the reply topic failed; replies over Kafka are not read");
                return;
            }
            run(Arc::new(consumer), partitions, observer, stopping).await;
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
                    if !handle(&partitions, observer.as_ref(), &message, &mut stopping).await {
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
            observer.reply(&reply.step, "rejected");
            tracing::warn!(message = %where_, saga_id, partition = p, "a reply for a partition this server does not hold");
            return true;
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
