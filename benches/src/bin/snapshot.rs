//! What a snapshot costs the writes that go on beside it: fills an engine with
//! `--active` sagas waiting on their first step, then starts sagas at `--rate` per
//! second (open loop) and takes a snapshot in the middle; prints start latency
//! percentiles before and during the snapshot, the snapshot's duration, and the
//! process's resident memory before and at its peak during the snapshot.
//!
//! ```sh
//! cargo build --release -p sagalog-benches --bin snapshot
//! target/release/snapshot --active 1000000
//! target/release/snapshot --active 3000000
//! ```
//!
//! It uses only `Engine::open`, `register_definition`, `start` and `snapshot`, so the
//! same source builds against an older engine for a side-by-side run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use parking_lot::Mutex;
use sagalog_benches::{engine_in_tempdir, quantile_ms};
use sagalog_engine::{Definition, Engine, EngineConfig, StartRequest};

#[derive(Parser, Debug)]
#[command(about = "Start latency during a snapshot, with many active sagas")]
struct Args {
    /// Active sagas in memory when the snapshot is taken
    #[arg(long, default_value_t = 1_000_000)]
    active: u64,
    /// Starts per second while measuring
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of starts measured before the snapshot (and again after it)
    #[arg(long, default_value_t = 3)]
    settle_s: u64,
}

/// One step with hour-long timeouts: nothing fires while the benchmark runs.
const DEFINITION: &str = r#"{"name": "bench", "version": 1, "steps": [
    {"name": "only", "topic": "bench.commands", "compensable": false,
     "timeout_ms": 3600000, "max_attempts": 1, "backoff_ms": 1000}]}"#;

fn start_request(id: String) -> StartRequest {
    StartRequest {
        saga_type: "bench".into(),
        saga_id: Some(id),
        payload: serde_json::json!({"order_id": "ORD-1", "amount_cents": 1234}),
        trace_id: None,
    }
}

/// Resident set size of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let args = Args::parse();
    let (runtime, dir, config) = engine_in_tempdir();
    let config = EngineConfig {
        max_unindexed: 10_000_000,
        ..config
    };
    let engine = Arc::new(Engine::open(dir.path(), config).unwrap());
    runtime.block_on(async {
        engine
            .register_definition(Definition::from_json(DEFINITION).unwrap())
            .await
            .unwrap();
    });
    let filled = Instant::now();
    runtime.block_on(fill(&engine, args.active));
    println!(
        "filled {} active sagas in {:.1} s; rss {} MiB",
        args.active,
        filled.elapsed().as_secs_f64(),
        rss_bytes() >> 20
    );
    runtime.block_on(measure(engine, &args));
}

async fn fill(engine: &Arc<Engine>, active: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..256)
        .map(|_| {
            let (engine, next) = (engine.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= active {
                        return;
                    }
                    engine
                        .start(start_request(format!("fill-{n}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// A start's latency in µs with when it was issued, relative to the run's start.
type Sample = (Duration, u32);

async fn measure(engine: Arc<Engine>, args: &Args) {
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let every = Duration::from_secs_f64(1.0 / args.rate as f64);
    let load = {
        let (engine, samples, stop) = (engine.clone(), samples.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0u64;
            let mut in_flight = tokio::task::JoinSet::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let (engine, samples) = (engine.clone(), samples.clone());
                in_flight.spawn(async move {
                    let issued = Instant::now();
                    engine.start(start_request(format!("m-{n}"))).await.unwrap();
                    let took = issued.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    samples.lock().push((issued - began, took));
                });
                while in_flight.try_join_next().is_some() {}
            }
            while in_flight.join_next().await.is_some() {}
        })
    };
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, sampling, stop) = (peak.clone(), sampling.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if sampling.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let rss_before = rss_bytes();
    sampling.store(true, Ordering::Relaxed);
    let snapshot_began = began.elapsed();
    let info = engine.snapshot().await.unwrap();
    let snapshot_ended = began.elapsed();
    sampling.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    sampler.join().unwrap();

    let samples = samples.lock().clone();
    let window = |from: Duration, to: Duration| {
        let mut us: Vec<u32> = samples
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, us)| *us)
            .collect();
        us.sort_unstable();
        us
    };
    let report = |name: &str, us: &[u32]| {
        println!(
            "{name:>16}: {:>6} starts  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
            us.len(),
            quantile_ms(us, 0.5),
            quantile_ms(us, 0.99),
            quantile_ms(us, 1.0)
        );
    };
    println!(
        "snapshot at offset {} ({} MiB) took {:.2} s",
        info.offset,
        info.bytes >> 20,
        (snapshot_ended - snapshot_began).as_secs_f64()
    );
    report("before", &window(Duration::ZERO, snapshot_began));
    report("during snapshot", &window(snapshot_began, snapshot_ended));
    report(
        "after",
        &window(snapshot_ended, snapshot_ended + Duration::from_secs(3600)),
    );
    let slow: Vec<String> = samples
        .iter()
        .filter(|(at, us)| *at >= snapshot_began && *at < snapshot_ended && *us > 20_000)
        .map(|(at, us)| {
            format!(
                "{:.2}s:{}ms",
                (*at - snapshot_began).as_secs_f64(),
                us / 1000
            )
        })
        .collect();
    if !slow.is_empty() {
        println!(
            "starts over 20 ms, by time into the snapshot: {}",
            slow.join(" ")
        );
    }
    println!(
        "rss before the snapshot {} MiB, peak during it {} MiB",
        rss_before >> 20,
        peak.load(Ordering::Relaxed).max(rss_before) >> 20
    );
}
