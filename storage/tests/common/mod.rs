//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sagalog_storage::{DataDir, Log, LogConfig, OpenReport, SEGMENT_SUFFIX};

/// Small segments so that tests cross many rolls quickly.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_records: 4,
        ..LogConfig::default()
    }
}

pub fn open(dir: &Path, config: LogConfig) -> (DataDir, Log, OpenReport) {
    let data = DataDir::open(dir).expect("open data dir");
    let (log, report) = data.open_log(config).expect("open log");
    (data, log, report)
}

/// A payload that can be recomputed from its id, with a length that varies with it.
pub fn payload(id: u64) -> Vec<u8> {
    let len = 1 + (id.wrapping_mul(2654435761) % 300) as usize;
    let mut bytes = format!("record-{id}:").into_bytes();
    bytes.resize(len.max(bytes.len()), (id % 251) as u8 + 1);
    bytes
}

/// Writes records `0..count` (payloads from [`payload`]) to a log in `dir`, closes it and
/// returns the next offset.
pub fn write_records(dir: &Path, config: LogConfig, count: u64) -> u64 {
    let (_data, log, _) = open(dir, config);
    for id in 0..count {
        log.append_batch_blocking(vec![payload(id)]).unwrap();
    }
    log.next_offset()
}

/// Overwrites `bytes` at `pos` of the file at `path` (damage a test makes).
pub fn write_at(path: &Path, pos: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, pos).unwrap();
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(SEGMENT_SUFFIX))
        .collect();
    files.sort();
    files
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
