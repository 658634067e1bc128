//! The engine in-process with fsync `always`:
//! - `order_sagas/256`: order sagas driven through the engine API by 256 concurrent
//!   tasks (start, then a success reply to each of the three steps): sagas/s, and the
//!   records/s it implies (8 records per saga);
//! - `replay`: opening a data directory whose log holds the records of 100,000 sagas
//!   with no snapshot (the indexes are caught up, so this is restore + fold): records/s.
//!
//! `cargo bench -p sagalog-benches --bench engine`. Memory per active saga is measured
//! by the `engine_memory` bench.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sagalog_benches::{engine_in_tempdir, start_order};
use sagalog_engine::{Engine, EngineConfig, Outcome, Reply};

const RECORDS_PER_SAGA: u64 = 8;

static NEXT: AtomicU64 = AtomicU64::new(0);

async fn run_saga(engine: &Engine) {
    let id = format!("b-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    start_order(engine, id.clone()).await;
    for step in ["reserve_inventory", "charge_payment", "ship_order"] {
        engine
            .reply(
                &id,
                Reply {
                    event_id: format!("{id}/{step}"),
                    step: step.into(),
                    outcome: Outcome::Succeeded,
                    attempt: 1,
                    data: String::new(),
                    reason: String::new(),
                },
            )
            .await
            .unwrap();
    }
}

async fn drive(engine: &Arc<Engine>, concurrency: u64, sagas: u64) -> Duration {
    let per_task = sagas.div_ceil(concurrency);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    run_saga(&engine).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started
        .elapsed()
        .mul_f64(sagas as f64 / (per_task * concurrency) as f64)
}

fn order_sagas(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), EngineConfig::default()).unwrap());
    let mut group = c.benchmark_group("engine_fsync_always");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let concurrency = 256u64;
    group.bench_with_input(
        BenchmarkId::new("order_sagas", concurrency),
        &concurrency,
        |b, &concurrency| {
            b.iter_custom(|sagas| runtime.block_on(drive(&engine, concurrency, sagas)))
        },
    );
    group.finish();
    println!(
        "records per saga: {RECORDS_PER_SAGA}; log records appended: {}",
        engine.stats().log_next_offset
    );
}

fn replay(c: &mut Criterion) {
    let (runtime, dir, config) = engine_in_tempdir();
    let records = {
        let engine = Arc::new(Engine::open(dir.path(), config.clone()).unwrap());
        runtime.block_on(async {
            drive(&engine, 256, 100_000).await;
            engine.wait_indexed().await.unwrap();
        });
        engine.stats().log_next_offset
    };
    let mut group = c.benchmark_group("engine_replay");
    group
        .throughput(Throughput::Elements(records))
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    // Timed: open up to serving. Closing (joining the background threads) is not.
    group.bench_function("open_without_snapshot", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let engine = Engine::open(dir.path(), config.clone()).unwrap();
                total += started.elapsed();
                assert_eq!(engine.stats().replayed_records, records);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, order_sagas, replay);
criterion_main!(benches);
