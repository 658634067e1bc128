//! The snapshot store: atomic saves, keep-newest-K, checksums, and falling back past a
//! corrupt newest snapshot.

use sagalog_storage::{DataDir, SnapshotConfig, StorageError};

fn store(dir: &std::path::Path, keep: usize) -> (DataDir, sagalog_storage::SnapshotStore) {
    let data = DataDir::open(dir).unwrap();
    let store = data
        .open_snapshots(SnapshotConfig {
            keep,
            ..SnapshotConfig::default()
        })
        .unwrap();
    (data, store)
}

#[test]
fn a_snapshot_round_trips_and_only_the_newest_k_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_data, store) = store(dir.path(), 3);
        assert_eq!(store.load_latest().unwrap(), None, "no snapshot yet");
        for offset in [10u64, 20, 30, 40, 50] {
            store
                .save(offset, format!("state at {offset}").as_bytes())
                .unwrap();
        }
        let offsets: Vec<u64> = store.list().unwrap().iter().map(|s| s.offset).collect();
        assert_eq!(
            offsets,
            [50, 40, 30],
            "newest first, the two oldest removed"
        );
    }
    let (_data, store) = store(dir.path(), 3);
    let latest = store.load_latest().unwrap().unwrap();
    assert_eq!(
        (latest.offset, latest.data),
        (50, b"state at 50".to_vec()),
        "survives reopen"
    );
    store.save(50, b"retaken").unwrap();
    assert_eq!(
        store.load_latest().unwrap().unwrap().data,
        b"retaken",
        "same offset replaces"
    );
    store.save(60, b"").unwrap();
    assert_eq!(
        store.load_latest().unwrap().unwrap().data,
        b"",
        "an empty blob is a valid snapshot"
    );
}

#[test]
fn a_corrupt_newest_snapshot_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_data, store) = store(dir.path(), 3);
    store.save(100, b"older state").unwrap();
    let newest = store.save(200, b"newest state").unwrap();
    let mut bytes = std::fs::read(&newest.path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&newest.path, &bytes).unwrap();
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!((loaded.offset, loaded.data), (100, b"older state".to_vec()));
    assert_eq!(store.corrupt_skipped(), 1, "the skip is counted");
    let err = store.load(&store.list().unwrap()[0]).unwrap_err();
    assert!(
        matches!(&err, StorageError::Snapshot { reason, .. } if reason.contains("checksum")),
        "{err}"
    );

    std::fs::write(&newest.path, &bytes[..20]).unwrap();
    assert_eq!(
        store.load_latest().unwrap().unwrap().offset,
        100,
        "a truncated file is skipped too"
    );
    let older = &store.list().unwrap()[1];
    std::fs::write(&older.path, b"garbage").unwrap();
    assert_eq!(
        store.load_latest().unwrap(),
        None,
        "no usable snapshot: replay from the log"
    );
}

#[test]
fn leftover_temporary_files_are_removed_and_limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("snapshots")).unwrap();
    let tmp = dir
        .path()
        .join("snapshots")
        .join("00000000000000000007.snap.tmp");
    std::fs::write(&tmp, b"half-written").unwrap();
    let data = DataDir::open(dir.path()).unwrap();
    let store = data
        .open_snapshots(SnapshotConfig {
            keep: 2,
            max_snapshot_bytes: 16,
        })
        .unwrap();
    assert!(
        !tmp.exists(),
        "a crash during save leaves a temp file that open removes"
    );
    assert_eq!(store.load_latest().unwrap(), None);
    let err = store.save(1, &[0u8; 17]).unwrap_err();
    assert!(err.to_string().contains("max_snapshot_bytes 16"), "{err}");
    assert!(
        store.list().unwrap().is_empty(),
        "a refused save writes nothing"
    );
    assert!(data
        .open_snapshots(SnapshotConfig {
            keep: 0,
            ..SnapshotConfig::default()
        })
        .is_err());
}
