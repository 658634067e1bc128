//! How an engine is set up: its options, the clock it reads and the observer it
//! reports to.

use std::sync::Arc;

use sagalog_storage::{LogConfig, SharedFaults, SnapshotConfig};

use crate::api::invalid;
use crate::error::Result;
use crate::model::placement::PartitionOf;
use crate::model::record::{Action, Status};

/// Where the engine gets the time from (unix milliseconds). Tests drive a manual one.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// What the engine reports as it installs records, for metrics (the histograms' inputs;
/// the gauges and counters are in [`crate::EngineStats`]). Called with a saga's lock held:
/// keep it to atomic updates.
pub trait EngineObserver: Send + Sync + 'static {
    /// A saga of `saga_type` ended in `status` (terminal, or `FAILED` /
    /// `COMPENSATION_FAILED`) `duration_ms` after it started.
    fn saga_status(&self, _saga_type: &str, _status: Status, _duration_ms: u64) {}
    /// A step's attempt ended: `action` execute or compensate, `outcome` as replied
    /// (`timed_out` for a timeout), `duration_ms` since its command was issued.
    fn step_outcome(
        &self,
        _saga_type: &str,
        _step: &str,
        _action: Action,
        _outcome: &'static str,
        _duration_ms: u64,
    ) {
    }
}

#[derive(Clone)]
pub struct EngineConfig {
    pub log: LogConfig,
    pub snapshots: SnapshotConfig,
    /// Take a snapshot after this many records have been appended (0: only on demand).
    pub snapshot_every_records: u64,
    /// Most sagas that may be active at once; a start beyond it is refused (503).
    pub max_active_sagas: usize,
    /// Largest start payload, as JSON text.
    pub max_payload_bytes: usize,
    /// Largest `data` of one reply, as JSON text: what a step hands the later ones.
    pub max_step_data_bytes: usize,
    /// Most bytes of `data` one saga's succeeded steps hold together: every later
    /// command carries them all as `results`.
    pub max_saga_data_bytes: usize,
    /// Records the indexer reads and commits as one sled batch.
    pub index_batch_records: usize,
    /// Finished sagas waiting for the indexer before they leave memory; writes wait
    /// beyond it.
    pub max_unindexed: usize,
    /// Due timers fired at once.
    pub timer_concurrency: usize,
    /// Most finished-saga index entries one list call reads (a type filter can skip
    /// many); past it the page ends early, with a cursor to go on from.
    pub list_scan_limit: usize,
    /// Bytes of sagas (payloads, reasons and the rest) one list page holds at most;
    /// past it the page ends early, with a cursor to go on from.
    pub max_list_bytes: usize,
    /// Definition versions registered at most, all names together (a registration past
    /// it is refused).
    pub max_definition_versions: usize,
    pub shards: usize,
    pub observer: Option<Arc<dyn EngineObserver>>,
    /// Bytes of the data directory's reserve (see `sagalog_storage::reserve`): released
    /// when the disk has less free than this at open, so that opening finds room.
    /// 0 keeps none.
    pub reserve_bytes: u64,
    /// Injected storage failures (tests); `None` in production.
    pub faults: SharedFaults,
    /// Whether the built-in example definition `order` (v1) is offered. A server given
    /// definitions of its own turns it off, so that a user's `order` never collides with
    /// it; it stays known anyway in a data directory whose sagas ran on it.
    pub builtin_definitions: bool,
    /// Whether the timer thread runs: due timeouts and retries fire, and the periodic
    /// snapshots are taken. The offline tools open the engine without it, since they
    /// must not change the log.
    pub timers: bool,
    /// Which partition of how many this engine is (see [`crate::placement`]): the saga
    /// ids it makes land in it, and a start with an id of another partition is refused.
    pub partition: PartitionOf,
    /// The count of active sagas, shared by the partitions of one process so that
    /// `max_active_sagas` bounds them together; `None`: this engine's own.
    pub active_sagas: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("log", &self.log)
            .field("snapshots", &self.snapshots)
            .field("snapshot_every_records", &self.snapshot_every_records)
            .field("max_active_sagas", &self.max_active_sagas)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("max_step_data_bytes", &self.max_step_data_bytes)
            .field("max_saga_data_bytes", &self.max_saga_data_bytes)
            .field("index_batch_records", &self.index_batch_records)
            .field("max_unindexed", &self.max_unindexed)
            .field("timer_concurrency", &self.timer_concurrency)
            .field("list_scan_limit", &self.list_scan_limit)
            .field("max_list_bytes", &self.max_list_bytes)
            .field("max_definition_versions", &self.max_definition_versions)
            .field("shards", &self.shards)
            .field("observer", &self.observer.is_some())
            .field("reserve_bytes", &self.reserve_bytes)
            .field("faults", &self.faults.is_some())
            .field("builtin_definitions", &self.builtin_definitions)
            .field("timers", &self.timers)
            .field("partition", &self.partition)
            .field("active_sagas", &self.active_sagas)
            .finish()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            log: LogConfig::default(),
            snapshots: SnapshotConfig::default(),
            snapshot_every_records: 1_000_000,
            max_active_sagas: 10_000_000,
            max_payload_bytes: 512 * 1024,
            max_step_data_bytes: 64 * 1024,
            max_saga_data_bytes: 1024 * 1024,
            index_batch_records: 4096,
            max_unindexed: 1_000_000,
            timer_concurrency: 256,
            list_scan_limit: 100_000,
            max_list_bytes: 8 << 20,
            max_definition_versions: 10_000,
            shards: 64,
            observer: None,
            reserve_bytes: 0,
            faults: None,
            builtin_definitions: true,
            timers: true,
            partition: PartitionOf::SOLE,
            active_sagas: None,
        }
    }
}

impl EngineConfig {
    /// Refuses a configuration the engine cannot run with (nothing is opened).
    pub fn validate(&self) -> Result<()> {
        if self.shards == 0
            || self.index_batch_records == 0
            || self.timer_concurrency == 0
            || self.list_scan_limit == 0
        {
            return Err(invalid(
                "config",
                "shards, index_batch_records, timer_concurrency and list_scan_limit must be > 0",
            ));
        }
        if !self.partition.is_valid() {
            let PartitionOf { index, count } = self.partition;
            return Err(invalid(
                "config",
                format!("partition {index} of {count} does not exist"),
            ));
        }
        Ok(())
    }
}
