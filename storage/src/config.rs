//! Tunables of the log, each with its unit in its name and a default fit for production.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Result, StorageError};

/// When the writer calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every batch, before any append of it is acknowledged (the default).
    Always,
    /// At most this many milliseconds after a write; appends are acknowledged once written,
    /// so a machine crash may lose up to that window of acknowledged records.
    IntervalMs(u64),
    /// Never, except when a segment is sealed. For benchmarks that say so.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = StorageError;

    /// `always`, `never` or `interval_ms=N`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => s
                .strip_prefix("interval_ms=")
                .and_then(|ms| ms.parse::<u64>().ok())
                .filter(|ms| *ms > 0)
                .map(FsyncPolicy::IntervalMs)
                .ok_or_else(|| {
                    StorageError::InvalidConfig(format!(
                        "fsync policy {s:?}: expected `always`, `never` or `interval_ms=N` with N > 0"
                    ))
                }),
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::IntervalMs(ms) => write!(f, "interval_ms={ms}"),
            FsyncPolicy::Never => f.write_str("never"),
        }
    }
}

/// Hooks for timing the writer, so the server can export append and fsync latencies
/// without the storage crate knowing about metrics.
pub trait LogObserver: Send + Sync + 'static {
    /// One batch of `records` records and `bytes` bytes was written in `elapsed`.
    fn batch_written(&self, _records: usize, _bytes: usize, _elapsed: Duration) {}
    /// One `fdatasync` took `elapsed`.
    fn synced(&self, _elapsed: Duration) {}
    /// An attempt to heal a poisoned or read-only log ended (`healed`: it takes writes
    /// again).
    fn healed(&self, _healed: bool) {}
}

#[derive(Clone)]
pub struct LogConfig {
    /// A segment is sealed and a new one started when the next append would pass this size.
    pub segment_bytes: u64,
    /// Largest payload of one record.
    pub max_record_bytes: u32,
    /// Most records the writer takes into one write and fsync.
    pub max_batch_records: usize,
    /// Most bytes the writer takes into one write and fsync.
    pub max_batch_bytes: usize,
    /// Appends queued for the writer; further appenders wait.
    pub queue_depth: usize,
    pub fsync: FsyncPolicy,
    /// Pre-write the next segment with zeros in the background, so that an fsync only has
    /// data to flush, not a growing file's metadata (about 2.5x fewer µs per fsync here).
    pub preallocate: bool,
    /// One sparse index entry every this many records: a read scans at most this many
    /// frame headers after one lookup.
    pub index_interval_records: u32,
    /// How many times a poisoned (or read-only opened) log tries to heal before it
    /// gives up until a restart; the pause between attempts doubles from 100 ms to 30 s.
    pub heal_attempts: u32,
    pub observer: Option<Arc<dyn LogObserver>>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 * 1024 * 1024,
            max_record_bytes: 4 * 1024 * 1024,
            max_batch_records: 4096,
            max_batch_bytes: 8 * 1024 * 1024,
            queue_depth: 4096,
            fsync: FsyncPolicy::Always,
            preallocate: true,
            index_interval_records: 16,
            heal_attempts: 60,
            observer: None,
        }
    }
}

impl fmt::Debug for LogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogConfig")
            .field("segment_bytes", &self.segment_bytes)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("max_batch_records", &self.max_batch_records)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("queue_depth", &self.queue_depth)
            .field("fsync", &self.fsync)
            .field("preallocate", &self.preallocate)
            .field("index_interval_records", &self.index_interval_records)
            .field("heal_attempts", &self.heal_attempts)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(StorageError::InvalidConfig(m));
        if self.segment_bytes < 4096 {
            return fail(format!(
                "segment_bytes {} is below 4096",
                self.segment_bytes
            ));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > (1 << 30) {
            return fail(format!(
                "max_record_bytes {} is not in 1..=1 GiB",
                self.max_record_bytes
            ));
        }
        if self.max_batch_bytes < crate::format::frame_bytes(self.max_record_bytes as usize) {
            return fail(format!(
                "max_batch_bytes {} cannot hold one record of max_record_bytes {}",
                self.max_batch_bytes, self.max_record_bytes
            ));
        }
        if self.max_batch_records == 0 || self.queue_depth == 0 || self.index_interval_records == 0
        {
            return fail(
                "max_batch_records, queue_depth and index_interval_records must be > 0".into(),
            );
        }
        Ok(())
    }
}
