//! Injected failures at every step by which the log changes the disk (`ENOSPC` and `EIO`
//! where a real disk gives them): each test checks that every acknowledged record is
//! there after a reopen, that nothing refused is, that the log keeps or regains service
//! by itself, and that `verify`'s check and `recover`'s cut agree with what opening does.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{payload, segment_files, small_config};
use sagalog_storage::check::{check_log, cut_log};
use sagalog_storage::faults::{EIO, ENOSPC};
use sagalog_storage::testing::tree;
use sagalog_storage::{DataDir, FaultPoint, Faults, Log, LogConfig, StorageError};

fn open_with(dir: &Path, config: LogConfig, faults: &Arc<Faults>) -> (DataDir, Log) {
    let data = DataDir::open(dir).unwrap().with_faults(Some(
        faults.clone() as Arc<dyn sagalog_storage::FaultInjector>
    ));
    let (log, _) = data.open_log(config).expect("open log");
    (data, log)
}

/// Appends `payload(id)` for ids from `next` until `until` records are acknowledged,
/// keeping the ids acknowledged; returns the errors of those refused.
/// Appends `payload(id)` for fresh ids until `until` records are acknowledged (waiting a
/// little after each refusal, for 20 s at most), keeping the ids and offsets
/// acknowledged; returns the errors of those refused.
fn append_until(log: &Log, acked: &mut Vec<(u64, u64)>, until: usize) -> Vec<StorageError> {
    let mut refused = Vec::new();
    let mut id = acked.last().map_or(0, |(id, _)| id + 1);
    let started = Instant::now();
    while acked.len() < until {
        match log.append_batch_blocking(vec![payload(id)]) {
            Ok(range) => acked.push((id, range.start)),
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "appends never came back; {} refused, the last: {e}",
                    refused.len()
                );
                refused.push(e);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        id += 1;
    }
    refused
}

/// Reopens `dir` without faults and checks that every acknowledged record reads back
/// at its offset, that the log is exactly those records, and that the check is clean.
fn assert_all_there(dir: &Path, config: LogConfig, acked: &[(u64, u64)], what: &str) {
    let (_data, log, report) = common::open(dir, config.clone());
    assert!(
        report.leftovers.is_empty() && report.cuts.is_empty(),
        "{what}: reopening found {report:?}"
    );
    assert_eq!(
        log.next_offset(),
        acked.len() as u64,
        "{what}: the log holds exactly the acknowledged records"
    );
    for &(id, offset) in acked {
        assert_eq!(
            log.read(offset).unwrap(),
            payload(id),
            "{what}: record {id} at offset {offset}"
        );
    }
    drop(log);
    let check = check_log(&dir.join("log"), &config, &|_| {}).unwrap();
    assert!(check.problems.is_empty(), "{what}: {:?}", check.problems);
}

/// Appends record `id` after an fsync fault was set: it is refused, and the refusal
/// says the log is poisoned.
fn assert_poisoning_refusal(log: &Log, id: u64) {
    let refused = log
        .append_batch_blocking(vec![payload(id)])
        .expect_err("an append whose fsync failed is refused");
    assert!(
        matches!(refused, StorageError::Poisoned { .. }),
        "{refused}"
    );
}

fn wait_writable(log: &Log, what: &str) {
    let started = Instant::now();
    while !log.stats().writable {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: the log did not heal: {:?}",
            log.poisoned()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (20 s at most) until `log` has failed to heal `attempts` times.
fn wait_failed_heals(log: &Log, attempts: u64) {
    let started = Instant::now();
    while log.stats().failed_heals < attempts {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            log.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_roll_failing_at_any_step_leaves_no_file_behind_and_loses_nothing() {
    let steps = [
        (FaultPoint::SegmentCreate, false),
        (FaultPoint::SegmentHeader, false),
        (FaultPoint::SegmentSync, false),
        (FaultPoint::DirSync, false),
        (FaultPoint::PreallocRename, true),
        (FaultPoint::SegmentHeader, true),
        (FaultPoint::SegmentSync, true),
        (FaultPoint::DirSync, true),
    ];
    for (point, preallocate) in steps {
        for errno in [ENOSPC, EIO] {
            let what = format!("{point:?} (pre-written: {preallocate}, errno {errno})");
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig {
                preallocate,
                ..small_config()
            };
            let faults = Faults::new();
            let (data, log) = open_with(dir.path(), config.clone(), &faults);
            if preallocate {
                // The first roll takes the pre-written file.
                let next = dir.path().join("log/next.prealloc");
                let started = Instant::now();
                while std::fs::metadata(&next).map_or(0, |m| m.len()) < config.segment_bytes {
                    assert!(started.elapsed() < Duration::from_secs(10), "{what}");
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            // The first two rolls fail at this step; the writer goes on in the old
            // segment while appends fit, and rolls once the step works again.
            faults.fail_after(point, 0, 2, errno);
            let mut acked = Vec::new();
            let refused = append_until(&log, &mut acked, 120);
            assert!(
                faults.failed(point) == 2,
                "{what}: the step failed {} times",
                faults.failed(point)
            );
            assert!(
                !refused.is_empty(),
                "{what}: the appends the failed rolls were for are refused"
            );
            assert!(
                log.stats().segments > 2,
                "{what}: later rolls worked: {:?}",
                log.stats()
            );
            wait_writable(&log, &what);
            drop(log);
            drop(data);
            // Reopening finds no leftover file and exactly the acknowledged records.
            assert_all_there(dir.path(), config, &acked, &what);
        }
    }
}

#[test]
fn a_failed_write_refuses_its_batch_only_and_a_failed_pre_write_costs_nothing() {
    for point in [
        FaultPoint::BatchWrite,
        FaultPoint::PreallocWrite,
        FaultPoint::PreallocSync,
    ] {
        let what = format!("{point:?}");
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let (data, log) = open_with(dir.path(), small_config(), &faults);
        faults.fail_after(point, 3, 5, ENOSPC);
        let mut acked = Vec::new();
        let refused = append_until(&log, &mut acked, 150);
        assert!(faults.failed(point) > 0, "{what}: the step was reached");
        if point == FaultPoint::BatchWrite {
            assert_eq!(refused.len(), 5, "{what}: {:?}", refused.first());
            assert!(
                refused
                    .iter()
                    .all(|e| matches!(e, StorageError::WriteFailed { .. })),
                "{what}: {:?}",
                refused.first()
            );
        } else {
            assert!(refused.is_empty(), "{what}: {:?}", refused.first());
        }
        assert_eq!(log.poisoned(), None, "{what}");
        drop(log);
        drop(data);
        assert_all_there(dir.path(), small_config(), &acked, &what);
    }
}

#[test]
fn a_failed_fsync_poisons_the_log_which_heals_itself_without_the_refused_records() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let (data, log) = open_with(dir.path(), small_config(), &faults);
    let mut acked = Vec::new();
    append_until(&log, &mut acked, 30);
    let runtime = common::runtime();
    let mut tail = log.subscribe(0);
    let mut seen = Vec::new();
    runtime.block_on(async {
        while seen.len() < 30 {
            seen.extend(tail.next_batch(100, 1 << 20).await.unwrap());
        }
    });

    faults.fail_after(FaultPoint::BatchSync, 0, 3, EIO);
    assert_poisoning_refusal(&log, 1000);
    // Until it heals, appends are refused at once, naming why.
    match log.append_batch_blocking(vec![payload(1001)]) {
        Err(e) => assert!(e.to_string().contains("fdatasync"), "{e}"),
        Ok(range) => acked.push((1001, range.start)),
    }
    wait_writable(&log, "after EIO on fsync");
    assert!(faults.failed(FaultPoint::BatchSync) >= 1);
    assert!(log.stats().heals >= 1, "{:?}", log.stats());
    assert_eq!(
        log.next_offset(),
        acked.len() as u64,
        "the refused record did not become part of the log"
    );
    append_until(&log, &mut acked, 60);
    // The tail subscriber went on across the heal and sees the new records in order.
    runtime.block_on(async {
        while seen.len() < 60 {
            seen.extend(tail.next_batch(100, 1 << 20).await.unwrap());
        }
    });
    let offsets: Vec<u64> = seen.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..60).collect::<Vec<_>>());
    drop(tail);
    drop(log);
    drop(data);
    assert_all_there(dir.path(), small_config(), &acked, "after healing");
}

#[test]
fn a_log_that_cannot_heal_gives_up_after_its_attempts_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let config = LogConfig {
        heal_attempts: 3,
        ..small_config()
    };
    let (_data, log) = open_with(dir.path(), config, &faults);
    let mut acked = Vec::new();
    append_until(&log, &mut acked, 5);
    faults.fail(FaultPoint::BatchSync, EIO);
    assert_poisoning_refusal(&log, 99);
    wait_failed_heals(&log, 3);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(log.stats().failed_heals, 3, "no attempt past the bound");
    let reason = log.poisoned().expect("still refusing");
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    for &(id, offset) in &acked {
        assert_eq!(log.read(offset).unwrap(), payload(id), "reads go on");
    }
}

#[test]
fn a_heal_cuts_nothing_when_the_acknowledged_records_no_longer_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let config = LogConfig {
        heal_attempts: 2,
        ..small_config()
    };
    let (data, log) = open_with(dir.path(), config, &faults);
    let mut acked = Vec::new();
    append_until(&log, &mut acked, 5);
    let active = segment_files(dir.path()).pop().unwrap();
    let original = std::fs::read(&active).unwrap();
    // The records end at the last byte that is not zero (every payload byte is not).
    let end = original.iter().rposition(|&b| b != 0).unwrap() + 1;
    // The active segment's header no longer reads back (a stray write, bit rot), then an
    // fsync fails: the log is poisoned and tries to heal.
    common::write_at(&active, 0, &[0xff; 8]);
    faults.fail_after(FaultPoint::BatchSync, 0, 1, EIO);
    assert_poisoning_refusal(&log, 99);
    wait_failed_heals(&log, 2);
    let reason = log
        .poisoned()
        .expect("it does not heal over records it cannot read");
    assert!(reason.contains("no longer reads back"), "{reason}");
    let now = std::fs::read(&active).unwrap();
    assert_eq!(
        now[8..end],
        original[8..end],
        "the healer zeroed no acknowledged byte"
    );
    drop(log);
    drop(data);
    // With the header mended by hand, every acknowledged record is there, and the one
    // refused is not.
    common::write_at(&active, 0, &original[..8]);
    assert_all_there(
        dir.path(),
        small_config(),
        &acked,
        "after the header was mended",
    );
}

/// Writes records over several segments, then fakes what a roll that failed on a full
/// disk left behind while the writer went on in the old segment: an empty file whose
/// name lies inside the previous segment's offsets.
fn log_with_leftover(dir: &Path) -> (u64, PathBuf) {
    let next = common::write_records(dir, small_config(), 200);
    let segments = segment_files(dir);
    let last_base: u64 = segments
        .last()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()[..20]
        .parse()
        .unwrap();
    let leftover = dir.join("log").join(format!("{:020}.log", last_base - 3));
    std::fs::write(&leftover, b"").unwrap();
    (next, leftover)
}

#[test]
fn an_empty_segment_left_inside_the_log_is_removed_on_open_and_recover_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let (next, leftover) = log_with_leftover(dir.path());
    let check = check_log(&dir.path().join("log"), &small_config(), &|_| {}).unwrap();
    let kinds: Vec<&str> = check.problems.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, ["leftover_segment"], "{:?}", check.problems);
    assert_eq!(check.next_offset, next, "the check sees every record");

    // recover sets only the leftover aside.
    let recovered = tempfile::tempdir().unwrap();
    let copy = recovered.path().join("data");
    copy_dir(dir.path(), &copy);
    let cut = cut_log(
        &copy.join("log"),
        &small_config(),
        &recovered.path().join("aside"),
        false,
    )
    .unwrap()
    .expect("the leftover is moved aside");
    assert_eq!((cut.next_offset, cut.moved_segments), (next, 1), "{cut:?}");
    let (_d, log, _) = common::open(&copy, small_config());
    assert_eq!(log.next_offset(), next);
    drop(log);

    // serve's open removes it and keeps everything.
    let (_data, log, report) = common::open(dir.path(), small_config());
    assert_eq!(report.leftovers, std::slice::from_ref(&leftover));
    assert!(!leftover.exists());
    assert_eq!(log.next_offset(), next);
    for id in 0..next {
        assert_eq!(log.read(id).unwrap(), payload(id));
    }
}

#[test]
fn a_gap_between_segments_that_hold_records_is_refused_by_open_and_by_recover() {
    let dir = tempfile::tempdir().unwrap();
    common::write_records(dir.path(), small_config(), 200);
    let segments = segment_files(dir.path());
    let missing = &segments[segments.len() / 2];
    std::fs::remove_file(missing).unwrap();
    let before = segment_files(dir.path());
    let data = DataDir::open(dir.path()).unwrap();
    let err = data.open_log(small_config()).err().expect("refused");
    let message = err.to_string();
    assert!(
        matches!(err, StorageError::SegmentGap { records, .. } if records > 0),
        "{message}"
    );
    assert!(
        message.contains("are missing") && message.contains("backup"),
        "{message}"
    );
    drop(data);
    let err = cut_log(
        &dir.path().join("log"),
        &small_config(),
        &dir.path().join("aside"),
        false,
    )
    .expect_err("recover refuses to drop the later segments");
    assert!(matches!(err, StorageError::NotRepairable { .. }), "{err}");
    assert_eq!(segment_files(dir.path()), before, "nothing was moved");
}

#[test]
fn an_empty_last_segment_past_a_missing_one_is_a_gap_and_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let next = common::write_records(dir.path(), small_config(), 200);
    // The last segment, which holds records, is lost; an empty one follows where it
    // ended. That is no leftover of a failed roll (one lies inside the log's offsets):
    // removing it would let the log write offsets it acknowledged before, again.
    let lost = segment_files(dir.path()).pop().unwrap();
    std::fs::remove_file(&lost).unwrap();
    let empty = dir.path().join("log").join(format!("{next:020}.log"));
    std::fs::write(&empty, b"").unwrap();
    let check = check_log(&dir.path().join("log"), &small_config(), &|_| {}).unwrap();
    let kinds: Vec<&str> = check.problems.iter().map(|p| p.kind).collect();
    assert!(!kinds.contains(&"leftover_segment"), "{:?}", check.problems);
    assert!(kinds.contains(&"gap"), "{:?}", check.problems);
    let data = DataDir::open(dir.path()).unwrap();
    let err = data.open_log(small_config()).err().expect("refused");
    assert!(
        matches!(err, StorageError::SegmentGap { found, .. } if found == next),
        "{err}"
    );
    assert!(empty.exists(), "the empty segment was kept");
}

#[test]
fn a_log_that_cannot_be_made_writable_opens_read_only_and_heals_when_the_disk_lets_it() {
    let dir = tempfile::tempdir().unwrap();
    let next = common::write_records(dir.path(), small_config(), 50);
    // A torn tail that opening must cut, on a disk that refuses the cut.
    let last = segment_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    let content = std::fs::read(&last).unwrap();
    let end = content.iter().rposition(|b| *b != 0).unwrap() + 1;
    assert!((end as u64) < len - 16);
    common::write_at(&last, end as u64, &[0xAB; 7]);
    let faults = Faults::new();
    faults.fail(FaultPoint::BatchWrite, ENOSPC);
    let (_data, log) = open_with(dir.path(), small_config(), &faults);
    let reason = log.poisoned().expect("read-only");
    assert!(reason.contains("No space left"), "{reason}");
    assert_eq!(log.next_offset(), next);
    assert_eq!(log.read(next - 1).unwrap(), payload(next - 1), "reads work");
    assert!(matches!(
        log.append_batch_blocking(vec![payload(next)]),
        Err(StorageError::Poisoned { .. })
    ));
    faults.clear();
    wait_writable(&log, "once the disk takes writes");
    let range = log.append_batch_blocking(vec![payload(next)]).unwrap();
    assert_eq!(range.start, next);
}

#[test]
fn an_inspecting_open_changes_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    common::write_records(dir.path(), small_config(), 50);
    let last = segment_files(dir.path()).pop().unwrap();
    let content = std::fs::read(&last).unwrap();
    let end = content.iter().rposition(|b| *b != 0).unwrap() + 1;
    common::write_at(&last, end as u64, &[0xAB; 7]);
    // A leftover of a failed roll: empty, named inside the last segment's offsets.
    std::fs::write(dir.path().join("log").join(format!("{:020}.log", 48)), b"").unwrap();
    let before = tree(dir.path());
    let data = DataDir::open_inspect(dir.path()).unwrap();
    let (log, report) = data.open_log_inspect(small_config()).unwrap();
    assert_eq!(report.cuts.len(), 1, "the tail is where the log ends");
    assert_eq!(report.leftovers.len(), 1);
    assert!(matches!(
        log.append_batch_blocking(vec![payload(1)]),
        Err(StorageError::ReadOnly)
    ));
    std::thread::sleep(Duration::from_millis(50));
    drop(log);
    drop(data);
    assert_eq!(tree(dir.path()), before, "not one byte changed");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
