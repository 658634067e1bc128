//! The sled index store: keyspaces, ordered and prefix scans, atomic batches with the
//! watermark, catching up from the log, and detecting an index out of step with it.

mod common;

use common::{open, small_config};
use sagalog_storage::index::{catch_up, u64_key};
use sagalog_storage::{DataDir, IndexBatch, Keyspace, StorageError};

fn by_saga() -> Keyspace {
    Keyspace::new("by_saga")
}

#[test]
fn keyspaces_are_separate_ordered_and_scannable_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(dir.path()).unwrap();
    let index = data.open_index().unwrap();
    let (a, b) = (Keyspace::new("a"), Keyspace::new("ab"));
    let mut batch = IndexBatch::default();
    for n in [3u64, 1, 2, 300] {
        batch.put(&a, &u64_key(n), format!("a{n}").as_bytes());
    }
    batch.put(&b, &u64_key(1), b"b1");
    batch.put(&a, b"order:1", b"x");
    batch.put(&a, b"order:2", b"y");
    batch.put(&a, b"other", b"z");
    assert_eq!(batch.len(), 8);
    index.commit(batch, 10).unwrap();

    let keys: Vec<Vec<u8>> = index
        .range(&a, ..&u64_key(301)[..])
        .map(|e| e.unwrap().0)
        .collect();
    assert_eq!(
        keys,
        [1u64, 2, 3, 300].map(|n| u64_key(n).to_vec()),
        "numeric order, keyspace 'ab' not mixed in"
    );
    let newest: Vec<Vec<u8>> = index
        .range(&a, &u64_key(2)[..]..)
        .rev()
        .take(2)
        .map(|e| e.unwrap().1)
        .collect();
    assert_eq!(
        newest,
        [b"z".to_vec(), b"y".to_vec()],
        "reverse scan from the end of the keyspace"
    );
    let orders: Vec<_> = index
        .scan_prefix(&a, b"order:")
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(
        orders,
        vec![
            (b"order:1".to_vec(), b"x".to_vec()),
            (b"order:2".to_vec(), b"y".to_vec())
        ]
    );
    assert_eq!(index.scan_prefix(&b, b"").count(), 1);
    assert_eq!(index.get(&b, &u64_key(1)).unwrap(), Some(b"b1".to_vec()));
    assert_eq!(index.get(&b, &u64_key(2)).unwrap(), None);

    let mut batch = IndexBatch::default();
    batch.delete(&a, b"other");
    index.commit(batch, 11).unwrap();
    assert_eq!(index.get(&a, b"other").unwrap(), None);
    assert_eq!(index.watermark().unwrap(), 11);
}

#[test]
fn the_watermark_persists_and_never_moves_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let data = DataDir::open(dir.path()).unwrap();
        let index = data.open_index().unwrap();
        assert_eq!(
            index.watermark().unwrap(),
            0,
            "a new index has seen nothing"
        );
        let mut batch = IndexBatch::default();
        batch.put(&by_saga(), b"s1", b"0");
        index.commit(batch, 42).unwrap();
        index.flush().unwrap();
    }
    let data = DataDir::open(dir.path()).unwrap();
    let index = data.open_index().unwrap();
    assert_eq!(index.watermark().unwrap(), 42);
    assert_eq!(index.get(&by_saga(), b"s1").unwrap(), Some(b"0".to_vec()));
    let back = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        index.commit(IndexBatch::default(), 41)
    }));
    assert!(
        back.is_err(),
        "moving the watermark back is a bug and must not pass silently"
    );
    assert_eq!(index.watermark().unwrap(), 42);
}

/// A toy index: the offsets of each "saga" (the text before ':' in the payload).
fn index_record(
    record: &sagalog_storage::LogRecord,
    batch: &mut IndexBatch,
) -> Result<(), StorageError> {
    let text = String::from_utf8_lossy(&record.payload);
    let saga = text.split(':').next().unwrap();
    let mut key = saga.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&u64_key(record.offset));
    batch.put(&by_saga(), &key, b"");
    Ok(())
}

fn offsets_of(index: &sagalog_storage::IndexStore, saga: &str) -> Vec<u64> {
    let mut prefix = saga.as_bytes().to_vec();
    prefix.push(0);
    index
        .scan_prefix(&by_saga(), &prefix)
        .map(|e| u64::from_be_bytes(e.unwrap().0[prefix.len()..].try_into().unwrap()))
        .collect()
}

#[test]
fn catch_up_replays_the_log_from_the_watermark_and_a_rebuild_gives_the_same_index() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log, _) = open(dir.path(), small_config());
    let index = data.open_index().unwrap();
    let records: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("saga{}:{i}", i % 7).into_bytes())
        .collect();
    log.append_batch_blocking(records[..60].to_vec()).unwrap();
    assert_eq!(catch_up(&log, &index, 16, index_record).unwrap(), 60);
    assert_eq!(index.watermark().unwrap(), 60);
    log.append_batch_blocking(records[60..].to_vec()).unwrap();
    assert_eq!(
        catch_up(&log, &index, 16, index_record).unwrap(),
        40,
        "only the records after the watermark"
    );
    assert_eq!(
        catch_up(&log, &index, 16, index_record).unwrap(),
        0,
        "caught up: nothing to do"
    );
    let expected: Vec<u64> = (0..100).filter(|i| i % 7 == 3).collect();
    assert_eq!(offsets_of(&index, "saga3"), expected);

    index.clear().unwrap();
    assert_eq!(index.watermark().unwrap(), 0);
    assert_eq!(catch_up(&log, &index, 1000, index_record).unwrap(), 100);
    assert_eq!(
        offsets_of(&index, "saga3"),
        expected,
        "a rebuild from nothing gives the same index"
    );
}

#[test]
fn an_index_ahead_of_the_log_or_behind_its_retention_is_reported_for_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log, _) = open(dir.path(), small_config());
    let index = data.open_index().unwrap();
    log.append_batch_blocking(vec![b"saga1:x".to_vec(); 10])
        .unwrap();
    index.commit(IndexBatch::default(), 11).unwrap();
    let err = catch_up(&log, &index, 16, index_record).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::IndexOutOfStep {
                watermark: 11,
                next: 10,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("ahead of the log's head"), "{err}");

    index.clear().unwrap();
    for i in 0..200u64 {
        log.append_batch_blocking(vec![format!("saga1:{i}:{:0>200}", 0).into_bytes()])
            .unwrap();
    }
    assert!(log.remove_segments_below(100).unwrap().removed_segments > 0);
    let err = catch_up(&log, &index, 16, index_record).unwrap_err();
    assert!(
        matches!(err, StorageError::IndexOutOfStep { watermark: 0, .. }),
        "{err}"
    );
}
