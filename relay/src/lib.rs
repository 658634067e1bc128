//! sagalog-relay: every issued command reaches its step's Kafka topic straight from the
//! log tail (docs/server.md#kafka) — no polling table, no scan of an index.
//!
//! - [`publisher`]: follows the log with a tail subscription, publishes each command
//!   (key = saga id, value = the command item, headers `event_id`, `saga_id`,
//!   `saga_type`, `step`, `action`, `traceparent`) with many in flight, and moves its
//!   stored position only over a contiguous prefix of acknowledged records.
//! - [`replies`]: the reply consumer — participants' replies from the reply topic,
//!   through the same engine path as the HTTP API.
//! - [`topics`]: the process's one watcher of the step, reply and dead-letter topics:
//!   creates what is missing and tells the clients when a topic came back after it
//!   was gone, so that they start anew on it.
//! - [`parked`]: commands read while their topic is paused, until its resume.
//! - [`position`]: the relay's durable position beside the indexes.
//! - [`logs`]: the clients' context, logging librdkafka's repeated errors once a minute.
//!
//! The relay is at-least-once: after a crash it resumes from its stored position, so
//! commands published after the last stored position are published again, each with
//! the same `event_id` for consumers to drop.

pub mod logs;
pub mod parked;
pub mod position;
pub mod publisher;
pub mod replies;
pub mod topics;

use std::time::Duration;

pub use logs::KafkaContext;
pub use publisher::{Relay, RelayObserver};
pub use replies::{ReplyConsumer, ReplyForwarder, ReplyObserver};
pub use topics::{TopicObserver, TopicWatch, Topics};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Engine(#[from] sagalog_engine::EngineError),
    #[error("topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
}

pub type Result<T, E = RelayError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Kafka bootstrap servers, comma-separated.
    pub brokers: String,
    /// Commands sent and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// How long librdkafka tries to deliver one message (its own retries included)
    /// before the relay sees the failure and retries it itself.
    pub delivery_timeout: Duration,
    /// First wait before the relay re-sends a failed command; doubles up to
    /// `max_retry_backoff`.
    pub retry_backoff: Duration,
    pub max_retry_backoff: Duration,
    /// Attempts at a command the broker refuses as such (too large, invalid) before it
    /// is dead-lettered. Failures to reach the broker are retried without bound:
    /// nothing is skipped while the broker is down.
    pub max_attempts: u32,
    /// Largest message the producer sends (librdkafka's `message.max.bytes`); a
    /// command over it is refused, and dead-lettered.
    pub max_message_bytes: usize,
    pub dead_letter_topic: String,
    pub reply_topic: String,
    /// The consumer group of the reply consumer.
    pub reply_group: String,
    /// Create missing topics at start (`--kafka-create-topics`).
    pub create_topics: bool,
    pub topic_partitions: i32,
    /// Partitions the reply topic is created with: the deployment's partition count,
    /// so that a reply produced with key = saga id (Kafka's murmur2 partitioner) lands
    /// on the partition of the reply topic numbered as its saga's.
    pub reply_topic_partitions: i32,
    pub topic_replication: i32,
    /// How often the stored position is written when it moved.
    pub position_interval: Duration,
    /// How long librdkafka waits to fill a batch (`linger.ms`): throughput against
    /// latency.
    pub linger: Duration,
}

impl RelayConfig {
    pub fn new(brokers: impl Into<String>) -> RelayConfig {
        RelayConfig {
            brokers: brokers.into(),
            max_in_flight: 4096,
            delivery_timeout: Duration::from_secs(10),
            retry_backoff: Duration::from_millis(200),
            max_retry_backoff: Duration::from_secs(5),
            max_attempts: 5,
            max_message_bytes: 1_000_000,
            dead_letter_topic: "sagalog.dead-letter".into(),
            reply_topic: "saga.replies".into(),
            reply_group: "sagalog".into(),
            create_topics: true,
            topic_partitions: 3,
            reply_topic_partitions: 1,
            topic_replication: 1,
            position_interval: Duration::from_millis(100),
            linger: Duration::from_millis(2),
        }
    }
}
