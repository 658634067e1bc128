//! Makes sure the topics the relay writes and reads exist (docs/server.md#kafka): many
//! clusters, and the `tansu` broker the tests use, do not create a topic on first use. A
//! topic that exists already is fine; one that cannot be created is an error naming it.
//!
//! [`TopicWatch`] is the process's one watcher: it keeps checking in the background —
//! the topics of definitions registered later too — creates what is missing (when it
//! may), reports what is missing, so that a broker that refuses a topic (or is down)
//! shows on `/readyz` and in a metric while the server runs on, and tells the Kafka
//! clients ([`Topics`]) when a topic *came back*: it was gone (a broker restarted
//! without its state, an operator deleted it) and exists again, made by the watcher or
//! by anyone else. librdkafka's clients do not recover from that by themselves — an
//! idempotent producer whose producer id the broker forgot retries until its messages
//! time out, a consumer keeps reading the old topic's id — so each of them starts a new
//! client on a return. The publishers and the reply consumer ask for a check at once
//! ([`Topics::check_soon`]) when the broker says a topic is unknown or a delivery fails,
//! so a return is seen within seconds rather than at the next periodic check.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use sagalog_engine::{Engine, Shutdown, Stop};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::{KafkaContext, RelayConfig, RelayError, Result};

/// How often the watcher checks the topics while one is missing or the broker does not
/// answer, and when all are there.
const CHECK_MISSING_EVERY: Duration = Duration::from_secs(5);
const CHECK_EVERY: Duration = Duration::from_secs(30);
/// Shortest time between two checks that a client asked for: a flood of failed
/// deliveries asks for one check a second at most.
const MIN_CHECK_GAP: Duration = Duration::from_secs(1);
/// Longest one check (a metadata request, then creations) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What the watcher reports.
pub trait TopicObserver: Send + Sync + 'static {
    /// The topics the broker does not have now (empty when all exist), and why they
    /// stay missing: `None` while the watcher creates them (or when none is missing),
    /// `Some` when they cannot be created. Called after each answered check, and also
    /// before the creations when a check finds topics to create.
    fn topics_missing(&self, _missing: &[String], _reason: Option<&str>) {}
    /// Whether the broker has answered a topic check since the watcher started: `Some`
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

/// The topics among `names` the broker does not offer, each with whether it is gone
/// (the broker does not know it) rather than unusable (an error such as a refused
/// authorization).
async fn missing(
    config: &RelayConfig,
    names: &BTreeSet<String>,
    timeout: Duration,
) -> Result<BTreeMap<String, bool>> {
    let admin = admin(config)?;
    // librdkafka's metadata call blocks.
    let errors = tokio::task::spawn_blocking(move || -> Result<BTreeMap<String, _>> {
        let metadata = admin.inner().fetch_metadata(None, timeout)?;
        Ok(metadata
            .topics()
            .iter()
            .map(|t| (t.name().to_string(), t.error().map(RDKafkaErrorCode::from)))
            .collect())
    })
    .await
    .map_err(|e| RelayError::Topic {
        topic: String::new(),
        reason: format!("the metadata task failed: {e}"),
    })??;
    Ok(names
        .iter()
        .filter_map(|name| match errors.get(name) {
            None | Some(Some(RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                Some((name.clone(), true))
            }
            Some(Some(_)) => Some((name.clone(), false)),
            Some(None) => None,
        })
        .collect())
}

/// What the Kafka clients learn from the watcher.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicState {
    /// The first check has ended, answered or not.
    pub first_check_done: bool,
    /// How many checks found a topic back; [`TopicState::came_back`] tells which.
    pub returns: u64,
    /// How many checks found a topic gone that had been seen: a producer renews then,
    /// so that it asks the broker afresh rather than writing to what it remembers.
    pub departures: u64,
    /// For each topic that ever came back, the value of `returns` at its latest return.
    returned: BTreeMap<String, u64>,
}

impl TopicState {
    /// Whether `topic` came back after the state's `returns` was `since`.
    pub fn came_back(&self, topic: &str, since: u64) -> bool {
        self.returned.get(topic).is_some_and(|at| *at > since)
    }
}

/// A client's handle on the watcher: its state, and asking it for a check.
#[derive(Clone)]
pub struct Topics {
    state: watch::Receiver<TopicState>,
    nudge: Arc<Notify>,
}

impl Topics {
    /// The watcher's state, to read or to wait on.
    pub fn state(&self) -> watch::Receiver<TopicState> {
        self.state.clone()
    }

    /// Asks for a check now (at most one a second is made): the broker says a topic is
    /// unknown, or deliveries fail.
    pub fn check_soon(&self) {
        self.nudge.notify_one();
    }

    /// Resolves once the first check has ended (the missing topics created, where they
    /// may be), answered or not: the clients start after it, so that the first
    /// commands do not race the creation of their topics, and the reply consumer does
    /// not wait minutes for librdkafka to notice a topic created after it subscribed.
    pub fn first_check(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut state = self.state.clone();
        async move {
            let _ = state.wait_for(|s| s.first_check_done).await;
        }
    }
}

/// The running watcher; [`TopicWatch::stop`] ends it.
pub struct TopicWatch {
    topics: Topics,
    task: JoinHandle<()>,
    stop: Stop,
}

impl TopicWatch {
    /// Checks the topics that `engines` (every local partition: a definition is in all)
    /// and `config` need at once, then now and then until stopped. It never waits for
    /// the broker: until its first answer the observer hears what the relay waits for.
    pub fn start(
        engines: Vec<Arc<Engine>>,
        config: RelayConfig,
        observer: Arc<dyn TopicObserver>,
    ) -> TopicWatch {
        let (publish, state) = watch::channel(TopicState::default());
        let nudge = Arc::new(Notify::new());
        let (stop, stopping) = Shutdown::new();
        let watcher = Watcher {
            engines,
            config,
            observer,
            publish,
            gone_before: BTreeSet::new(),
            seen: BTreeSet::new(),
            was_missing: false,
        };
        let task = tokio::spawn(watcher.run(nudge.clone(), stopping));
        TopicWatch {
            topics: Topics { state, nudge },
            task,
            stop,
        }
    }

    pub fn topics(&self) -> Topics {
        self.topics.clone()
    }

    pub async fn stop(self) {
        self.stop.stop();
        let _ = self.task.await;
    }
}

/// One check's findings.
struct Checked {
    /// Every topic needed.
    names: BTreeSet<String>,
    /// Missing when the check began, each with whether it was gone (see [`missing`]).
    found: BTreeMap<String, bool>,
    /// Still missing after the creations, and why.
    left: Vec<String>,
    reason: Option<String>,
}

struct Watcher {
    engines: Vec<Arc<Engine>>,
    config: RelayConfig,
    observer: Arc<dyn TopicObserver>,
    publish: watch::Sender<TopicState>,
    /// Gone at the last answered check and not created by it.
    gone_before: BTreeSet<String>,
    /// Seen to exist (or created) since the start: a topic of these found gone again is
    /// logged as such.
    seen: BTreeSet<String>,
    /// The last answered check left topics missing.
    was_missing: bool,
}

impl Watcher {
    async fn run(mut self, nudge: Arc<Notify>, mut stopping: Shutdown) {
        let waiting = format!(
            "waiting for the broker ({}) to answer the first topic check; commands wait in the log",
            self.config.brokers
        );
        self.observer.topics_unchecked(Some(&waiting));
        let mut answered = false;
        loop {
            let checked = tokio::select! {
                checked = self.check() => checked,
                () = stopping.wait() => return,
            };
            let settled = match checked {
                // A broker that cannot be reached says nothing about its topics: the
                // relay waits for it (outbox_pending_events_total grows) and readiness
                // stays as it was, so a Kafka outage does not take the HTTP API out of
                // service.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask the Kafka broker which topics exist");
                    false
                }
                Ok(checked) => {
                    if !answered {
                        answered = true;
                        self.observer.topics_unchecked(None);
                    }
                    let settled = checked.left.is_empty();
                    self.settle(checked);
                    settled
                }
            };
            self.publish.send_modify(|s| s.first_check_done = true);
            let wait = if settled {
                CHECK_EVERY
            } else {
                CHECK_MISSING_EVERY
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                () = nudge.notified() => {
                    tokio::select! {
                        _ = tokio::time::sleep(MIN_CHECK_GAP) => {}
                        () = stopping.wait() => return,
                    }
                }
                () = stopping.wait() => return,
            }
        }
    }

    /// What a check changed among the topics seen before: those back (gone at the last
    /// check and there now, or gone at this one and created), and whether one is newly
    /// gone.
    fn changes(&mut self, checked: &Checked) -> (BTreeSet<String>, bool) {
        let left: BTreeSet<&String> = checked.left.iter().collect();
        let gone = |t: &&String| checked.found.get(*t) == Some(&true);
        let mut back: BTreeSet<String> = self
            .gone_before
            .iter()
            .filter(|t| !checked.found.contains_key(*t))
            .cloned()
            .collect();
        back.extend(
            checked
                .found
                .keys()
                .filter(|t| gone(t) && !left.contains(t))
                .cloned(),
        );
        back.retain(|t| self.seen.contains(t));
        let departed = checked
            .found
            .keys()
            .any(|t| gone(&t) && self.seen.contains(t) && !self.gone_before.contains(t));
        self.gone_before = checked
            .found
            .keys()
            .filter(|t| gone(t) && left.contains(t))
            .cloned()
            .collect();
        self.seen
            .extend(checked.names.iter().filter(|t| !left.contains(t)).cloned());
        (back, departed)
    }

    /// One check: what is missing, then what is left after creating what may be
    /// created; `Err` when the broker could not be asked.
    async fn check(&self) -> Result<Checked> {
        let mut names = BTreeSet::new();
        for engine in &self.engines {
            names.append(&mut needed(engine, &self.config));
        }
        let found = missing(&self.config, &names, CHECK_TIMEOUT).await?;
        let absent: Vec<String> = found.keys().cloned().collect();
        if absent.is_empty() {
            return Ok(Checked {
                names,
                found,
                left: Vec::new(),
                reason: None,
            });
        }
        if !self.config.create_topics {
            let reason =
                format!("topics {absent:?} do not exist and --kafka-create-topics is false");
            return Ok(Checked {
                names,
                found,
                left: absent,
                reason: Some(reason),
            });
        }
        self.observer.topics_missing(&absent, None);
        let gone_again: Vec<&String> = absent.iter().filter(|t| self.seen.contains(*t)).collect();
        if !gone_again.is_empty() {
            tracing::warn!(
                topics = ?gone_again,
                "Kafka topics the relay uses are gone (deleted, or the broker lost its state): creating them again; their commands wait"
            );
        }
        let (left, reason) = match ensure(
            &self.config,
            &absent.iter().cloned().collect(),
            CHECK_TIMEOUT,
        )
        .await
        {
            Ok(()) => (Vec::new(), None),
            Err(e) => (absent, Some(e.to_string())),
        };
        Ok(Checked {
            names,
            found,
            left,
            reason,
        })
    }

    /// Reports a check's findings, logs a problem when it appears and when it clears,
    /// and tells the clients which topics came back: those seen before that were gone.
    /// A topic never seen (the first check's, a new definition's) is no return: a
    /// client that never used it has nothing to recover.
    fn settle(&mut self, checked: Checked) {
        self.observer
            .topics_missing(&checked.left, checked.reason.as_deref());
        match &checked.reason {
            Some(reason) => tracing::error!(
                missing = ?checked.left, %reason,
                "Kafka topics are missing: their commands wait (nothing is dead-lettered for it)"
            ),
            None if self.was_missing => tracing::info!("every Kafka topic exists again"),
            None => {}
        }
        self.was_missing = checked.reason.is_some();
        let (back, departed) = self.changes(&checked);
        if departed {
            self.publish.send_modify(|state| state.departures += 1);
        }
        if back.is_empty() {
            return;
        }
        tracing::info!(topics = ?back, "Kafka topics are back: the relay's clients start anew on them");
        self.publish.send_modify(|state| {
            state.returns += 1;
            for topic in back {
                state.returned.insert(topic, state.returns);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;
    impl TopicObserver for Quiet {}

    fn watcher() -> Watcher {
        Watcher {
            engines: Vec::new(),
            config: RelayConfig::new("127.0.0.1:9"),
            observer: Arc::new(Quiet),
            publish: watch::channel(TopicState::default()).0,
            gone_before: BTreeSet::new(),
            seen: BTreeSet::new(),
            was_missing: false,
        }
    }

    /// A check of topics `a` and `b` that found `found` missing (gone or not) and could
    /// not create `left`.
    fn checked(found: &[(&str, bool)], left: &[&str]) -> Checked {
        Checked {
            names: ["a", "b"].into_iter().map(String::from).collect(),
            found: found.iter().map(|(t, g)| (t.to_string(), *g)).collect(),
            left: left.iter().map(|t| t.to_string()).collect(),
            reason: (!left.is_empty()).then(|| "refused".to_string()),
        }
    }

    fn set(topics: &[&str]) -> BTreeSet<String> {
        topics.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn topics_made_at_the_first_check_are_no_return() {
        let mut w = watcher();
        let (back, departed) = w.changes(&checked(&[("a", true), ("b", true)], &[]));
        assert_eq!((back, departed), (set(&[]), false));
        let (back, departed) = w.changes(&checked(&[], &[]));
        assert_eq!((back, departed), (set(&[]), false), "all there since");
    }

    #[test]
    fn a_topic_gone_and_made_again_came_back() {
        let mut w = watcher();
        w.changes(&checked(&[], &[]));
        let (back, departed) = w.changes(&checked(&[("a", true)], &[]));
        assert_eq!((back, departed), (set(&["a"]), true));
        let (back, departed) = w.changes(&checked(&[], &[]));
        assert_eq!((back, departed), (set(&[]), false), "once");
    }

    #[test]
    fn a_topic_gone_that_may_not_be_made_departs_once_and_comes_back_when_made() {
        let mut w = watcher();
        w.changes(&checked(&[], &[]));
        let (back, departed) = w.changes(&checked(&[("b", true)], &["b"]));
        assert_eq!((back, departed), (set(&[]), true));
        let (back, departed) = w.changes(&checked(&[("b", true)], &["b"]));
        assert_eq!((back, departed), (set(&[]), false), "still gone: no news");
        let (back, departed) = w.changes(&checked(&[], &[]));
        assert_eq!(
            (back, departed),
            (set(&["b"]), false),
            "made by someone else"
        );
    }

    #[test]
    fn a_topic_never_seen_or_only_unusable_is_no_return() {
        let mut w = watcher();
        // Missing from the start and may not be made: made later by an operator.
        w.changes(&checked(&[("a", true)], &["a"]));
        let (back, _) = w.changes(&checked(&[], &[]));
        assert_eq!(back, set(&[]), "no client used it before");
        // An error other than an unknown topic (a leader not there yet) is not gone.
        let (back, departed) = w.changes(&checked(&[("b", false)], &[]));
        assert_eq!((back, departed), (set(&[]), false));
    }

    #[test]
    fn came_back_tells_returns_after_a_count() {
        let state = TopicState {
            returns: 2,
            returned: BTreeMap::from([("saga.replies".to_string(), 2)]),
            ..TopicState::default()
        };
        assert!(state.came_back("saga.replies", 1));
        assert!(!state.came_back("saga.replies", 2));
        assert!(!state.came_back("inventory.commands", 0));
    }
}
