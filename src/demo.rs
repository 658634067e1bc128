//! `serve --demo`: a customer that starts order sagas and the three participants of
//! the built-in `order` definition, in-process, so a new user sees sagas complete,
//! retry, compensate and need an operator within seconds.
//!
//! The participants are what a participant service would run: the client crate's
//! [`Participant`], one per step topic, reading `GET /api/v1/outbox` from this server and
//! replying over HTTP, with the reservation's and the charge's ids as their `data` (a
//! refund names the charge it undoes). They answer only the sagas the demo started (ids
//! `demo-…`): an `order` saga a user starts beside it (the README's tour) waits for its
//! own replies. Every few seconds a line sums up what the sagas did so far. Each saga's fate is a hash of its id, so it is the same on
//! every run:
//! - 10 % fail `charge_payment` on every attempt → `reserve_inventory` is compensated;
//! - 4 % fail `ship_order` for good → both earlier steps are compensated, last first;
//! - half of those (2 %) then fail to compensate `charge_payment` → `COMPENSATION_FAILED`,
//!   for an operator to retry or override;
//! - 15 % of first attempts fail and the retry succeeds; 5 % of replies take 1–3 s.

use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use sagalog_client::{Action, Command, Handled, Participant};
use sagalog_engine::throttle::Throttle;
use sagalog_engine::{Partitions, Shutdown, StartRequest, Status};
use serde_json::json;
use tokio::task::JoinHandle;

/// Sagas the demo customer starts per second.
const STARTS_PER_SECOND: u64 = 5;
/// Commands each participant handles at once.
const CONCURRENCY: usize = 64;
/// The topics of the built-in `order` definition, and the service on each.
const SERVICES: [(&str, &str); 3] = [
    ("inventory", "inventory.commands"),
    ("payment", "payment.commands"),
    ("shipping", "shipping.commands"),
];
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

/// Starts the demo beside the server listening on `server`.
pub fn spawn(partitions: Arc<Partitions>, server: SocketAddr, stopping: Shutdown) -> Demo {
    let mut tasks = vec![
        tokio::spawn(customer(partitions.clone(), stopping.clone())),
        tokio::spawn(summary(partitions, stopping.clone())),
    ];
    // A server on every address (0.0.0.0) is reached on loopback.
    let server = match server.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), server.port())
        }
        ip if ip.is_unspecified() => {
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), server.port())
        }
        _ => server,
    };
    let client = sagalog_client::Client::new(server);
    for (service, topic) in SERVICES {
        let participant = Participant::new(client.clone(), service, topic)
            .from_latest()
            .concurrency(CONCURRENCY);
        let mut stopping = stopping.clone();
        tasks.push(tokio::spawn(async move {
            let stop = async move { stopping.wait().await };
            if let Err(e) = participant.run(answer, stop).await {
                tracing::warn!(service, error = %e, "demo: a participant stopped");
            }
        }));
    }
    Demo { tasks }
}

/// Fair dice from a name: the same name always rolls the same number in 0..100.
fn roll(parts: &[&str]) -> u64 {
    let mut hasher = DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish() % 100
}

async fn customer(partitions: Arc<Partitions>, mut stopping: Shutdown) {
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
        if let Err(e) = partitions.start(request).await {
            // A full disk refuses every start: say so once a minute.
            if let Some(held_back) = failures.admit("start", std::time::Instant::now()) {
                tracing::warn!(error = %e, held_back, "demo: starting a saga failed");
            }
        }
    }
}

/// Logs what the sagas did so far, every [`SUMMARY_EVERY`], so the terminal shows sagas
/// completing and not only the failures.
async fn summary(partitions: Arc<Partitions>, mut stopping: Shutdown) {
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopping.wait() => return,
        }
        let counts = partitions.counters().status_counts;
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

/// What the participant for `command` does, and after how long: whether it succeeds.
fn decide(command: &Command) -> (bool, Duration) {
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
    let done = match command.action {
        Action::Execute => {
            let doomed = (step == "charge_payment" && fate < 10)
                || (step == "ship_order" && (10..14).contains(&fate));
            let flaky = command.attempt == 1 && roll(&[saga, step, "flaky"]) < 15;
            !(doomed || flaky)
        }
        Action::Compensate => !(step == "charge_payment" && (10..12).contains(&fate)),
    };
    (done, delay)
}

/// The demo participants' handler: the sagas the demo started get their fate's reply,
/// with the ids later steps and refunds use; others are left to whoever runs them.
async fn answer(command: Command) -> Handled {
    if !command.saga_id.starts_with(DEMO_PREFIX) {
        return Handled::Skip;
    }
    let (done, delay) = decide(&command);
    tokio::time::sleep(delay).await;
    let saga = &command.saga_id;
    match (command.action, done) {
        (Action::Execute, true) => Handled::Done(Some(match command.step.as_str() {
            "reserve_inventory" => json!({"reservation_id": format!("res-{saga}")}),
            "charge_payment" => json!({"charge_id": format!("ch-{saga}")}),
            _ => json!({"tracking": format!("tr-{saga}")}),
        })),
        (Action::Execute, false) => Handled::Failed("demo participant: declined".into()),
        // A refund names the charge it undoes (the compensate command's `result`).
        (Action::Compensate, true) => Handled::Done(Some(json!({"undid": command.result}))),
        (Action::Compensate, false) => {
            Handled::Failed("demo participant: refund service unreachable".into())
        }
    }
}
