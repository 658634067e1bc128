//! Relay benchmark against a real Kafka-protocol broker (`tansu`, started here on a
//! free loopback port):
//!
//! 1. throughput: a log already holding `--backlog` commands is published from
//!    position 0; commands/s until the relay's position reaches the head;
//! 2. latency: order sagas started at `--rate` commands/s for `--seconds` while the
//!    relay runs; issue → broker acknowledgement p50/p99/max.
//!
//! ```sh
//! cargo run --release -p sagalog-benches --bin relay -- --backlog 200000 --rate 20000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use parking_lot::Mutex;
use sagalog_benches::start_order;
use sagalog_engine::{Engine, EngineConfig};
use sagalog_relay::{Relay, RelayConfig, RelayObserver};
use sagalog_testkit::process::Tansu;

#[derive(Parser, Debug)]
#[command(about = "Publish commands from the log to tansu and report throughput and latency")]
struct Args {
    /// Commands in the log before the relay starts
    #[arg(long, default_value_t = 200_000)]
    backlog: u64,
    /// Commands per second issued for the latency run
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Length of the latency run
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The producer's linger.ms
    #[arg(long, default_value_t = 2)]
    linger_ms: u64,
}

/// Issue → acknowledgement of each published command, in µs.
#[derive(Default)]
struct Latencies(Mutex<Vec<u32>>);

impl sagalog_relay::TopicObserver for Latencies {}

impl RelayObserver for Latencies {
    fn published(&self, append_to_ack: Duration) {
        let us = append_to_ack.as_micros().min(u128::from(u32::MAX)) as u32;
        self.0.lock().push(us);
    }
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let tansu = Tansu::start();
    runtime.block_on(run(&args, &tansu))
}

async fn run(args: &Args, tansu: &Tansu) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = EngineConfig {
        snapshot_every_records: 0,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::open(dir.path(), config).map_err(|e| e.to_string())?);

    // 1. Throughput from a backlog (one command per started saga).
    let writers: Vec<_> = (0..64)
        .map(|w| {
            let engine = engine.clone();
            let per_writer = args.backlog.div_ceil(64);
            tokio::spawn(async move {
                for n in 0..per_writer {
                    start_order(&engine, format!("backlog-{w}-{n}")).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.map_err(|e| e.to_string())?;
    }
    let head = engine.log().next_offset();
    let commands = head / 2;
    let latencies = Arc::new(Latencies::default());
    // Topics first, so that the timing is publishing alone.
    let config = RelayConfig::new(tansu.brokers());
    let topics = sagalog_relay::topics::needed(&engine, &config);
    sagalog_relay::topics::ensure(&config, &topics, sagalog_relay::topics::CREATE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let config = RelayConfig {
        create_topics: false,
        linger: Duration::from_millis(args.linger_ms),
        ..config
    };
    let watch =
        sagalog_relay::TopicWatch::start(vec![engine.clone()], config.clone(), latencies.clone());
    let relay = Relay::start(engine.clone(), config, watch.topics(), latencies.clone())
        .await
        .map_err(|e| e.to_string())?;
    // The relay checks the topics (they exist) before it publishes: not part of it.
    watch.topics().first_check().await;
    let started = Instant::now();
    while relay.position() < head {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "throughput: {commands} commands from the log in {secs:.2} s: {:.0} commands/s",
        commands as f64 / secs
    );

    // 2. Latency at a steady rate.
    latencies.0.lock().clear();
    let total = args.rate * args.seconds;
    // Issued every millisecond: a steady rate, not bursts that queue in the engine.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let per_tick = (args.rate / 1000).max(1);
    let mut issued = 0;
    let mut tasks = tokio::task::JoinSet::new();
    while issued < total {
        tick.tick().await;
        for _ in 0..per_tick {
            let engine = engine.clone();
            let n = issued;
            tasks.spawn(async move { start_order(&engine, format!("steady-{n}")).await });
            issued += 1;
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let head = engine.log().next_offset();
    while relay.position() < head {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.stop().await.map_err(|e| e.to_string())?;
    let mut samples = std::mem::take(&mut *latencies.0.lock());
    samples.sort_unstable();
    let pct = |p: f64| sagalog_benches::quantile_ms(&samples, p);
    println!(
        "latency at {} commands/s for {} s: issue → ack p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} commands)",
        args.rate,
        args.seconds,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        samples.len()
    );
    Ok(())
}
