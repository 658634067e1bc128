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
/// broker; returns those it created (not those that existed already).
pub async fn ensure(
    config: &RelayConfig,
    names: &BTreeSet<String>,
    timeout: Duration,
) -> Result<BTreeSet<String>> {
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
    let results = admin.create_topics(&topics, &options).await;
    // Dropping a client waits for its threads: off the runtime.
    tokio::task::spawn_blocking(move || drop(admin));
    let mut created = BTreeSet::new();
    for result in results? {
        match result {
            Ok(topic) => {
                tracing::info!(topic, "topic created");
                created.insert(topic);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(RelayError::Topic {
                    topic,
                    reason: format!("cannot be created: {code}"),
                })
            }
        }
    }
    Ok(created)
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
            problem: None,
            broker_answers: true,
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
    /// Made by this check (not found to exist already when it tried).
    created: BTreeSet<String>,
    /// Still missing after the creations, and why.
    left: Vec<String>,
    reason: Option<String>,
}

struct Watcher {
    engines: Vec<Arc<Engine>>,
    config: RelayConfig,
    observer: Arc<dyn TopicObserver>,
    publish: watch::Sender<TopicState>,
    /// Gone at the last answered check and not made since (unusable counts as still
    /// gone): one of these found there is back.
    gone_before: BTreeSet<String>,
    /// Seen to exist (or created) since the start: a topic of these found gone again is
    /// logged as such.
    seen: BTreeSet<String>,
    /// What the last answered check left missing, and why: logged when it changes.
    problem: Option<(Vec<String>, String)>,
    /// The last check was answered: a broker that stops answering is logged once.
    broker_answers: bool,
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
                    if self.broker_answers {
                        tracing::warn!(error = %e, "cannot ask the Kafka broker which topics exist; asking again every few seconds");
                    } else {
                        tracing::debug!(error = %e, "the Kafka broker still does not answer the topic check");
                    }
                    self.broker_answers = false;
                    false
                }
                Ok(checked) => {
                    if !answered {
                        answered = true;
                        self.observer.topics_unchecked(None);
                    }
                    if !self.broker_answers {
                        tracing::info!("the Kafka broker answers the topic check again");
                    }
                    self.broker_answers = true;
                    let settled = checked.left.is_empty();
                    self.settle(checked);
                    settled
                }
            };
            self.publish
                .send_if_modified(|s| !std::mem::replace(&mut s.first_check_done, true));
            // Unsettled, the watcher checks every few seconds anyway: a flood of
            // failing deliveries then adds nothing.
            if !settled {
                tokio::select! {
                    _ = tokio::time::sleep(CHECK_MISSING_EVERY) => continue,
                    () = stopping.wait() => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
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

    /// What a check changed among the topics seen before: those back, and those newly
    /// gone. Back is a topic gone at an earlier check (and not made since) that is
    /// there now, or one gone at this check that this check made. One found gone that
    /// existed when the watcher tried to make it (someone else made it in between, or
    /// the broker's metadata lagged) is no return: a false return would send the reply
    /// consumer back to the start of its topic, and a true one is caught by the
    /// consumer itself when it stops making progress.
    fn changes(&mut self, checked: &Checked) -> (BTreeSet<String>, BTreeSet<String>) {
        let left: BTreeSet<&String> = checked.left.iter().collect();
        let mut back: BTreeSet<String> = self
            .gone_before
            .iter()
            .filter(|t| !checked.found.contains_key(*t))
            .chain(
                checked
                    .created
                    .iter()
                    .filter(|t| checked.found.get(*t) == Some(&true)),
            )
            .filter(|t| self.seen.contains(*t))
            .cloned()
            .collect();
        let departed: BTreeSet<String> = checked
            .found
            .iter()
            .filter(|(t, gone)| **gone && self.seen.contains(*t) && !self.gone_before.contains(*t))
            .map(|(t, _)| t.clone())
            .collect();
        self.gone_before = checked
            .found
            .iter()
            .filter(|(t, gone)| {
                if **gone {
                    left.contains(t)
                } else {
                    self.gone_before.contains(*t)
                }
            })
            .map(|(t, _)| t.clone())
            .collect();
        back.retain(|t| !self.gone_before.contains(t));
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
        let mut checked = Checked {
            names,
            found,
            created: BTreeSet::new(),
            left: absent.clone(),
            reason: None,
        };
        if absent.is_empty() {
            return Ok(checked);
        }
        if !self.config.create_topics {
            checked.reason = Some(format!(
                "topics {absent:?} do not exist and --kafka-create-topics is false"
            ));
            return Ok(checked);
        }
        // What the last check said stays said while this one tries again.
        let said = self.problem.as_ref().map(|(_, reason)| reason.as_str());
        self.observer.topics_missing(&absent, said);
        let names = absent.iter().cloned().collect();
        match ensure(&self.config, &names, CHECK_TIMEOUT).await {
            Ok(created) => (checked.created, checked.left) = (created, Vec::new()),
            Err(e) => checked.reason = Some(e.to_string()),
        }
        Ok(checked)
    }

    /// Reports a check's findings, logs a problem when it appears and when it clears,
    /// and tells the clients which topics came back: those seen before that were gone.
    /// A topic never seen (the first check's, a new definition's) is no return: a
    /// client that never used it has nothing to recover.
    fn settle(&mut self, checked: Checked) {
        self.observer
            .topics_missing(&checked.left, checked.reason.as_deref());
        let problem = checked
            .reason
            .clone()
            .map(|reason| (checked.left.clone(), reason));
        if problem != self.problem {
            match &problem {
                Some((missing, reason)) => tracing::error!(
                    ?missing, %reason,
                    "Kafka topics are missing: their commands wait (nothing is dead-lettered for it)"
                ),
                None => tracing::info!("every Kafka topic exists again"),
            }
        }
        self.problem = problem;
        let (back, departed) = self.changes(&checked);
        if !departed.is_empty() {
            let next = if self.config.create_topics {
                "the relay makes them again"
            } else {
                "they wait for an operator to make them (--kafka-create-topics is false)"
            };
            tracing::warn!(
                topics = ?departed,
                "Kafka topics the relay uses are gone (deleted, or the broker lost its state): {next}; their commands wait"
            );
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
            problem: None,
            broker_answers: true,
        }
    }

    /// A check of topics `a` and `b` that found `found` missing (gone or not) and could
    /// not create `left`; it made the others found gone.
    fn checked(found: &[(&str, bool)], left: &[&str]) -> Checked {
        let made = found
            .iter()
            .filter(|(t, gone)| *gone && !left.contains(t))
            .map(|(t, _)| *t);
        Checked {
            created: set(&made.collect::<Vec<_>>()),
            ..found_made(found, left, &[])
        }
    }

    /// Like [`checked`], with what the check made given: the rest existed when it
    /// tried.
    fn found_made(found: &[(&str, bool)], left: &[&str], made: &[&str]) -> Checked {
        Checked {
            names: ["a", "b"].into_iter().map(String::from).collect(),
            found: found.iter().map(|(t, g)| (t.to_string(), *g)).collect(),
            created: set(made),
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
        assert_eq!((back, departed), (set(&[]), set(&[])));
        let (back, departed) = w.changes(&checked(&[], &[]));
        assert_eq!((back, departed), (set(&[]), set(&[])), "all there since");
    }

    #[test]
    fn a_topic_gone_and_made_again_came_back() {
        let mut w = watcher();
        w.changes(&checked(&[], &[]));
        let (back, departed) = w.changes(&checked(&[("a", true)], &[]));
        assert_eq!((back, departed), (set(&["a"]), set(&["a"])));
        let (back, departed) = w.changes(&checked(&[], &[]));
        assert_eq!((back, departed), (set(&[]), set(&[])), "once");
    }

    #[test]
    fn a_topic_gone_that_may_not_be_made_departs_once_and_comes_back_when_made() {
        let mut w = watcher();
        w.changes(&checked(&[], &[]));
        let (back, departed) = w.changes(&checked(&[("b", true)], &["b"]));
        assert_eq!((back, departed), (set(&[]), set(&["b"])));
        let (back, departed) = w.changes(&checked(&[("b", true)], &["b"]));
        assert_eq!(
            (back, departed),
            (set(&[]), set(&[])),
            "still gone: no news"
        );
        let (back, departed) = w.changes(&checked(&[], &[]));
        assert_eq!(
            (back, departed),
            (set(&["b"]), set(&[])),
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
        assert_eq!((back, departed), (set(&[]), set(&[])));
    }

    #[test]
    fn a_topic_gone_then_unusable_then_there_came_back() {
        let mut w = watcher();
        w.changes(&checked(&[], &[]));
        w.changes(&checked(&[("a", true)], &["a"]));
        // Made by an operator, its leader not elected yet: unusable, still not back.
        let (back, departed) = w.changes(&checked(&[("a", false)], &[]));
        assert_eq!((back, departed), (set(&[]), set(&[])));
        let (back, departed) = w.changes(&checked(&[], &[]));
        assert_eq!((back, departed), (set(&["a"]), set(&[])));
    }

    #[test]
    fn a_topic_found_gone_that_existed_when_made_is_no_return() {
        let mut w = watcher();
        w.changes(&checked(&[], &[]));
        let (back, departed) = w.changes(&found_made(&[("a", true)], &[], &[]));
        assert_eq!((back, departed), (set(&[]), set(&["a"])));
        let (back, departed) = w.changes(&checked(&[], &[]));
        assert_eq!((back, departed), (set(&[]), set(&[])), "nor later");
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
