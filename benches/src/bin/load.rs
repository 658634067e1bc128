//! The load generator: drives order sagas through a sagalog server over HTTP and plays
//! their participants from the outbox, then prints sagas/s, requests/s and request
//! latency percentiles.
//!
//! ```sh
//! cargo build --release --bin sagalog && cargo build --release -p sagalog-benches --bin load
//! target/release/load --sagas 50000 --connections 64            # starts its own server
//! target/release/load --target 127.0.0.1:8080 --rate 5000        # an existing server
//! ```
//!
//! Without `--target` it starts `sagalog serve` (the binary next to this one, or
//! `--sagalog PATH`) on a free loopback port with a temporary data directory and the
//! default fsync `always`. Workers on `--connections` keep-alive connections start
//! sagas (at most `--in-flight` unfinished at once, paced by `--rate` when given) and
//! send the participants' replies; the outbox is long-polled for the commands through
//! the client crate (`sagalog-client`), by one reader of every topic or, with
//! `--split-topics`, one reader per participant service reading only its own topic.
//! `--fail-percent` of the sagas fail `charge_payment` on every attempt and are
//! compensated, the rest complete. `--data-bytes` puts that much `data` in each success
//! reply, which every later command of the saga carries back as `results`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hyper::{Method, StatusCode};
use sagalog_client::{After, Command, OutboxQuery};
use sagalog_testkit::client::Client;
use sagalog_testkit::process::Server;
use serde::Deserialize;
use tokio::sync::{Notify, Semaphore};

#[derive(Parser, Debug)]
#[command(about = "Drive order sagas through a sagalog server and report throughput and latency")]
struct Args {
    /// A running server (host:port); without it, one is started
    #[arg(long)]
    target: Option<std::net::SocketAddr>,
    /// The sagalog binary to start [default: the one next to this binary]
    #[arg(long)]
    sagalog: Option<PathBuf>,
    /// Sagas to drive
    #[arg(long, default_value_t = 20_000)]
    sagas: u64,
    /// Keep-alive connections for starts and replies (plus one for the outbox)
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Most sagas started and not yet finished
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Start at most this many sagas per second (open loop); unlimited when absent
    #[arg(long)]
    rate: Option<u64>,
    /// Share of sagas, in percent, that fail charge_payment for good and compensate
    #[arg(long, default_value_t = 10)]
    fail_percent: u64,
    /// Give up (and report what finished) after this many seconds
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Bytes of `data` in each success reply (later commands carry it as `results`)
    #[arg(long, default_value_t = 0)]
    data_bytes: usize,
    /// Read the outbox as the three participant services would: one reader per step
    /// topic (`topic=`), instead of one reader of every topic
    #[arg(long)]
    split_topics: bool,
    /// Start only sagas of this pod's partitions (with --nodes and --partitions), so
    /// that no start is forwarded to another pod
    #[arg(long, requires_all = ["nodes", "partitions"])]
    node: Option<u32>,
    /// The pods of the deployment (see --node)
    #[arg(long, requires = "node")]
    nodes: Option<u32>,
    /// The partitions of the deployment (see --node)
    #[arg(long, requires = "node")]
    partitions: Option<u32>,
}

/// The step topics of the built-in `order` definition.
const TOPICS: [&str; 3] = [
    "inventory.commands",
    "payment.commands",
    "shipping.commands",
];

/// Counts shared by the workers.
struct Tally {
    sagas: u64,
    requests: AtomicU64,
    errors: AtomicU64,
    completed: AtomicU64,
    compensated: AtomicU64,
    /// Notified when the last saga finishes.
    all_done: Notify,
}

impl Tally {
    fn finished(&self, compensated: bool) {
        let counter = if compensated {
            &self.compensated
        } else {
            &self.completed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let done =
            self.completed.load(Ordering::Relaxed) + self.compensated.load(Ordering::Relaxed);
        if done == self.sagas {
            self.all_done.notify_one();
        }
    }
}

/// The one field of a reply's answer the participants look at.
#[derive(Deserialize)]
struct ReplyAnswer<'a> {
    status: &'a str,
}

/// What the workers share.
struct Shared {
    run: String,
    fail_percent: u64,
    /// The `data` of each success reply, as JSON (empty: none).
    data: String,
    tally: Tally,
    /// One permit per saga that may be unfinished; a finished saga gives its back.
    room: Arc<Semaphore>,
    starts: flume::Receiver<u64>,
    commands: flume::Receiver<Command>,
    /// `--node`, `--nodes`, `--partitions`: start only that pod's sagas.
    owner: Option<sagalog_engine::Placement>,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let server = match args.target {
        Some(_) => None,
        None => {
            let binary = match &args.sagalog {
                Some(path) => path.clone(),
                None => std::env::current_exe()
                    .map_err(|e| e.to_string())?
                    .with_file_name("sagalog"),
            };
            if !binary.exists() {
                return Err(format!(
                    "{} not found: build it (cargo build --release --bin sagalog) or pass --sagalog",
                    binary.display()
                ));
            }
            Some(Server::start(&binary, &dir.path().join("data"), &[])?)
        }
    };
    let addr = match (&server, args.target) {
        (Some(server), _) => server.addr,
        (None, Some(target)) => target,
        (None, None) => unreachable!("a server is started when no target is given"),
    };
    println!(
        "driving {} order sagas against {addr}: {} connections, at most {} in flight, rate {}, {}% failing at charge_payment, {} bytes of data per step, {}",
        args.sagas,
        args.connections,
        args.in_flight,
        args.rate.map_or("unlimited".into(), |r| format!("{r}/s")),
        args.fail_percent,
        args.data_bytes,
        if args.split_topics { "one outbox reader per topic" } else { "one outbox reader" }
    );
    let report = runtime.block_on(drive(addr, &args))?;
    println!("{report}");
    if let Some(server) = server {
        let status = server.terminate()?;
        if !status.success() {
            return Err(format!("the server exited with {status}"));
        }
    }
    Ok(())
}

async fn drive(addr: std::net::SocketAddr, args: &Args) -> Result<String, String> {
    let mut control = Client::connect(addr).await.map_err(|e| e.to_string())?;
    let head = outbox_end(&mut control).await?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // Every command of an unfinished saga may wait here: bounded by the in-flight limit.
    let (commands_tx, commands) = flume::bounded(args.in_flight.max(1) * 4);
    let (starts_tx, starts) = flume::bounded(args.connections.max(1));
    let shared = Arc::new(Shared {
        // The process id too: generators started at once against one deployment.
        run: format!("load-{stamp}-{}", std::process::id()),
        owner: match (args.node, args.nodes, args.partitions) {
            (Some(node), Some(nodes), Some(partitions)) => Some(
                sagalog_engine::Placement::new(partitions, nodes, node)
                    .map_err(|e| format!("--node, --nodes, --partitions: {e}"))?,
            ),
            _ => None,
        },
        fail_percent: args.fail_percent,
        data: match args.data_bytes {
            0 => String::new(),
            // `{"pad":"…"}` is 10 bytes around the padding.
            n => format!(r#"{{"pad":"{}"}}"#, "x".repeat(n.saturating_sub(10))),
        },
        tally: Tally {
            sagas: args.sagas,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            compensated: AtomicU64::new(0),
            all_done: Notify::new(),
        },
        room: Arc::new(Semaphore::new(args.in_flight.max(1))),
        starts,
        commands,
    });
    let mut workers = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        let client = Client::connect(addr).await.map_err(|e| e.to_string())?;
        workers.push(tokio::spawn(worker(client, shared.clone())));
    }
    let started = Instant::now();
    let readers: Vec<Vec<String>> = if args.split_topics {
        TOPICS.iter().map(|t| vec![t.to_string()]).collect()
    } else {
        vec![Vec::new()]
    };
    let pollers: Vec<_> = readers
        .into_iter()
        .map(|topics| {
            let client = sagalog_client::Client::new(addr);
            let (run, commands) = (shared.run.clone(), commands_tx.clone());
            tokio::spawn(poll_outbox(client, topics, head.clone(), run, commands))
        })
        .collect();
    drop(commands_tx);
    let feeder = tokio::spawn(feed(starts_tx, shared.room.clone(), args.sagas, args.rate));
    let limit = Duration::from_secs(args.timeout_s);
    let timed_out = args.sagas > 0
        && tokio::time::timeout(limit, shared.tally.all_done.notified())
            .await
            .is_err();
    let elapsed = started.elapsed();
    for poller in &pollers {
        poller.abort();
    }
    feeder.abort();
    for poller in pollers {
        let _ = poller.await;
    }
    let _ = feeder.await;
    // The channels are closed now: each worker ends and hands back its latencies.
    let mut latencies_us = Vec::new();
    for worker in workers {
        latencies_us.append(&mut worker.await.map_err(|e| e.to_string())?);
    }
    let report = summary(&shared.tally, elapsed, &mut latencies_us);
    if timed_out {
        return Err(format!(
            "not every saga finished within {limit:?}:\n{report}"
        ));
    }
    Ok(report)
}

/// Where the outbox ends now (its `next_after` from `latest`), so that it is read from
/// there on: an offset, or a cursor over every partition of a partitioned server.
async fn outbox_end(client: &mut Client) -> Result<After, String> {
    let page = client
        .get("/api/v1/outbox?after=latest&limit=1")
        .await
        .map_err(|e| e.to_string())?;
    let page = page.json();
    Ok(match &page["next_after"] {
        serde_json::Value::Number(n) => n.as_u64().map_or(After::Start, After::Offset),
        serde_json::Value::String(cursor) => After::Cursor(cursor.clone()),
        _ => After::Start,
    })
}

/// Hands out saga numbers, each once there is room for another unfinished saga.
async fn feed(starts: flume::Sender<u64>, room: Arc<Semaphore>, sagas: u64, rate: Option<u64>) {
    let mut pace =
        rate.map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r.max(1) as f64)));
    for n in 0..sagas {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        let Ok(permit) = room.acquire().await else {
            return;
        };
        permit.forget(); // given back by the worker that sees the saga finish
        if starts.send_async(n).await.is_err() {
            return;
        }
    }
}

/// Long-polls the outbox (`topics`, or every topic) from `head` and queues this run's
/// commands for the workers.
async fn poll_outbox(
    client: sagalog_client::Client,
    topics: Vec<String>,
    head: After,
    run: String,
    commands: flume::Sender<Command>,
) -> Result<(), String> {
    let mut after = head;
    loop {
        let query = OutboxQuery {
            topics: topics.clone(),
            after: after.clone(),
            limit: Some(1000),
            wait_ms: 1000,
            share: None,
        };
        let page = client
            .outbox(&query)
            .await
            .map_err(|e| format!("outbox: {e}"))?;
        if let Some(next) = page.next_after {
            after = After::from(next);
        }
        for command in page.items {
            if command.saga_id.starts_with(&run) && commands.send_async(command).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Sends starts and replies on one connection until the channels close; returns the
/// latency of each request in µs.
async fn worker(mut client: Client, shared: Arc<Shared>) -> Vec<u32> {
    let mut latencies = Vec::new();
    let mut starting = true;
    loop {
        let job = tokio::select! {
            biased;
            command = shared.commands.recv_async() => match command {
                Ok(command) => Ok(command),
                Err(_) => break,
            },
            n = shared.starts.recv_async(), if starting => match n {
                Ok(n) => Err(n),
                Err(_) => {
                    starting = false;
                    continue;
                }
            },
        };
        let (path, body) = match &job {
            Ok(command) => reply_to(command, &shared),
            Err(n) => (
                "/api/v1/sagas".to_string(),
                format!(
                    r#"{{"type":"order","saga_id":"{}","payload":{{"order":{n},"amount_cents":{}}}}}"#,
                    saga_id(&shared, *n),
                    1000 + n % 9000
                ),
            ),
        };
        let sent = Instant::now();
        let answer = client
            .send(Method::POST, &path, &[], Some(body.as_bytes()))
            .await;
        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        shared.tally.requests.fetch_add(1, Ordering::Relaxed);
        let expected = if job.is_ok() {
            StatusCode::ACCEPTED
        } else {
            StatusCode::CREATED
        };
        match answer {
            Ok(answer) if answer.status == expected => {
                if job.is_ok() {
                    let status = serde_json::from_slice::<ReplyAnswer>(&answer.body)
                        .map_or("", |a| a.status);
                    if matches!(status, "COMPLETED" | "COMPENSATED") {
                        shared.room.add_permits(1);
                        shared.tally.finished(status == "COMPENSATED");
                    }
                }
            }
            Ok(answer) => {
                shared.tally.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("{path}: {} {}", answer.status, answer.text());
            }
            Err(e) => {
                shared.tally.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("{path}: {e}");
                return latencies;
            }
        }
    }
    latencies
}

/// The participant's reply to `command`: `charge_payment` fails for the doomed share of
/// sagas (every attempt), compensations succeed, everything else succeeds.
/// Saga `n`'s id: `RUN-n`, or with `--node`, `RUN-kK-n` with the first `K` that puts
/// it in one of that pod's partitions (the number stays last: replies read it).
fn saga_id(shared: &Shared, n: u64) -> String {
    let Some(placement) = shared.owner else {
        return format!("{}-{n}", shared.run);
    };
    (0u32..)
        .map(|k| format!("{}-k{k}-{n}", shared.run))
        .find(|id| placement.holds(placement.partition_of(id)))
        .expect("some id lands in the pod's partitions")
}

fn reply_to(command: &Command, shared: &Shared) -> (String, String) {
    let n: u64 = command
        .saga_id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let doomed = n % 100 < shared.fail_percent;
    let outcome = match (command.action, command.step.as_str()) {
        (sagalog_client::Action::Compensate, _) => "compensated",
        (_, "charge_payment") if doomed => "failed",
        _ => "succeeded",
    };
    let extra = match outcome {
        "failed" => r#","reason":"card declined""#.to_string(),
        "succeeded" if !shared.data.is_empty() => format!(r#","data":{}"#, shared.data),
        _ => String::new(),
    };
    (
        format!("/api/v1/sagas/{}/events", command.saga_id),
        format!(
            r#"{{"event_id":"{}/reply","step":"{}","outcome":"{outcome}","attempt":{}{extra}}}"#,
            command.event_id, command.step, command.attempt
        ),
    )
}

fn summary(tally: &Tally, elapsed: Duration, latencies_us: &mut [u32]) -> String {
    latencies_us.sort_unstable();
    let pct = |p: f64| sagalog_benches::quantile_ms(latencies_us, p);
    let secs = elapsed.as_secs_f64();
    let requests = tally.requests.load(Ordering::Relaxed);
    format!(
        "{} sagas in {secs:.2} s: {:.0} sagas/s, {:.0} requests/s; completed {}, compensated {}, errors {}\n\
         request latency ms: p50 {:.2}, p99 {:.2}, max {:.2} ({} requests)",
        tally.sagas,
        tally.sagas as f64 / secs,
        requests as f64 / secs,
        tally.completed.load(Ordering::Relaxed),
        tally.compensated.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        pct(0.50),
        pct(0.99),
        pct(1.0),
        latencies_us.len(),
    )
}
