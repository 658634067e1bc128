//! A full disk: appends fail with a clear error, nothing acknowledged is lost, the log is
//! not poisoned, and it heals by itself once space is freed. Runs on a real size-limited
//! tmpfs that the test mounts (the test runner is root; elsewhere the test says it skipped).

mod common;

use std::time::{Duration, Instant};

use common::{open, payload};
use sagalog_storage::testing::{fill_leaving, Tmpfs};
use sagalog_storage::{LogConfig, StorageError, SEGMENT_SUFFIX};

const FS_BYTES: u64 = 1 << 20;
const SEGMENT_BYTES: u64 = 256 * 1024;
/// Room left for the log once the filler has taken the rest.
const ROOM_BYTES: u64 = 64 * 1024;

#[test]
fn a_full_disk_fails_appends_cleanly_loses_nothing_and_heals_when_space_returns() {
    if !Tmpfs::available_or_skip() {
        return;
    }
    let mount_dir = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(mount_dir.path(), FS_BYTES);
    let dir = mount_dir.path().join("data");
    let config = LogConfig {
        segment_bytes: SEGMENT_BYTES,
        ..LogConfig::default()
    };
    let (data, log, _) = open(&dir, config.clone());

    // Let the pre-writer finish the next segment before the filler takes the space.
    let next = dir.join("log").join("next.prealloc");
    let started = Instant::now();
    while std::fs::metadata(&next).map_or(0, |m| m.len()) < SEGMENT_BYTES {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the next segment was never pre-written"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let filler = mount_dir.path().join("filler");
    fill_leaving(&filler, ROOM_BYTES);

    // Append until the disk is full: through the pre-written segments, then a plain one.
    let mut acked = Vec::new();
    let failure = loop {
        let id = acked.len() as u64;
        assert!(id < 5000, "appends never hit the full disk");
        match log.append_batch_blocking(vec![payload(id)]) {
            Ok(range) => {
                assert_eq!(range.start, id, "offsets stay dense");
                acked.push(id);
            }
            Err(e) => break e,
        }
    };
    // In a segment, not at a roll: the pre-writer gave back what it could not finish, so
    // the plain segment after the pre-written ones could be started.
    assert!(
        matches!(&failure, StorageError::WriteFailed { segment, .. } if segment.to_string_lossy().ends_with(SEGMENT_SUFFIX)),
        "a full disk should fail a write to a segment with WriteFailed, got: {failure}"
    );
    let message = failure.to_string();
    assert!(
        message.contains("No space left"),
        "the error should say why: {message}"
    );
    assert_eq!(
        log.poisoned(),
        None,
        "a failed write must not poison the log"
    );
    // Both pre-written segments filled up (each may waste less than one frame at its
    // end) and the failure came in the plain segment after them.
    let framed: u64 = acked.iter().map(|&id| payload(id).len() as u64 + 8).sum();
    assert!(
        framed > 2 * (SEGMENT_BYTES - 400),
        "only {framed} bytes were appended"
    );
    for &id in &acked {
        assert_eq!(
            log.read(id).unwrap(),
            payload(id),
            "acknowledged record {id} reads back"
        );
    }

    // Space returns: the next append succeeds at the next dense offset, by itself.
    std::fs::remove_file(&filler).unwrap();
    let id = acked.len() as u64;
    let range = log
        .append_batch_blocking(vec![payload(id)])
        .expect("append after space was freed");
    assert_eq!(range, id..id + 1, "the failed batch's offsets are reused");
    acked.push(id);

    drop(log);
    drop(data);
    let (_data, log, report) = open(&dir, config);
    assert!(
        report.cuts.is_empty(),
        "the failed write left nothing to cut: {:?}",
        report.cuts
    );
    assert_eq!(log.next_offset(), acked.len() as u64);
    for &id in &acked {
        assert_eq!(
            log.read(id).unwrap(),
            payload(id),
            "record {id} after reopen"
        );
    }
}
