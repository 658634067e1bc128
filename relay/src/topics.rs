//! Makes sure the topics the relay writes and reads exist (SPEC §5): many clusters, and
//! the `tansu` broker the tests use, do not create a topic on first use. A topic that
//! exists already is fine; one that cannot be created is an error naming it.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use sagalog_engine::Engine;

use crate::{RelayConfig, RelayError, Result};

/// Longest the broker may take to answer a topic creation at start.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Every step topic of every registered definition, the reply topic and the
/// dead-letter topic.
pub fn needed(engine: &Engine, config: &RelayConfig) -> BTreeSet<String> {
    let mut topics: BTreeSet<String> = engine
        .definitions()
        .iter()
        .flat_map(|d| d.steps.iter().map(|s| s.topic.clone()))
        .collect();
    topics.insert(config.reply_topic.clone());
    topics.insert(config.dead_letter_topic.clone());
    topics
}

/// Creates the topics of `names` that are missing, waiting at most `timeout` for the
/// broker.
pub async fn ensure(
    config: &RelayConfig,
    names: &BTreeSet<String>,
    timeout: Duration,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create()?;
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                config.topic_partitions,
                TopicReplication::Fixed(config.topic_replication),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(topic) => tracing::info!(topic, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(RelayError::Topic {
                    topic,
                    reason: format!("cannot be created: {code}"),
                })
            }
        }
    }
    Ok(())
}
