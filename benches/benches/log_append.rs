//! Group-commit throughput: 200-byte records appended with fsync `always` from 1, 16 and
//! 256 concurrent appenders (tokio tasks, one append in flight each), against raw
//! sequential `write` + `fdatasync` of the same frames with plain `std::fs`, measured in
//! the same run so the ratio holds on whatever disk runs it.
//!
//! `cargo bench -p sagalog-benches --bench log_append`; throughput is in records/s
//! (elements/s). Two raw baselines bound the log from both sides:
//! - `raw_append_256`: 256 frames per write, one fdatasync each, file growing (what a
//!   naive WAL on plain std::fs gets with the same batch the 256 appenders form);
//! - `raw_1MiB`: 1 MiB writes with one fdatasync each (the disk's sequential bandwidth).

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sagalog_storage::{DataDir, FsyncPolicy, LogConfig};

const RECORD_BYTES: usize = 200;
const FRAME_BYTES: usize = RECORD_BYTES + 8;

fn append_with_appenders(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("log_append_200B_fsync_always");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for appenders in [1u64, 16, 256] {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let (log, _) = data
            .open_log(LogConfig {
                fsync: FsyncPolicy::Always,
                ..LogConfig::default()
            })
            .unwrap();
        group.bench_with_input(
            BenchmarkId::new("appenders", appenders),
            &appenders,
            |b, &appenders| {
                b.iter_custom(|iters| {
                    let per_task = iters.div_ceil(appenders);
                    runtime.block_on(async {
                        let started = Instant::now();
                        let tasks: Vec<_> = (0..appenders)
                            .map(|_| {
                                let log = log.clone();
                                tokio::spawn(async move {
                                    for _ in 0..per_task {
                                        log.append(vec![0x5a; RECORD_BYTES]).await.unwrap();
                                    }
                                })
                            })
                            .collect();
                        for task in tasks {
                            task.await.unwrap();
                        }
                        // Report per requested iteration, scaled for the rounding up.
                        started
                            .elapsed()
                            .mul_f64(iters as f64 / (per_task * appenders) as f64)
                    })
                })
            },
        );
        drop(log);
    }
    group.finish();
}

/// Writes `iters` frames with one `write_all` + `sync_data` per `frames_per_sync`.
fn raw_write(file: &mut File, iters: u64, frames_per_sync: usize) -> Duration {
    let chunk = vec![0x5au8; FRAME_BYTES * frames_per_sync];
    let started = Instant::now();
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(frames_per_sync);
        file.write_all(&chunk[..n * FRAME_BYTES]).unwrap();
        file.sync_data().unwrap();
        left -= n;
    }
    started.elapsed()
}

fn raw_baselines(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_append_200B_fsync_always");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for (name, frames_per_sync) in [
        ("raw_append_256", 256usize),
        ("raw_1MiB", (1 << 20) / FRAME_BYTES),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("raw")).unwrap();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| raw_write(&mut file, iters, frames_per_sync))
        });
    }
    group.finish();
}

criterion_group!(benches, append_with_appenders, raw_baselines);
criterion_main!(benches);
