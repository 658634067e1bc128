//! `serve --demo`: a customer that starts order sagas and the three participants of
//! the built-in `order` definition, in-process, so a new user sees sagas complete,
//! retry, compensate and need an operator within seconds.
//!
//! The participants read the same feed as `GET /api/v1/outbox` (the engine's command
//! feed) and reply through the engine, as an HTTP participant would. They answer only
//! the sagas the demo started (ids `demo-…`): an `order` saga a user starts beside it
//! (the README's tour) waits for its own replies. Every few seconds a line sums up what
//! the sagas did so far. Each saga's fate is a hash of its id, so it is the same on
//! every run:
//! - 10 % fail `charge_payment` on every attempt → `reserve_inventory` is compensated;
//! - 4 % fail `ship_order` for good → both earlier steps are compensated, last first;
//! - half of those (2 %) then fail to compensate `charge_payment` → `COMPENSATION_FAILED`,
//!   for an operator to retry or override;
//! - 15 % of first attempts fail and the retry succeeds; 5 % of replies take 1–3 s.

use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use sagalog_engine::throttle::Throttle;
use sagalog_engine::{Action, Command, Engine, Outcome, Reply, Shutdown, StartRequest, Status};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Sagas the demo customer starts per second.
const STARTS_PER_SECOND: u64 = 5;
/// Replies being prepared at once; the participants wait for room beyond it.
const MAX_REPLIES_IN_FLIGHT: usize = 256;
/// Records one read of the tail takes.
const TAIL_BATCH: usize = 512;
/// Bytes of records one read of the tail takes at most.
const TAIL_BYTES: usize = 4 << 20;
/// How often the demo logs its summary line.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);
/// The id prefix of the sagas the demo starts, and the only ones its participants answer.
const DEMO_PREFIX: &str = "demo-";

pub struct Demo {
    tasks: Vec<JoinHandle<()>>,
}

impl Demo {
    pub async fn stop(self) {
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

pub fn spawn(engine: Arc<Engine>, stopping: Shutdown) -> Demo {
    let customer = tokio::spawn(customer(engine.clone(), stopping.clone()));
    let participants = tokio::spawn(participants(engine.clone(), stopping.clone()));
    let summary = tokio::spawn(summary(engine, stopping));
    Demo {
        tasks: vec![customer, participants, summary],
    }
}

/// Fair dice from a name: the same name always rolls the same number in 0..100.
fn roll(parts: &[&str]) -> u64 {
    let mut hasher = DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish() % 100
}

async fn customer(engine: Arc<Engine>, mut stopping: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / STARTS_PER_SECOND));
    // A different prefix on each run, so a restart over the same data directory starts
    // new sagas rather than repeating the last run's ids.
    let run = format!(
        "{:08x}",
        std::collections::hash_map::RandomState::new().hash_one(std::process::id()) as u32
    );
    let failures = Throttle::new(std::time::Duration::from_secs(60));
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopping.wait() => return,
        }
        let id = format!("{DEMO_PREFIX}{run}-{n}");
        let request = StartRequest {
            saga_type: "order".into(),
            saga_id: Some(id.clone()),
            payload: serde_json::json!({
                "order_id": id,
                "amount_cents": 1000 + (n * 37) % 9000,
                "items": 1 + n % 4,
            }),
            trace_id: None,
        };
        if let Err(e) = engine.start(request).await {
            // A full disk refuses every start: say so once a minute.
            if let Some(held_back) = failures.admit("start", std::time::Instant::now()) {
                tracing::warn!(error = %e, held_back, "demo: starting a saga failed");
            }
        }
    }
}

async fn participants(engine: Arc<Engine>, mut stopping: Shutdown) {
    let mut feed = engine.command_feed(engine.log_bounds().1);
    let room = Arc::new(Semaphore::new(MAX_REPLIES_IN_FLIGHT));
    loop {
        let batch = tokio::select! {
            batch = feed.next(TAIL_BATCH, TAIL_BYTES) => batch,
            () = stopping.wait() => return,
        };
        let commands = match batch {
            Ok(batch) => batch.commands,
            Err(e) => {
                tracing::warn!(error = %e, "demo: reading commands failed; participants stop");
                return;
            }
        };
        for command in commands
            .into_iter()
            .filter(|c| c.saga_id.starts_with(DEMO_PREFIX))
        {
            let Ok(permit) = room.clone().acquire_owned().await else {
                return;
            };
            let engine = engine.clone();
            tokio::spawn(async move {
                answer(&engine, command).await;
                drop(permit);
            });
        }
    }
}

/// Logs what the sagas did so far, every [`SUMMARY_EVERY`], so the terminal shows sagas
/// completing and not only the failures.
async fn summary(engine: Arc<Engine>, mut stopping: Shutdown) {
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopping.wait() => return,
        }
        let counts = engine.stats().counters.status_counts;
        let count = |status: Status| counts[status.index()];
        tracing::info!(
            completed = count(Status::Completed),
            compensated = count(Status::Compensated),
            compensating = count(Status::Failed),
            waiting_for_operator = count(Status::CompensationFailed),
            in_flight = count(Status::Started) + count(Status::InProgress),
            "demo: sagas so far"
        );
    }
}

/// What the participant for `command` replies, and after how long.
fn decide(command: &Command) -> (Outcome, Duration) {
    let saga = command.saga_id.as_str();
    let step = command.step.as_str();
    let attempt = command.attempt.to_string();
    let slow = roll(&[saga, step, &attempt, "slow"]) < 5;
    let delay = if slow {
        Duration::from_millis(1000 + roll(&[saga, step, "delay"]) * 20)
    } else {
        Duration::from_millis(20 + roll(&[saga, step, "delay"]))
    };
    let fate = roll(&[saga, "fate"]);
    let outcome = match command.action {
        Action::Execute => {
            let doomed = (step == "charge_payment" && fate < 10)
                || (step == "ship_order" && (10..14).contains(&fate));
            let flaky = command.attempt == 1 && roll(&[saga, step, "flaky"]) < 15;
            if doomed || flaky {
                Outcome::Failed
            } else {
                Outcome::Succeeded
            }
        }
        Action::Compensate => {
            let stuck = step == "charge_payment" && (10..12).contains(&fate);
            if stuck {
                Outcome::CompensationFailed
            } else {
                Outcome::Compensated
            }
        }
    };
    (outcome, delay)
}

async fn answer(engine: &Engine, command: Command) {
    let (outcome, delay) = decide(&command);
    tokio::time::sleep(delay).await;
    let reason = match outcome {
        Outcome::Failed => "demo participant: declined",
        Outcome::CompensationFailed => "demo participant: refund service unreachable",
        _ => "",
    };
    let reply = Reply {
        event_id: format!("demo-reply/{}", command.event_id),
        step: command.step.clone(),
        outcome,
        attempt: command.attempt,
        data: String::new(),
        reason: reason.into(),
    };
    if let Err(e) = engine.reply(&command.saga_id, reply).await {
        // A slow reply may arrive after the step timed out and moved on: the engine
        // rejects it, as it would a real participant's.
        tracing::debug!(saga_id = %command.saga_id, error = %e, "demo: reply not taken");
    }
}
