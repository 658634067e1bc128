//! The log's contract seen from its users: offsets, round trips across rolls and
//! reopen, concurrent appenders, tail subscriptions, policies, limits and retention.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{open, payload, runtime, segment_files, small_config};
use sagalog_storage::{FsyncPolicy, LogConfig, StorageError};

#[test]
fn records_round_trip_across_segment_rolls_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    {
        let (_data, log, report) = open(dir.path(), small_config());
        assert_eq!(
            (report.start_offset, report.next_offset, report.cuts.len()),
            (0, 0, 0)
        );
        rt.block_on(async {
            for id in 0..500u64 {
                assert_eq!(
                    log.append(payload(id)).await.unwrap(),
                    id,
                    "offsets are dense from 0"
                );
            }
        });
        for id in 0..500u64 {
            assert_eq!(
                log.read(id).unwrap(),
                payload(id),
                "record {id} before reopen"
            );
        }
    }
    let segments = segment_files(dir.path());
    assert!(
        segments.len() > 10,
        "4 KiB segments must have rolled, found {}",
        segments.len()
    );
    let (_data, log, report) = open(dir.path(), small_config());
    assert_eq!(report.next_offset, 500);
    assert!(
        report.cuts.is_empty(),
        "a clean close leaves nothing to cut: {:?}",
        report.cuts
    );
    let all: Vec<_> = log.iter_from(0).map(|r| r.unwrap()).collect();
    assert_eq!(all.len(), 500);
    for (id, record) in all.iter().enumerate() {
        assert_eq!(
            (record.offset, &record.payload),
            (id as u64, &payload(id as u64))
        );
    }
    let next = rt.block_on(log.append(payload(500))).unwrap();
    assert_eq!(next, 500, "appends continue after the reopened head");
}

#[test]
fn segment_files_are_named_by_their_20_digit_base_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (_data, log, _) = open(dir.path(), small_config());
    runtime().block_on(async {
        for id in 0..100u64 {
            log.append(payload(id)).await.unwrap();
        }
    });
    let names: Vec<String> = segment_files(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names[0], "00000000000000000000.log");
    for name in &names {
        let base: u64 = name.strip_suffix(".log").unwrap().parse().unwrap();
        assert_eq!(name.len(), 24, "{name}");
        assert_eq!(
            payload(base),
            log.read(base).unwrap(),
            "segment {name} starts at its base offset"
        );
    }
}

#[test]
fn sixty_four_concurrent_appenders_get_distinct_dense_offsets_that_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_data, log, _) = open(
        dir.path(),
        LogConfig {
            segment_bytes: 64 * 1024,
            ..LogConfig::default()
        },
    );
    let per_task = 200u64;
    let acked = runtime().block_on(async {
        let tasks: Vec<_> = (0..64u64)
            .map(|task| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 0..per_task {
                        let id = task * per_task + i;
                        acked.push((log.append(payload(id)).await.unwrap(), id));
                    }
                    acked
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    let offsets: HashSet<u64> = acked.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets.len(),
        acked.len(),
        "every append got its own offset"
    );
    assert_eq!(offsets, (0..64 * per_task).collect(), "offsets are dense");
    for (offset, id) in &acked {
        assert_eq!(log.read(*offset).unwrap(), payload(*id), "offset {offset}");
    }
}

#[test]
fn a_batch_append_gets_one_contiguous_run_of_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (_data, log, _) = open(dir.path(), small_config());
    let rt = runtime();
    rt.block_on(log.append(payload(0))).unwrap();
    let range = rt
        .block_on(log.append_batch((1..=10).map(payload).collect()))
        .unwrap();
    assert_eq!(range, 1..11);
    let blocking = log
        .append_batch_blocking(vec![payload(11), payload(12)])
        .unwrap();
    assert_eq!(blocking, 11..13);
    let batch = log.read_batch(0, 100, usize::MAX).unwrap();
    assert!(
        !batch.is_empty()
            && batch
                .iter()
                .enumerate()
                .all(|(i, r)| r.payload == payload(i as u64))
    );
}

#[test]
fn read_batch_honours_its_record_and_byte_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (_data, log, _) = open(
        dir.path(),
        LogConfig {
            segment_bytes: 1 << 20,
            ..LogConfig::default()
        },
    );
    log.append_batch_blocking((0..100).map(|_| vec![7u8; 100]).collect())
        .unwrap();
    assert_eq!(log.read_batch(10, 5, usize::MAX).unwrap().len(), 5);
    assert_eq!(
        log.read_batch(10, 100, 350).unwrap().len(),
        3,
        "3 x 100 bytes fit in 350"
    );
    assert_eq!(
        log.read_batch(10, 100, 1).unwrap().len(),
        1,
        "at least one record even over budget"
    );
    assert!(
        log.read_batch(100, 10, usize::MAX).unwrap().is_empty(),
        "nothing at the head"
    );
    assert!(matches!(
        log.read(100),
        Err(StorageError::OffsetOutOfRange {
            offset: 100,
            start: 0,
            next: 100
        })
    ));
}

#[test]
fn bad_appends_get_a_clear_error_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_record_bytes: 1000,
        max_batch_records: 8,
        max_batch_bytes: 4096,
        ..small_config()
    };
    let (_data, log, _) = open(dir.path(), config);
    assert!(matches!(
        log.append_batch_blocking(vec![vec![]]),
        Err(StorageError::EmptyRecord)
    ));
    assert!(matches!(
        log.append_batch_blocking(vec![vec![1; 1001]]),
        Err(StorageError::RecordTooLarge {
            bytes: 1001,
            max: 1000
        })
    ));
    let err = log.append_batch_blocking(vec![vec![1; 10]; 9]).unwrap_err();
    assert!(
        matches!(err, StorageError::AppendTooLarge { records: 9, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("max_batch_records 8"), "{err}");
    assert!(matches!(
        log.append_batch_blocking(vec![]),
        Err(StorageError::AppendTooLarge { records: 0, .. })
    ));
    assert_eq!(
        log.next_offset(),
        0,
        "refused appends leave the log untouched"
    );
    assert_eq!(
        log.append_batch_blocking(vec![vec![1; 1000]]).unwrap(),
        0..1
    );
}

#[test]
fn invalid_configuration_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let data = sagalog_storage::DataDir::open(dir.path()).unwrap();
    for (config, field) in [
        (
            LogConfig {
                segment_bytes: 100,
                ..LogConfig::default()
            },
            "segment_bytes",
        ),
        (
            LogConfig {
                max_record_bytes: 0,
                ..LogConfig::default()
            },
            "max_record_bytes",
        ),
        (
            LogConfig {
                max_batch_bytes: 10,
                ..LogConfig::default()
            },
            "max_batch_bytes",
        ),
        (
            LogConfig {
                queue_depth: 0,
                ..LogConfig::default()
            },
            "queue_depth",
        ),
    ] {
        let err = data.open_log(config).err().expect("refused");
        assert!(err.to_string().contains(field), "{err} should name {field}");
    }
    assert!("interval_ms=0".parse::<FsyncPolicy>().is_err());
    assert_eq!(
        "interval_ms=5".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::IntervalMs(5)
    );
    assert_eq!(FsyncPolicy::IntervalMs(5).to_string(), "interval_ms=5");
}

#[test]
fn a_tail_subscriber_is_woken_by_each_commit_and_sees_every_record_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_data, log, _) = open(dir.path(), small_config());
    let rt = runtime();
    rt.block_on(async {
        log.append(payload(0)).await.unwrap();
        let mut tail = log.subscribe(0);
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < 300 {
                for record in tail.next_batch(64, 1 << 20).await.unwrap() {
                    seen.push(record);
                }
            }
            (seen, tail.position())
        });
        for id in 1..300u64 {
            log.append(payload(id)).await.unwrap();
            if id % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let (seen, position) = tokio::time::timeout(Duration::from_secs(20), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(position, 300);
        for (i, record) in seen.iter().enumerate() {
            assert_eq!(
                (record.offset, &record.payload),
                (i as u64, &payload(i as u64))
            );
        }
    });
}

#[test]
fn a_waiting_tail_wakes_without_polling_and_ends_when_the_log_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log, _) = open(dir.path(), small_config());
    let rt = runtime();
    rt.block_on(async {
        let mut tail = log.subscribe(0);
        let waiting = tokio::spawn(async move {
            let first = tail.next_batch(10, 1 << 20).await;
            let after_close = tail.next_batch(10, 1 << 20).await;
            (first, after_close)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "nothing to read yet: the tail must wait"
        );
        log.append(payload(1)).await.unwrap();
        drop(log);
        drop(data);
        let (first, after_close) = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.unwrap()[0].payload, payload(1));
        assert!(
            matches!(after_close, Err(StorageError::Closed)),
            "{after_close:?}"
        );
    });
}

#[test]
fn interval_and_never_policies_acknowledge_and_read_back() {
    for policy in [FsyncPolicy::IntervalMs(5), FsyncPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_data, log, _) = open(
                dir.path(),
                LogConfig {
                    fsync: policy,
                    ..small_config()
                },
            );
            runtime().block_on(async {
                for id in 0..50u64 {
                    log.append(payload(id)).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                log.sync().await.unwrap();
            });
        }
        let (_data, log, _) = open(dir.path(), small_config());
        assert_eq!(log.next_offset(), 50, "{policy}");
        assert_eq!(log.read(49).unwrap(), payload(49), "{policy}");
    }
}

#[test]
fn retention_removes_only_whole_segments_below_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (_data, log, _) = open(dir.path(), small_config());
    log.append_batch_blocking((0..40).map(payload).collect())
        .unwrap();
    for id in 40..400u64 {
        log.append_batch_blocking(vec![payload(id)]).unwrap();
    }
    let before = log.stats();
    let keep_from = 250;
    let report = log.remove_segments_below(keep_from).unwrap();
    assert!(report.removed_segments > 0);
    let after = log.stats();
    assert_eq!(after.segments, before.segments - report.removed_segments);
    assert_eq!(after.bytes, before.bytes - report.removed_bytes);
    assert!(
        after.start_offset <= keep_from && after.start_offset > 0,
        "{after:?}"
    );
    for offset in keep_from..400 {
        assert_eq!(
            log.read(offset).unwrap(),
            payload(offset),
            "offset {offset} at or above the given one is kept"
        );
    }
    assert!(matches!(
        log.read(0),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    let everything = log.remove_segments_below(u64::MAX).unwrap();
    assert_eq!(
        log.stats().segments,
        1,
        "the active segment is never removed ({everything:?})"
    );
    assert_eq!(log.read(399).unwrap(), payload(399));
    drop(log);
    drop(_data);
    let (_data, log, _) = open(dir.path(), small_config());
    assert_eq!(
        (log.next_offset(), log.read(399).unwrap()),
        (400, payload(399)),
        "reopens after retention"
    );
}

#[test]
fn stats_count_segments_bytes_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let (_data, log, _) = open(dir.path(), small_config());
    let empty = log.stats();
    assert_eq!(
        (
            empty.start_offset,
            empty.next_offset,
            empty.segments,
            empty.tail_truncations
        ),
        (0, 0, 1, 0)
    );
    log.append_batch_blocking(vec![vec![1; 100]; 5]).unwrap();
    let stats = log.stats();
    assert_eq!(stats.next_offset, 5);
    assert_eq!(
        stats.bytes,
        empty.bytes + 5 * 108,
        "five 100-byte records with 8-byte frames"
    );
}

#[test]
fn an_observer_sees_batch_writes_and_fsyncs() {
    #[derive(Default)]
    struct Counts(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    );
    impl sagalog_storage::LogObserver for Counts {
        fn batch_written(&self, records: usize, _: usize, _: Duration) {
            self.0
                .fetch_add(records, std::sync::atomic::Ordering::Relaxed);
        }
        fn synced(&self, _: Duration) {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let counts = Arc::new(Counts::default());
    let dir = tempfile::tempdir().unwrap();
    let (_data, log, _) = open(
        dir.path(),
        LogConfig {
            observer: Some(counts.clone()),
            ..small_config()
        },
    );
    for id in 0..10 {
        log.append_batch_blocking(vec![payload(id)]).unwrap();
    }
    assert_eq!(counts.0.load(std::sync::atomic::Ordering::Relaxed), 10);
    assert!(
        counts.1.load(std::sync::atomic::Ordering::Relaxed) >= 10,
        "fsync policy always syncs each batch"
    );
}
