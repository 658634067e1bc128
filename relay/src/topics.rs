//! Makes sure the topics the relay writes and reads exist (docs/server.md#kafka): many clusters, and
//! the `tansu` broker the tests use, do not create a topic on first use. A topic that
//! exists already is fine; one that cannot be created is an error naming it.
//!
//! [`watch`] keeps checking in the background — the topics of definitions registered
//! later too — and reports what is missing, so that a broker that refuses a topic (or
//! is down) shows on `/readyz` and in a metric while the server runs on.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use sagalog_engine::{Engine, Shutdown};

use crate::{KafkaContext, RelayConfig, RelayError, Result};

/// How often the watcher checks the topics while one is missing, and when all are there.
const CHECK_MISSING_EVERY: Duration = Duration::from_secs(5);
const CHECK_EVERY: Duration = Duration::from_secs(30);
/// Longest one check (a metadata request, then creations) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What the watcher reports.
pub trait TopicObserver: Send + Sync + 'static {
    /// The topics found missing (empty when all exist), and why, after each check.
    fn topics_missing(&self, _missing: &[String], _reason: Option<&str>) {}
    /// Whether the broker has answered a topic check since the relay started: `Some`
    /// with what the relay waits for until it has, `None` from the first answer on.
    fn topics_unchecked(&self, _waiting: Option<&str>) {}
}

/// Longest the broker may take to answer a topic creation at start.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Every step topic of every registered definition, the reply topic and the
/// dead-letter topic.
pub fn needed(engine: &Engine, config: &RelayConfig) -> BTreeSet<String> {
    let mut topics = engine.step_topics();
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
    let admin = admin(config)?;
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| {
            let partitions = if *name == config.reply_topic {
                config.reply_topic_partitions
            } else {
                config.topic_partitions
            };
            NewTopic::new(
                name,
                partitions,
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

/// An admin client of the configured brokers (one per check: checks are rare).
fn admin(config: &RelayConfig) -> Result<AdminClient<KafkaContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create_with_context(KafkaContext)?)
}

/// The topics among `names` the broker does not know.
pub async fn missing(
    config: &RelayConfig,
    names: &BTreeSet<String>,
    timeout: Duration,
) -> Result<Vec<String>> {
    let admin = admin(config)?;
    // librdkafka's metadata call blocks.
    let known = tokio::task::spawn_blocking(move || -> Result<BTreeSet<String>> {
        let metadata = admin.inner().fetch_metadata(None, timeout)?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.name().to_string())
            .collect())
    })
    .await
    .map_err(|e| RelayError::Topic {
        topic: String::new(),
        reason: format!("the metadata task failed: {e}"),
    })??;
    Ok(names.difference(&known).cloned().collect())
}

/// One check: what is missing after creating what may be created, and why; `Err` when
/// the broker could not be asked.
async fn check(engine: &Engine, config: &RelayConfig) -> Result<(Vec<String>, Option<String>)> {
    let names = needed(engine, config);
    let absent = missing(config, &names, CHECK_TIMEOUT).await?;
    if absent.is_empty() {
        return Ok((absent, None));
    }
    if !config.create_topics {
        let reason = format!("topics {absent:?} do not exist and --kafka-create-topics is false");
        return Ok((absent, Some(reason)));
    }
    Ok(
        match ensure(config, &absent.iter().cloned().collect(), CHECK_TIMEOUT).await {
            Ok(()) => (Vec::new(), None),
            Err(e) => (absent, Some(e.to_string())),
        },
    )
}

/// Checks (creating what may be created), reports to `observer`, and logs a problem
/// when it appears and when it clears; returns whether a topic is missing, or `None`
/// when the broker could not be asked.
async fn check_and_report(
    engine: &Engine,
    config: &RelayConfig,
    observer: &dyn TopicObserver,
    was_missing: bool,
) -> Option<bool> {
    let (absent, reason) = match check(engine, config).await {
        Ok(found) => found,
        // A broker that cannot be reached says nothing about its topics: the relay
        // waits for it (outbox_pending_events_total grows) and readiness stays as it
        // was, so a Kafka outage does not take the HTTP API out of service.
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask the Kafka broker which topics exist");
            return None;
        }
    };
    observer.topics_missing(&absent, reason.as_deref());
    match &reason {
        Some(reason) => tracing::error!(
            missing = ?absent, %reason,
            "Kafka topics are missing: their commands wait (nothing is dead-lettered for it)"
        ),
        None if was_missing => tracing::info!("every Kafka topic exists again"),
        None => {}
    }
    Some(reason.is_some())
}

/// Checks the topics at once, then now and then until `stopping`; `first_done` turns
/// true when the first check has ended, answered or not. It runs in the relay, so a
/// broker that does not answer never holds up the server's start: until its first
/// answer the observer hears what the relay waits for.
pub async fn watch(
    engine: std::sync::Arc<Engine>,
    config: RelayConfig,
    observer: std::sync::Arc<dyn TopicObserver>,
    first_done: tokio::sync::watch::Sender<bool>,
    mut stopping: Shutdown,
) {
    let waiting = format!(
        "waiting for the broker ({}) to answer the first topic check; commands wait in the log",
        config.brokers
    );
    observer.topics_unchecked(Some(&waiting));
    let (mut answered, mut was_missing) = (false, false);
    loop {
        tokio::select! {
            checked = check_and_report(&engine, &config, &*observer, was_missing) => {
                if let Some(missing) = checked {
                    was_missing = missing;
                    if !answered {
                        answered = true;
                        observer.topics_unchecked(None);
                    }
                }
                first_done.send_replace(true);
            }
            () = stopping.wait() => return,
        }
        let wait = if was_missing || !answered {
            CHECK_MISSING_EVERY
        } else {
            CHECK_EVERY
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            () = stopping.wait() => return,
        }
    }
}
