//! The participant loop over the step's Kafka topic (feature `kafka`), for a server run
//! with `--kafka-brokers`: the same handler, replies, duplicate drop and backoff as the
//! outbox loop, with Kafka keeping the position. The consumer group is the service's
//! name, so replicas split the topic's partitions between them (a saga's commands share
//! a key, hence a partition, hence a replica); an offset is committed once its command
//! was replied to, so a crash repeats work rather than skip it.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;

use crate::participant::{
    futures_ready, send_reply, Backoff, Handled, Seen, Sent, Stats, STOP_GRACE,
};
use crate::types::Command;
use crate::{Error, Participant};

impl Participant {
    /// Runs over the Kafka topic on `brokers` until `stop` completes (the command being
    /// handled is finished, replied to and committed first). Commands are handled one at
    /// a time, in partition order. [`Participant::member`], the position file and
    /// [`Participant::from_latest`] do not apply: the consumer group splits the topic
    /// and keeps the position (a new group starts at the topic's earliest offset).
    pub async fn run_kafka<H, F>(
        self,
        brokers: impl Into<String>,
        handler: H,
        stop: impl Future<Output = ()>,
    ) -> Result<Stats, Error>
    where
        H: Fn(Command) -> F + Send + Sync + 'static,
        F: Future<Output = Handled> + Send + 'static,
    {
        let kafka = |e: rdkafka::error::KafkaError| Error::Kafka(e.to_string());
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers.into())
            .set("group.id", &self.service)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(kafka)?;
        consumer.subscribe(&[self.topic.as_str()]).map_err(kafka)?;
        let handler = Arc::new(handler);
        let mut stop = pin!(stop);
        let mut seen = Seen::new(self.seen_capacity);
        let mut stats = Stats::default();
        let mut backoff = Backoff::new(self.max_backoff);
        loop {
            let message = tokio::select! {
                message = consumer.recv() => message,
                () = &mut stop => return Ok(stats),
            };
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "reading Kafka; trying again");
                    let e = Error::Kafka(e.to_string());
                    tokio::select! {
                        () = backoff.wait(&e) => continue,
                        () = &mut stop => return Ok(stats),
                    }
                }
            };
            backoff.reset();
            match message.payload().map(serde_json::from_slice::<Command>) {
                Some(Ok(command)) if seen.first(&command.event_id) => {
                    stats.handled += 1;
                    let (client, service) = (&self.client, &self.service);
                    let work = async {
                        let handled = handler(command.clone()).await;
                        send_reply(client, service, &command, handled, self.max_backoff).await
                    };
                    let mut work = pin!(work);
                    // A stop lets the command finish, within the grace; past it the
                    // offset is not committed, and the command comes again.
                    let sent = tokio::select! {
                        sent = &mut work => sent,
                        () = &mut stop => match tokio::time::timeout(STOP_GRACE, work).await {
                            Ok(_) => {
                                commit(&consumer, &message);
                                return Ok(stats);
                            }
                            Err(_) => return Ok(stats),
                        },
                    };
                    match sent {
                        Sent::Accepted => {}
                        Sent::Stale => stats.stale += 1,
                        Sent::Skipped => stats.skipped += 1,
                        Sent::Refused => stats.refused += 1,
                    }
                }
                Some(Ok(_)) => stats.duplicates += 1,
                other => tracing::warn!(
                    topic = message.topic(), partition = message.partition(), offset = message.offset(),
                    error = ?other.and_then(Result::err).map(|e| e.to_string()),
                    "skipping a message that is not a command"
                ),
            }
            commit(&consumer, &message);
            if futures_ready(&mut stop) {
                return Ok(stats);
            }
        }
    }
}

/// Commits `message`'s offset (asynchronously: a failure means the command may come
/// again, and is dropped by `event_id` or answered again, idempotently).
fn commit(consumer: &StreamConsumer, message: &rdkafka::message::BorrowedMessage<'_>) {
    if let Err(e) = consumer.commit_message(message, CommitMode::Async) {
        tracing::warn!(error = %e, "committing an offset failed; the command may come again");
    }
}
