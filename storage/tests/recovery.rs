//! Opening a damaged log: torn tails are cut back to the last whole record, damage with
//! valid records after it stops the open naming segment and offset, and a second
//! process is refused the directory.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{open, payload, segment_files, small_config, write_at, write_records};
use sagalog_storage::{DataDir, LogConfig, StorageError};

const RECORDS: u64 = 20;

fn config() -> LogConfig {
    // One segment holds all records; pre-written with zeros like production segments.
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_records: 4,
        ..LogConfig::default()
    }
}

/// Byte positions of every frame in the first segment, and where the last one ends.
fn frame_positions() -> (Vec<u64>, u64) {
    let mut pos = 24u64;
    let mut starts = Vec::new();
    for id in 0..RECORDS {
        starts.push(pos);
        pos += 8 + payload(id).len() as u64;
    }
    (starts, pos)
}

fn template() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (_data, log, _) = open(dir.path(), config());
    log.append_batch_blocking((0..RECORDS).map(payload).collect())
        .unwrap();
    dir
}

fn copy_of(template: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("log")).unwrap();
    for file in segment_files(template) {
        std::fs::copy(
            &file,
            dir.path().join("log").join(file.file_name().unwrap()),
        )
        .unwrap();
    }
    let segment = segment_files(dir.path()).remove(0);
    (dir, segment)
}

/// Opens the damaged copy and checks: the tail was cut (or was clean at a frame
/// boundary), every earlier record is intact, the log appends again and reopens clean.
fn assert_cut_back_to_last_whole_record(dir: &Path, what: &str, expect_cut: bool) {
    {
        let (_data, log, report) = open(dir, config());
        assert_eq!(
            report.cuts.len(),
            usize::from(expect_cut),
            "{what}: cuts {:?}",
            report.cuts
        );
        if expect_cut {
            let cut = &report.cuts[0];
            assert_eq!(
                cut.offset,
                RECORDS - 1,
                "{what}: the cut names the first offset not kept"
            );
            assert_eq!(
                log.stats().tail_truncations,
                1,
                "{what}: the cut is counted"
            );
        }
        assert_eq!(
            log.next_offset(),
            RECORDS - 1,
            "{what}: only the torn record is gone"
        );
        for id in 0..RECORDS - 1 {
            assert_eq!(log.read(id).unwrap(), payload(id), "{what}: record {id}");
        }
        assert_eq!(
            log.append_batch_blocking(vec![b"after the cut".to_vec()])
                .unwrap(),
            RECORDS - 1..RECORDS
        );
    }
    let (_data, log, report) = open(dir, config());
    assert!(
        report.cuts.is_empty(),
        "{what}: second open is clean, got {:?}",
        report.cuts
    );
    assert_eq!(log.read(RECORDS - 1).unwrap(), b"after the cut", "{what}");
}

#[test]
fn a_tail_torn_at_every_byte_of_the_last_record_is_cut_back() {
    let template = template();
    let (starts, end) = frame_positions();
    let last = *starts.last().unwrap();
    for keep in 0..end - last {
        // The file ends inside the record (a write that never reached the disk's end).
        let (dir, segment) = copy_of(template.path());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(last + keep)
            .unwrap();
        assert_cut_back_to_last_whole_record(
            dir.path(),
            &format!("truncated at byte {keep}"),
            keep > 0,
        );

        // The record's later pages never reached the disk: zeros from `keep` on.
        let (dir, segment) = copy_of(template.path());
        write_at(
            &segment,
            last + keep,
            &vec![0u8; (end - last - keep) as usize],
        );
        let zero_header = keep == 0;
        assert_cut_back_to_last_whole_record(
            dir.path(),
            &format!("zeroed from byte {keep}"),
            !zero_header,
        );

        // Garbage where the rest of the record should be.
        let (dir, segment) = copy_of(template.path());
        write_at(
            &segment,
            last + keep,
            &vec![0xA5u8; (end - last - keep) as usize],
        );
        assert_cut_back_to_last_whole_record(
            dir.path(),
            &format!("garbage from byte {keep}"),
            true,
        );
    }
}

#[test]
fn a_flipped_byte_in_an_earlier_record_stops_open_naming_segment_and_offset() {
    let template = template();
    let (starts, _) = frame_positions();
    let victim = 7u64;
    let (from, to) = (starts[victim as usize], starts[victim as usize + 1]);
    for pos in from..to {
        let (dir, segment) = copy_of(template.path());
        let mut byte = [0u8];
        std::fs::File::open(&segment)
            .unwrap()
            .read_exact_at(&mut byte, pos)
            .unwrap();
        write_at(&segment, pos, &[byte[0] ^ 0x40]);
        let data = DataDir::open(dir.path()).unwrap();
        let err = data
            .open_log(config())
            .err()
            .unwrap_or_else(|| panic!("byte {pos} flipped, open succeeded"));
        match &err {
            StorageError::Corrupt {
                segment: named,
                offset,
                position,
                ..
            } => {
                assert_eq!(
                    (named, *offset, *position),
                    (&segment, victim, from),
                    "byte {pos}: {err}"
                );
            }
            other => panic!("byte {pos}: expected Corrupt, got {other}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("00000000000000000000.log") && message.contains("offset 7"),
            "{message}"
        );
        assert!(
            message.contains("sagalog recover"),
            "the error says what to do: {message}"
        );
        let untouched = std::fs::read(&segment).unwrap();
        assert_eq!(
            untouched[pos as usize],
            byte[0] ^ 0x40,
            "a refused open does not modify the segment"
        );
    }
}

#[test]
fn damage_at_the_end_of_a_sealed_segment_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), small_config(), 100);
    let segments = segment_files(dir.path());
    assert!(segments.len() > 2);
    let first = &segments[0];
    let next_base: u64 = segments[1].file_name().unwrap().to_string_lossy()[..20]
        .parse()
        .unwrap();
    // Overwrite the last record of the sealed first segment with garbage.
    let last_len = 8 + payload(next_base - 1).len() as u64;
    let content = std::fs::read(first).unwrap();
    let end = content.iter().rposition(|b| *b != 0).unwrap() as u64 + 1;
    write_at(first, end - last_len + 4, &[0xEE; 4]);
    let data = DataDir::open(dir.path()).unwrap();
    let err = data.open_log(small_config()).err().expect("refused");
    assert!(
        matches!(&err, StorageError::Corrupt { offset, segment, .. } if *offset == next_base - 1 && segment == first),
        "{err}"
    );
}

#[test]
fn a_torn_header_of_the_newest_segment_is_rewritten() {
    for (what, damage) in [("partial", 0usize), ("all-zero", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let next = write_records(dir.path(), small_config(), 60);
        // A roll that crashed before the new segment's header was durable.
        let path = dir.path().join("log").join(format!("{next:020}.log"));
        if damage == 0 {
            std::fs::write(&path, &[0x53, 0x47, 0x4c][..]).unwrap();
        } else {
            std::fs::write(&path, vec![0u8; 4096]).unwrap();
        }
        let (_data, log, report) = open(dir.path(), small_config());
        assert_eq!(report.cuts.len(), 1, "{what}: {:?}", report.cuts);
        assert_eq!(report.cuts[0].segment, path);
        assert_eq!(log.next_offset(), next, "{what}");
        assert_eq!(
            log.append_batch_blocking(vec![payload(next)])
                .unwrap()
                .start,
            next
        );
        assert_eq!(log.read(next).unwrap(), payload(next), "{what}");
    }
}

#[test]
fn a_missing_middle_segment_and_an_unknown_format_version_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), small_config(), 300);
    let segments = segment_files(dir.path());
    assert!(segments.len() > 5, "{segments:?}");
    let mut header = [0u8; 24];
    std::fs::File::open(&segments[0])
        .unwrap()
        .read_exact_at(&mut header, 0)
        .unwrap();
    header[8..12].copy_from_slice(&9u32.to_le_bytes());
    let crc = crc32(&header[0..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    write_at(&segments[0], 0, &header);
    let data = DataDir::open(dir.path()).unwrap();
    let err = data.open_log(small_config()).err().expect("refused");
    assert!(
        matches!(err, StorageError::UnsupportedFormat { version: 9, .. }),
        "{err}"
    );
    drop(data);

    std::fs::remove_file(&segments[1]).unwrap();
    std::fs::remove_file(&segments[0]).unwrap();
    std::fs::remove_file(&segments[3]).unwrap();
    let data = DataDir::open(dir.path()).unwrap();
    let err = data.open_log(small_config()).err().expect("refused");
    assert!(
        matches!(&err, StorageError::SegmentGap { segment, .. } if *segment == segments[4]),
        "{err}"
    );
}

fn crc32(bytes: &[u8]) -> u32 {
    // Bitwise CRC-32 (IEEE), independent of the implementation under test.
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

const LOCK_CHILD_ENV: &str = "SAGALOG_TEST_LOCK_CHILD_DIR";

#[test]
fn a_second_process_opening_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _log, _) = open(dir.path(), small_config());
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lock_child_process", "--ignored", "--nocapture"])
        .env(LOCK_CHILD_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("open: "))
        .unwrap_or_else(|| panic!("child said: {stdout}"));
    let expected = format!(
        "open: refused: data directory {} is in use by another process (pid {})",
        dir.path().display(),
        std::process::id()
    );
    assert!(
        line.starts_with(&expected),
        "expected {expected:?}, child printed {line:?}"
    );
    drop(_log);
    drop(data);
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lock_child_process", "--ignored", "--nocapture"])
        .env(LOCK_CHILD_ENV, dir.path())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("open: ok"),
        "free once the holder closed it"
    );
}

#[test]
#[ignore = "child process of a_second_process_opening_the_same_directory_is_refused"]
fn lock_child_process() {
    let dir = std::env::var(LOCK_CHILD_ENV).expect("run by the lock test");
    match DataDir::open(dir) {
        Ok(_) => println!("open: ok"),
        Err(e) => println!("open: refused: {e}"),
    }
}

#[test]
fn check_names_each_problem_without_changing_a_byte_and_cut_moves_the_damage_aside() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), small_config(), 200);
    let log_dir = dir.path().join("log");
    let segments = segment_files(dir.path());
    assert!(segments.len() > 4);
    let clean = sagalog_storage::check::check_log(&log_dir, &small_config(), &|_| {}).unwrap();
    assert_eq!((clean.records, clean.next_offset), (200, 200));
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);

    // A flipped byte in the first record of the third segment.
    let victim = &segments[2];
    let base: u64 = victim.file_name().unwrap().to_string_lossy()[..20]
        .parse()
        .unwrap();
    write_at(victim, 24 + 8 + 2, &[0xAB]);
    let before: Vec<Vec<u8>> = segments.iter().map(|s| std::fs::read(s).unwrap()).collect();
    let damaged = sagalog_storage::check::check_log(&log_dir, &small_config(), &|_| {}).unwrap();
    assert_eq!(damaged.problems.len(), 1, "{:?}", damaged.problems);
    let problem = &damaged.problems[0];
    assert_eq!(
        (
            problem.kind,
            &problem.segment,
            problem.offset,
            problem.position
        ),
        ("corrupt", victim, base, 24)
    );
    assert_eq!(
        damaged.next_offset, base,
        "the intact prefix ends at the bad record"
    );
    let after: Vec<Vec<u8>> = segments.iter().map(|s| std::fs::read(s).unwrap()).collect();
    assert_eq!(before, after, "a check changes nothing");

    let aside = dir.path().join("recovered").join("cut-1");
    let cut = sagalog_storage::check::cut_log(&log_dir, &small_config(), &aside, false)
        .unwrap()
        .expect("something to cut");
    assert_eq!(cut.next_offset, base);
    assert_eq!(cut.moved_segments, segments.len() - 3);
    let moved_total: u64 = after[2..].iter().map(|b| b.len() as u64).sum::<u64>() - 24;
    assert_eq!(
        cut.moved_bytes, moved_total,
        "every byte from the bad record on is kept"
    );
    let note = std::fs::read_to_string(aside.join("NOTE.txt")).unwrap();
    assert!(
        note.contains(&format!("offset {base}")) && note.contains("checksum"),
        "{note}"
    );
    // The log opens, ends before the bad record, and every record before it reads back.
    let (_data, log, report) = open(dir.path(), small_config());
    assert_eq!(report.next_offset, base);
    for id in 0..base {
        assert_eq!(log.read(id).unwrap(), payload(id));
    }
    drop(log);
    let fixed = sagalog_storage::check::check_log(&log_dir, &small_config(), &|_| {}).unwrap();
    assert!(fixed.problems.is_empty(), "{:?}", fixed.problems);
    assert!(
        sagalog_storage::check::cut_log(&log_dir, &small_config(), &dir.path().join("again"), true)
            .unwrap()
            .is_none(),
        "nothing left to cut"
    );
}

#[test]
fn check_calls_a_torn_tail_a_torn_tail() {
    let template = template();
    let (_, end) = frame_positions();
    let (dir, segment) = copy_of(template.path());
    write_at(&segment, end - 3, &[0xFF, 0xFF, 0xFF]);
    let check =
        sagalog_storage::check::check_log(&dir.path().join("log"), &config(), &|_| {}).unwrap();
    assert_eq!(check.problems.len(), 1);
    assert_eq!(
        (check.problems[0].kind, check.problems[0].offset),
        ("torn_tail", RECORDS - 1)
    );
    let log_dir = dir.path().join("log");
    assert!(
        sagalog_storage::check::cut_log(&log_dir, &config(), &dir.path().join("a"), false)
            .unwrap()
            .is_none(),
        "left to serve, which cuts a torn tail by itself"
    );
    // Recover keeps the torn bytes too.
    let cut = sagalog_storage::check::cut_log(&log_dir, &config(), &dir.path().join("b"), true)
        .unwrap()
        .expect("the torn tail is cut");
    assert_eq!(cut.next_offset, RECORDS - 1);
    assert!(cut.moved_bytes >= 3);
    let (_data, _log, report) = open(dir.path(), config());
    assert_eq!((report.next_offset, report.cuts.len()), (RECORDS - 1, 0));
}
