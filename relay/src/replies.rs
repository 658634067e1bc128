//! Replies over Kafka (docs/server.md#kafka): a consumer on the reply topic feeds each message to
//! the same engine path as `POST /api/v1/sagas/{id}/events` — same parser, same
//! validation, idempotency by `event_id`. A message's offset is committed only after
//! the engine made the reply durable (or refused it for good); a message that is not
//! a reply is logged, counted and skipped. When the engine cannot write, the consumer
//! waits and tries the same message again, so nothing is skipped.
//!
//! When the reply topic came back after it was gone (the topic watcher says so, see
//! [`crate::topics`]), a new consumer reads it from its start: the old one keeps the
//! old topic's id and its offsets, which say nothing of the new topic's messages
//! (replies are idempotent, so one read twice changes nothing). A consumer that reads
//! nothing for [`STALL_AFTER`] while the broker says its partitions hold messages past
//! (or fewer than) its position is replaced the same way: that is a topic made anew
//! between two of the watcher's checks, which the watcher cannot tell.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use sagalog_engine::wire::ReplyMessage;
use sagalog_engine::{is_valid_saga_id, ErrorClass, Partitions, Placement, Shutdown, Stop};
use tokio::task::JoinHandle;

use crate::topics::{TopicState, Topics};
use crate::{KafkaContext, RelayConfig, Result};

/// The pause after a failed read of the reply topic.
const READ_RETRY: Duration = Duration::from_millis(500);
/// The first pause before a reply the engine could not take now is tried again (it
/// doubles from there).
const FIRST_REPLY_RETRY: Duration = Duration::from_millis(100);

/// Longest wait before a reply the engine could not take is tried again.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);
/// librdkafka's `metadata.max.age.ms` for the reply consumer: its metadata cache keeps
/// next to nothing. A broker that answers a fetch of a topic it does not know with a
/// zero topic id and a leader hint (tansu 0.6 does) makes librdkafka 2.12 look that
/// hint's topic up in the cache by a null name, which crashes the process when the
/// cache holds a topic; entries that expire at once narrow that window to almost
/// nothing (no crash in our runs since, against several before). The consumer needs no
/// cache: it is assigned its partitions and asks the broker directly for the rest.
const CONSUMER_METADATA_MAX_AGE_MS: &str = "1";

/// How often the consumer lag is measured.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// Longest a watermark query may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a consumer may read nothing while its partitions hold messages it has not
/// read before it is taken for one left on a topic that was made anew.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

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

/// How long a metadata query for the reply topic's partitions may take, and the pause
/// before it is asked again.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const METADATA_RETRY: Duration = Duration::from_secs(2);

pub struct ReplyConsumer {
    task: JoinHandle<()>,
    stop: Stop,
}

impl ReplyConsumer {
    /// Reads the reply topic once the first topic check has ended (the topic created
    /// where it may be: librdkafka notices a topic created after it was assigned only at
    /// its next metadata refresh, minutes later), and reads it anew, with a new
    /// consumer, each time it came back.
    pub fn start(
        partitions: Arc<Partitions>,
        config: &RelayConfig,
        observer: Arc<dyn ReplyObserver>,
        topics: Topics,
        forwarder: Option<Arc<dyn ReplyForwarder>>,
    ) -> Result<ReplyConsumer> {
        let first = consumer(config)?;
        let (stop, stopping) = Shutdown::new();
        let config = config.clone();
        let task = tokio::spawn(async move {
            let mut waiting = stopping.clone();
            tokio::select! {
                () = topics.first_check() => {}
                () = waiting.wait() => {
                    // Closing a consumer waits for librdkafka: off the runtime.
                    tokio::task::spawn_blocking(move || drop(first));
                    return;
                }
            }
            let reader = Reader {
                partitions,
                observer,
                forwarder,
                topics,
                stopping,
            };
            reader.run(first, &config).await;
        });
        Ok(ReplyConsumer { task, stop })
    }

    pub async fn stop(self) {
        self.stop.stop();
        let _ = self.task.await;
    }
}

/// A consumer of the reply topic with sagalog's settings.
fn consumer(config: &RelayConfig) -> Result<StreamConsumer<KafkaContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.reply_group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("metadata.max.age.ms", CONSUMER_METADATA_MAX_AGE_MS)
        .create_with_context(KafkaContext)?)
}

/// Why one consumer stopped reading.
enum Ended {
    Stopped,
    /// The reply topic came back: the watcher's count of returns then.
    TopicBack(u64),
    /// It read nothing for [`STALL_AFTER`] with messages to read (see [`Stall`]).
    Stalled,
}

/// What every consumer of the reply topic shares, one after another.
struct Reader {
    partitions: Arc<Partitions>,
    observer: Arc<dyn ReplyObserver>,
    forwarder: Option<Arc<dyn ReplyForwarder>>,
    topics: Topics,
    stopping: Shutdown,
}

impl Reader {
    /// Reads with `first`, then with a new consumer each time the topic came back,
    /// until the stop.
    async fn run(&self, first: StreamConsumer<KafkaContext>, config: &RelayConfig) {
        let topic = config.reply_topic.as_str();
        let mut state = self.topics.state();
        let mut seen = state.borrow_and_update().returns;
        let mut next = Some(first);
        let mut from_start = false;
        let mut stopping = self.stopping.clone();
        loop {
            let consumer = match next.take().map_or_else(|| consumer(config), Ok) {
                Ok(consumer) => Arc::new(consumer),
                Err(e) => {
                    tracing::error!(error = %e, "making a new reply consumer failed; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(METADATA_RETRY) => continue,
                        () = stopping.wait() => return,
                    }
                }
            };
            let placement = self.partitions.placement();
            if !assign(&consumer, topic, placement, from_start, &mut stopping).await {
                tokio::task::spawn_blocking(move || drop(consumer));
                return;
            }
            if from_start {
                commit_start(&consumer).await;
            }
            let ended = self.read(&consumer, topic, &mut state, seen).await;
            // Closing a consumer waits for librdkafka: off the runtime, and before the
            // next one starts, so that two never hold the partitions at once.
            let closing = tokio::task::spawn_blocking(move || drop(consumer));
            match ended {
                Ended::Stopped => return,
                Ended::TopicBack(returns) => {
                    tracing::info!(
                        topic,
                        "the reply topic came back: reading it from its start with a new consumer"
                    );
                    seen = returns;
                }
                Ended::Stalled => tracing::warn!(
                    topic,
                    stalled_s = STALL_AFTER.as_secs(),
                    "the reply consumer has read nothing though its position is not where the broker says its partition ends (behind it, or past it: the topic was made anew?): reading it from its start with a new consumer"
                ),
            }
            from_start = true;
            let _ = closing.await;
        }
    }

    /// Feeds the replies `consumer` reads to the engine until the stop or the topic's
    /// return after `seen`.
    async fn read(
        &self,
        consumer: &Arc<StreamConsumer<KafkaContext>>,
        topic: &str,
        state: &mut tokio::sync::watch::Receiver<TopicState>,
        seen: u64,
    ) -> Ended {
        let mut lag_tick = tokio::time::interval(LAG_INTERVAL);
        let mut stall = Stall::new(Instant::now());
        let mut stop_signal = self.stopping.clone();
        let mut stopping = self.stopping.clone();
        let mut watching = true;
        loop {
            tokio::select! {
                biased;
                () = stop_signal.wait() => return Ended::Stopped,
                // A watcher that has stopped has nothing more to say.
                changed = state.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                        continue;
                    }
                    let now = state.borrow_and_update();
                    if now.came_back(topic, seen) {
                        return Ended::TopicBack(now.returns);
                    }
                }
                _ = lag_tick.tick() => {
                    let consumer = consumer.clone();
                    match tokio::task::spawn_blocking(move || marks(&consumer)).await {
                        Ok(Some(marks)) => {
                            self.observer.lag(lag(&marks));
                            if stall.stalled(&marks, Instant::now()) {
                                return Ended::Stalled;
                            }
                        }
                        // A broker that does not answer holds every consumer still:
                        // the count starts again once it does.
                        _ => stall = Stall::new(Instant::now()),
                    }
                }
                message = consumer.recv() => match message {
                    Ok(message) => {
                        let forwarder = self.forwarder.as_deref();
                        if !handle(&self.partitions, self.observer.as_ref(), forwarder, &message, &mut stopping).await {
                            return Ended::Stopped;
                        }
                        if let Err(e) = consumer.commit_message(&message, CommitMode::Async) {
                            tracing::warn!(error = %e, "committing a reply's offset failed; it may be read again (replies are idempotent)");
                        }
                    }
                    Err(e) => {
                        if matches!(
                            e.rdkafka_error_code(),
                            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopicId)
                        ) {
                            // Gone: the watcher makes it again (where it may) and says so.
                            self.topics.check_soon();
                        }
                        crate::logs::kafka_problem("reply consumer", &e, "reading the reply topic failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(READ_RETRY) => {}
                            () = stop_signal.wait() => return Ended::Stopped,
                        }
                    }
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

/// Assigns the consumer its pod's partitions of the reply topic (see
/// [`Placement::reply_partitions`]), from their start when `from_start` and else from the group's
/// committed offsets, asking the broker how many the topic has until it answers; false
/// when a stop came first.
async fn assign(
    consumer: &Arc<StreamConsumer<KafkaContext>>,
    topic: &str,
    placement: &Placement,
    from_start: bool,
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
                let offset = if from_start {
                    rdkafka::Offset::Beginning
                } else {
                    rdkafka::Offset::Invalid
                };
                for k in placement.reply_partitions(count as u32) {
                    if let Err(e) = list.add_partition_offset(topic, k as i32, offset) {
                        tracing::error!(topic, partition = k, error = %e, "assigning a reply topic partition failed");
                    }
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

/// Where a consumer stands on one partition it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    partition: i32,
    /// The next offset it hands over; `None` before it handed one over.
    position: Option<i64>,
    /// The broker's high watermark.
    high: i64,
}

/// The consumer's marks; `None` when the broker did not answer for every partition.
fn marks(consumer: &StreamConsumer<KafkaContext>) -> Option<Vec<Mark>> {
    let positions = consumer.position().ok()?;
    positions
        .elements()
        .iter()
        .map(|element| {
            let (_, high) = consumer
                .fetch_watermarks(element.topic(), element.partition(), WATERMARK_TIMEOUT)
                .ok()?;
            Some(Mark {
                partition: element.partition(),
                position: element.offset().to_raw().filter(|o| *o >= 0),
                high,
            })
        })
        .collect()
}

/// Messages behind the high watermark on the partitions this consumer holds.
fn lag(marks: &[Mark]) -> i64 {
    marks
        .iter()
        .map(|m| (m.high - m.position.unwrap_or(0)).max(0))
        .sum()
}

/// Tells a consumer that stands still while the broker says it has something to read:
/// on some partition its position is neither the high watermark (all read) nor
/// unknown (nothing handed over yet), and no position moved for [`STALL_AFTER`]. A
/// position past the high watermark is a topic made anew with fewer messages; one
/// behind it that does not move is a consumer fetching a topic id the broker no longer
/// knows. A consumer busy with one reply measures nothing meanwhile, so a slow engine
/// is not taken for a stall.
struct Stall {
    positions: Vec<(i32, Option<i64>)>,
    since: Instant,
}

impl Stall {
    fn new(now: Instant) -> Stall {
        Stall {
            positions: Vec::new(),
            since: now,
        }
    }

    fn stalled(&mut self, marks: &[Mark], now: Instant) -> bool {
        let positions: Vec<_> = marks.iter().map(|m| (m.partition, m.position)).collect();
        let behind = marks
            .iter()
            .any(|m| m.position.is_some_and(|p| p != m.high));
        if positions != self.positions || !behind {
            (self.positions, self.since) = (positions, now);
            return false;
        }
        now.duration_since(self.since) >= STALL_AFTER
    }
}

/// Commits the start of each partition the consumer holds (after it was assigned
/// from there): the group's offsets are the old topic's, and a restart before the
/// first reply on the new one would otherwise skip that many of its messages.
async fn commit_start(consumer: &Arc<StreamConsumer<KafkaContext>>) {
    let consumer = consumer.clone();
    let committed = tokio::task::spawn_blocking(move || {
        let assigned = consumer.assignment()?;
        let mut starts = rdkafka::TopicPartitionList::new();
        for element in assigned.elements() {
            let (low, _) = consumer.fetch_watermarks(
                element.topic(),
                element.partition(),
                WATERMARK_TIMEOUT,
            )?;
            starts.add_partition_offset(
                element.topic(),
                element.partition(),
                rdkafka::Offset::Offset(low),
            )?;
        }
        consumer.commit(&starts, CommitMode::Sync)
    })
    .await;
    match committed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "committing the start of the reply topic failed; a restart before the first reply may read from the old offsets")
        }
        Err(e) => tracing::warn!(error = %e, "the commit task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, position: Option<i64>, high: i64) -> Mark {
        Mark {
            partition,
            position,
            high,
        }
    }

    #[test]
    fn a_consumer_standing_still_behind_or_past_the_high_watermark_stalls() {
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        let mut stall = Stall::new(t0);
        let behind = [at(0, Some(5), 9), at(1, Some(3), 3)];
        assert!(!stall.stalled(&behind, t0));
        assert!(!stall.stalled(&behind, later(29)));
        assert!(stall.stalled(&behind, later(30)));
        let mut stall = Stall::new(t0);
        let past = [at(0, Some(500), 3)];
        assert!(!stall.stalled(&past, t0));
        assert!(
            stall.stalled(&past, later(31)),
            "a topic made anew, smaller"
        );
    }

    #[test]
    fn a_consumer_that_moves_or_has_read_all_or_nothing_yet_does_not_stall() {
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        let mut stall = Stall::new(t0);
        assert!(!stall.stalled(&[at(0, Some(5), 9)], t0));
        assert!(!stall.stalled(&[at(0, Some(6), 9)], later(20)));
        assert!(
            !stall.stalled(&[at(0, Some(6), 9)], later(40)),
            "moved at 20 s"
        );
        assert!(stall.stalled(&[at(0, Some(6), 9)], later(50)));
        let (mut all_read, mut none_yet) = (Stall::new(t0), Stall::new(t0));
        for s in [0, 40, 80] {
            assert!(!all_read.stalled(&[at(0, Some(9), 9)], later(s)));
            assert!(!none_yet.stalled(&[at(0, None, 9)], later(s)));
        }
    }

    #[test]
    fn lag_counts_what_is_past_each_position() {
        assert_eq!(
            lag(&[at(0, Some(5), 9), at(1, None, 4), at(2, Some(7), 3)]),
            8
        );
    }
}
