//! The publisher: log tail → Kafka, in log order, many in flight.
//!
//! It reads records from its position with a tail subscription (woken by each group
//! commit), renders the commands among them ([`Engine::commands`]) and hands each to
//! the idempotent producer at once, keeping the deliveries in a window in log order.
//! The oldest delivery is awaited first; when it is acknowledged the position moves
//! past it and the records up to the next command, so the position only ever moves
//! over a contiguous prefix of published records. It is stored every
//! [`RelayConfig::position_interval`] and on stop.
//!
//! A failed delivery holds the window (later commands of the same saga never overtake
//! it): a failure to reach the broker is retried with backoff without bound, so a
//! broker that is down delays commands but skips none; a command the broker refuses
//! as such (too large, invalid) is retried up to [`RelayConfig::max_attempts`] and
//! then dead-lettered — recorded in the log, copied to the dead-letter topic when the
//! broker takes it — and publishing goes on with the next command.
//!
//! A new producer replaces the old one, and everything in the window is sent again on
//! it in log order (as after a restart, from the position), when a topic came back
//! ([`crate::topics`]: a broker that restarted without its state has also forgotten the
//! producer's id, and librdkafka's idempotent producer retries with it until its
//! messages time out), on a fatal error, and every third failed attempt at one command.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use sagalog_engine::{Command, Engine, Shutdown, Stop};
use tokio::task::JoinHandle;

use crate::parked::Parked;
use crate::topics::Topics;
use crate::{position, topics, KafkaContext, RelayConfig, Result};

/// Longest a dropped publisher waits to hand librdkafka's queue to the broker.
const DROP_FLUSH: Duration = Duration::from_secs(1);

/// Records one read of the tail takes.
const READ_RECORDS: usize = 1024;
const READ_BYTES: usize = 8 << 20;
/// Longest a stop waits for the deliveries in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A command that failed this many times in a row to reach the broker gets a new
/// producer for its next attempt (and everything behind it is sent again).
const RENEW_PRODUCER_AFTER: u32 = 3;
/// Longest the copy of a dead letter to the dead-letter topic may take.
const DEAD_LETTER_COPY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the relay reports, for the outbox metrics (docs/server.md#metrics).
pub trait RelayObserver: topics::TopicObserver {
    /// A command was acknowledged by the broker `append_to_ack` after it was issued.
    fn published(&self, _append_to_ack: Duration) {}
    /// A delivery attempt failed.
    fn failed(&self) {}
    /// A command's first attempt — sent as soon as its record was durable — ended,
    /// delivered or not.
    fn first_attempt(&self, _delivered: bool) {}
    /// A read of the log tail handed `commands` (at least one) to the producer.
    fn batch(&self, _commands: usize) {}
    /// A command is sent again after a failure.
    fn retried(&self) {}
    /// A command was dead-lettered.
    fn dead_lettered(&self) {}
    /// Log records not yet past the relay (log head minus position).
    fn pending(&self, _records: u64) {}
    /// Commands read and held back because their topic is paused.
    fn held(&self, _commands: usize) {}
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// The broker cannot be reached, is busy, or lacks the topic: retry without bound
    /// (making sure the topic exists first).
    Unreachable(String),
    /// The broker (or librdkafka's own checks) refuses this record.
    Refused(String),
    /// The producer cannot go on (e.g. the broker forgot its idempotence state): a new
    /// one is made and everything in flight is sent again.
    Fatal(String),
}

type Delivery = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A command handed to the producer and not yet acknowledged.
struct InFlight {
    command: Command,
    attempt: u32,
    delivery: Delivery,
}

/// Whether a failure calls for a new producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renew {
    No,
    /// The producer cannot go on: replace it at once.
    Now,
    /// It keeps failing: replace it after the usual backoff.
    AfterBackoff,
}

/// What became of the oldest delivery.
enum Settled {
    /// Published or dead-lettered.
    Done,
    /// Sent again; wait on it again.
    Retry(InFlight),
    /// Sent again on a new producer: everything behind it must be sent again too.
    Restarted(InFlight),
    /// Its topic was paused since it was sent: park it rather than send it again (and,
    /// with a new producer, send everything behind it again).
    Park { slot: InFlight, restarted: bool },
}

/// A running relay; [`Relay::stop`] ends it and stores its position.
pub struct Relay {
    task: JoinHandle<Result<()>>,
    stop: Stop,
    position: Arc<AtomicU64>,
}

impl Relay {
    /// Starts publishing from the stored position once the first check of `topics`
    /// has ended (the topics created, where they may be), so that the first commands
    /// after a start do not race the creation of their topics; it never waits for the
    /// broker itself.
    pub async fn start(
        engine: Arc<Engine>,
        config: RelayConfig,
        topics: Topics,
        observer: Arc<dyn RelayObserver>,
    ) -> Result<Relay> {
        // A missing topic does not stop the start: its commands wait, and the watcher
        // reports it (readiness, metric) until it exists.
        let producer = producer(&config)?;
        let cursor = position::cursor(&engine);
        let (stored, log_start) = (cursor.load()?, engine.log_bounds().0);
        if stored < log_start {
            // Retention ran while no relay held the log (Kafka was off): those commands
            // belonged to finished sagas and were never published.
            tracing::warn!(
                stored, log_start,
                "the relay's position is below the log's start: commands in between were removed unpublished"
            );
        }
        let start = stored.max(log_start);
        let position = Arc::new(AtomicU64::new(start));
        let (stop, stopping) = Shutdown::new();
        let publisher = Publisher {
            engine,
            producer: parking_lot::Mutex::new(producer),
            config,
            observer,
            topics,
            position: position.clone(),
            stopping,
        };
        Ok(Relay {
            task: tokio::spawn(publisher.run(start)),
            stop,
            position,
        })
    }

    /// The first log offset not yet published.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// Reads [`Relay::position`] from elsewhere (retention holds the log from it).
    pub fn position_reader(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let position = self.position.clone();
        move || position.load(Ordering::Acquire)
    }

    /// Stops publishing (waiting a little for deliveries in flight) and stores the
    /// position durably.
    pub async fn stop(self) -> Result<()> {
        self.stop.stop();
        match self.task.await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "the relay task failed");
                Ok(())
            }
        }
    }
}

struct Publisher {
    engine: Arc<Engine>,
    /// Replaced when librdkafka reports a fatal error (an idempotent producer whose
    /// broker lost its state cannot go on).
    producer: parking_lot::Mutex<FutureProducer<KafkaContext>>,
    config: RelayConfig,
    observer: Arc<dyn RelayObserver>,
    /// The topic watcher: when to start, when a topic came back, and asked for a check
    /// when deliveries fail.
    topics: Topics,
    position: Arc<AtomicU64>,
    stopping: Shutdown,
}

impl Publisher {
    /// Publishes from `start` once the first topic check has ended; a broker that does
    /// not answer delays that by the check's timeout at most.
    async fn run(self, start: u64) -> Result<()> {
        let mut stopping = self.stopping.clone();
        let mut waiting = tokio::time::interval(self.config.position_interval);
        let checked = self.topics.first_check();
        let mut checked = std::pin::pin!(checked);
        loop {
            tokio::select! {
                _ = &mut checked => break,
                () = stopping.wait() => break,
                // What waits meanwhile shows in outbox_pending_events_total.
                _ = waiting.tick() => self
                    .observer
                    .pending(self.engine.log_bounds().1.saturating_sub(start)),
            }
        }
        let engine = self.engine.clone();
        let cursor = position::cursor(&engine);
        let mut feed = engine.command_feed(start);
        let mut window: VecDeque<InFlight> = VecDeque::new();
        // Commands of paused topics, and whether some may go out now (a resume).
        let mut delivery = engine.delivery_changes();
        let mut parked = Parked::default();
        let mut releasing = false;
        let mut position = start;
        let mut stored = start;
        let mut store_tick = tokio::time::interval(self.config.position_interval);
        let mut topic_state = self.topics.state();
        let (mut returns, mut departures) = {
            let state = topic_state.borrow_and_update();
            (state.returns, state.departures)
        };
        let mut watching = true;
        tracing::info!(position, brokers = %self.config.brokers, "relay publishing");
        loop {
            tokio::select! {
                biased;
                () = stopping.wait() => break,
                // A change matters here only to parked commands (a resume releases
                // them); new reads and retries look at the state themselves. Not
                // polled otherwise: it would cost every turn of this loop.
                changed = delivery.changed(), if !parked.is_empty() => {
                    if changed.is_err() {
                        break;
                    }
                    releasing = parked.any_releasable(&delivery.borrow_and_update());
                    if releasing {
                        tracing::info!(
                            held = parked.len(),
                            "delivery resumed: publishing the commands held for the resumed topics first"
                        );
                    }
                }
                // A watcher that has stopped has nothing more to say.
                changed = topic_state.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                        continue;
                    }
                    let now = {
                        let state = topic_state.borrow_and_update();
                        (state.returns, state.departures)
                    };
                    if now != (returns, departures) {
                        window = self.topic_changed(now.0 != returns, window, &mut parked)?;
                        (returns, departures) = now;
                    }
                }
                outcome = async { (&mut window.front_mut().expect("checked").delivery).await }, if !window.is_empty() => {
                    let slot = window.pop_front().expect("checked");
                    match self.settle(slot, outcome, returns).await? {
                        Settled::Retry(slot) => window.push_front(slot),
                        Settled::Restarted(slot) => {
                            window = self.send_again(window, &mut parked);
                            window.push_front(slot);
                        }
                        Settled::Park { slot, restarted } => {
                            parked.push(slot.command);
                            if restarted {
                                window = self.send_again(window, &mut parked);
                            }
                        }
                        Settled::Done => {}
                    }
                }
                batch = feed.next(READ_RECORDS, READ_BYTES), if window.len() < self.config.max_in_flight && !parked.is_full() && !releasing => {
                    let batch = match batch {
                        Ok(batch) => batch,
                        Err(sagalog_engine::EngineError::Closed) => break,
                        Err(e) => return Err(e.into()),
                    };
                    let paused = delivery.borrow().clone();
                    let mut sent = 0;
                    for command in batch.commands {
                        if parked.must_park(&command, &paused) {
                            releasing |= !paused.is_paused(&command.topic);
                            parked.push(command);
                            continue;
                        }
                        let delivery = self.send(&command);
                        window.push_back(InFlight { command, attempt: 1, delivery });
                        sent += 1;
                    }
                    if sent > 0 {
                        self.observer.batch(sent);
                    }
                }
                _ = store_tick.tick() => {
                    if position != stored {
                        cursor.store(position)?;
                        stored = position;
                    }
                    self.observer.pending(engine.log_bounds().1.saturating_sub(position));
                    self.observer.held(parked.len());
                }
            }
            if releasing {
                let room = self.config.max_in_flight.saturating_sub(window.len());
                let paused = delivery.borrow().clone();
                let released = parked.release(&paused, room);
                if !released.is_empty() {
                    self.observer.batch(released.len());
                }
                for command in released {
                    let delivery = self.send(&command);
                    insert_in_order(
                        &mut window,
                        InFlight {
                            command,
                            attempt: 1,
                            delivery,
                        },
                    );
                }
                releasing = parked.any_releasable(&paused);
            }
            position = position_of(&window, &parked, feed.position());
            self.position.store(position, Ordering::Release);
        }
        let position = self.drain(window, &parked, feed.position()).await;
        self.position.store(position, Ordering::Release);
        cursor.store_durably(position)?;
        tracing::info!(position, held = parked.len(), "relay stopped");
        Ok(())
    }

    /// A topic came back (`back`) or went away: the producer's idea of it (its
    /// metadata, and for tansu its producer id) is stale, so a new producer takes over
    /// and everything in flight is sent again on it, in log order.
    fn topic_changed(
        &self,
        back: bool,
        window: VecDeque<InFlight>,
        parked: &mut Parked,
    ) -> Result<VecDeque<InFlight>> {
        let why = if back { "came back" } else { "is gone" };
        tracing::warn!(
            in_flight = window.len(),
            "a Kafka topic {why}: starting a new producer and sending everything in flight again"
        );
        self.renew_producer()?;
        Ok(self.send_again(window, parked))
    }

    /// Waits (bounded) for the deliveries in flight at a stop, so that a clean stop
    /// republishes nothing; returns the position they reach.
    async fn drain(&self, mut window: VecDeque<InFlight>, parked: &Parked, read_to: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        let mut position = position_of(&window, parked, read_to);
        while let Some(mut slot) = window.pop_front() {
            match tokio::time::timeout_at(deadline, &mut slot.delivery).await {
                Ok(Outcome::Delivered) => {
                    if slot.attempt == 1 {
                        self.observer.first_attempt(true);
                    }
                    self.observer.published(since_issue(&slot.command));
                    position = position_of(&window, parked, read_to);
                }
                _ => break,
            }
        }
        position
    }

    /// Sends the window again on a new producer, but for the commands whose topic is
    /// paused now, which are parked instead.
    fn send_again(&self, window: VecDeque<InFlight>, parked: &mut Parked) -> VecDeque<InFlight> {
        let paused = self.engine.delivery();
        let mut kept = VecDeque::with_capacity(window.len() + 1);
        for mut later in window {
            if paused.is_paused(&later.command.topic) {
                parked.push(later.command);
            } else {
                later.delivery = self.send(&later.command);
                kept.push_back(later);
            }
        }
        kept
    }

    /// Replaces the producer; the old one (with whatever it still queues, purged) is
    /// dropped off the runtime: its drop waits for its thread.
    fn renew_producer(&self) -> Result<()> {
        let fresh = producer(&self.config)?;
        let old = std::mem::replace(&mut *self.producer.lock(), fresh);
        tokio::task::spawn_blocking(move || drop(old));
        Ok(())
    }

    /// Handles the oldest delivery's outcome; `returns` is the topic watcher's count of
    /// returns the run loop has acted on.
    async fn settle(&self, mut slot: InFlight, outcome: Outcome, returns: u64) -> Result<Settled> {
        if slot.attempt == 1 {
            self.observer.first_attempt(outcome == Outcome::Delivered);
        }
        let (reason, renew) = match outcome {
            Outcome::Delivered => {
                self.observer.published(since_issue(&slot.command));
                return Ok(Settled::Done);
            }
            Outcome::Refused(reason) if slot.attempt >= self.config.max_attempts => {
                self.dead_letter(&slot.command, &reason).await?;
                return Ok(Settled::Done);
            }
            Outcome::Refused(reason) => (reason, Renew::No),
            Outcome::Fatal(reason) => (reason, Renew::Now),
            Outcome::Unreachable(reason) => {
                // A broker that came back without its topics may answer only with
                // timeouts: the watcher checks at once, creates what is gone and tells
                // the relay (a new producer then) when the topics are back.
                self.topics.check_soon();
                // A producer still failing after the broker is back may hold stale
                // state of it: a new one starts clean.
                let renew = if slot.attempt.is_multiple_of(RENEW_PRODUCER_AFTER) {
                    Renew::AfterBackoff
                } else {
                    Renew::No
                };
                (reason, renew)
            }
        };
        self.observer.failed();
        tracing::warn!(
            offset = slot.command.offset,
            saga_id = %slot.command.saga_id,
            attempt = slot.attempt,
            reason,
            "publishing a command failed; retrying"
        );
        // A new producer at once, but not again and again at once: a broker that keeps
        // refusing new producers gets the usual backoff between them.
        if renew != Renew::Now || slot.attempt > 1 {
            let backoff = self
                .config
                .retry_backoff
                .saturating_mul(2u32.saturating_pow(slot.attempt.saturating_sub(1).min(16)))
                .min(self.config.max_retry_backoff);
            let mut stopping = self.stopping.clone();
            // A topic that came back ends the wait: the run loop renews the producer.
            let mut topic_state = self.topics.state();
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stopping.wait() => {}
                () = async {
                    if topic_state.wait_for(|s| s.returns != returns).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => {}
            }
        }
        if renew != Renew::No {
            tracing::warn!("starting a new Kafka producer and sending everything in flight again");
            self.renew_producer()?;
        }
        if self.engine.delivery().is_paused(&slot.command.topic) {
            // Paused since it was sent: held with the others until the resume.
            return Ok(Settled::Park {
                slot,
                restarted: renew != Renew::No,
            });
        }
        slot.attempt = slot.attempt.saturating_add(1);
        slot.delivery = self.send(&slot.command);
        self.observer.retried();
        Ok(match renew {
            Renew::No => Settled::Retry(slot),
            Renew::Now | Renew::AfterBackoff => Settled::Restarted(slot),
        })
    }

    /// Hands `command` to the producer; the delivery resolves with its outcome.
    fn send(&self, command: &Command) -> Delivery {
        let value = command.to_json();
        let record = FutureRecord::to(&command.topic)
            .key(command.saga_id.as_str())
            .payload(&value)
            .headers(headers(command));
        let producer = self.producer.lock().clone();
        match producer.send_result(record) {
            Ok(delivery) => Box::pin(async move {
                match delivery.await {
                    Ok(Ok(_)) => Outcome::Delivered,
                    Ok(Err((e, _))) => classify(&e),
                    Err(_) => Outcome::Unreachable("the producer dropped the message".into()),
                }
            }),
            Err((e, _)) => {
                let outcome = classify(&e);
                Box::pin(async move { outcome })
            }
        }
    }

    /// Records the dead letter in the log, then copies the command to the dead-letter
    /// topic (best effort: the log entry is what counts).
    async fn dead_letter(&self, command: &Command, reason: &str) -> Result<()> {
        let entry = self
            .engine
            .dead_letter(&command.saga_id, command.offset, reason.to_string())
            .await?;
        self.observer.dead_lettered();
        tracing::error!(
            offset = command.offset,
            dead_letter_offset = entry,
            saga_id = %command.saga_id,
            reason,
            "command dead-lettered"
        );
        let value = command.to_json();
        let copy = FutureRecord::to(&self.config.dead_letter_topic)
            .key(command.saga_id.as_str())
            .payload(&value)
            .headers(headers(command).insert(Header {
                key: "reason",
                value: Some(reason),
            }));
        let producer = self.producer.lock().clone();
        if let Err((e, _)) = producer.send(copy, DEAD_LETTER_COPY_TIMEOUT).await {
            tracing::warn!(offset = command.offset, error = %e, "copying a dead letter to its topic failed; it stays in the log");
        }
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Hand what librdkafka still holds to the broker before the producer goes.
        let _ = self.producer.lock().flush(DROP_FLUSH);
    }
}

/// The relay's position given the commands still in flight and those parked: the
/// oldest one's place in the feed, or — none — past every record read (`read_to`).
fn position_of(window: &VecDeque<InFlight>, parked: &Parked, read_to: u64) -> u64 {
    let in_flight = window.front().map(|oldest| oldest.command.feed_offset);
    [in_flight, parked.oldest()]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(read_to)
}

/// Adds a command released from the parked ones to the window, which stays in feed
/// order (the position is read from its front).
fn insert_in_order(window: &mut VecDeque<InFlight>, slot: InFlight) {
    let at = window.partition_point(|s| s.command.feed_offset < slot.command.feed_offset);
    window.insert(at, slot);
}

/// The idempotent producer (`acks=all`), its queue bounded by the in-flight limit.
fn producer(config: &RelayConfig) -> Result<FutureProducer<KafkaContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "delivery.timeout.ms",
            config.delivery_timeout.as_millis().to_string(),
        )
        .set("linger.ms", config.linger.as_millis().to_string())
        .set("message.max.bytes", config.max_message_bytes.to_string())
        .set(
            "queue.buffering.max.messages",
            (config.max_in_flight * 2).max(16).to_string(),
        )
        .create_with_context(KafkaContext)?)
}

/// The headers docs/server.md#kafka lists, plus a W3C `traceparent` so one saga is one trace.
fn headers(command: &Command) -> OwnedHeaders {
    let traceparent = format!("00-{}-{:016x}-01", command.trace_id, command.offset + 1);
    [
        ("event_id", command.event_id.as_str()),
        ("saga_id", command.saga_id.as_str()),
        ("saga_type", command.saga_type.as_str()),
        ("step", command.step.as_str()),
        ("action", command.action.as_str()),
        ("traceparent", traceparent.as_str()),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value),
        })
    })
}

fn since_issue(command: &Command) -> Duration {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Duration::from_millis(now_ms.saturating_sub(command.at_ms))
}

/// Errors that are the record's own fault; everything else is the broker's (or the
/// network's) and is retried without bound.
fn classify(e: &KafkaError) -> Outcome {
    let refused = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::BadMessage
        )
    );
    // The broker does not take this producer's id or epoch (it forgot the id, or a
    // local epoch bump of librdkafka's is not the broker's): only a new producer, with
    // an id from the broker, goes on.
    let stale_producer = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
        )
    );
    if stale_producer {
        Outcome::Fatal(e.to_string())
    } else if refused {
        Outcome::Refused(e.to_string())
    } else {
        Outcome::Unreachable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_record_faults_are_refusals_and_a_stale_producer_is_replaced() {
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(matches!(classify(&too_large), Outcome::Refused(_)));
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(matches!(classify(&timed_out), Outcome::Unreachable(_)));
        let down = KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown);
        assert!(matches!(classify(&down), Outcome::Unreachable(_)));
        let fenced = KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced);
        assert!(matches!(classify(&fenced), Outcome::Fatal(_)));
    }
}
