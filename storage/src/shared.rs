//! The state the log's threads and handles share (`Shared`): the segments and what is
//! published of them, the commit signal tails wait on, the poison and refusal that stop
//! appends, the writer's queue, and the healer's wake-up. Reads by offset are served
//! from here (`read_batch`), with the state lock held only to copy out a segment's file
//! and positions.
//!
//! Invariants, relied on by every reader and by the writer:
//! - `State::segments` is never empty, sorted by base offset, and contiguous: each
//!   segment's base is the previous segment's `base + records`. The last one is active.
//! - Everything a `SegmentMeta` counts (`records`, `end_pos`, `index`) is published:
//!   written, and under `FsyncPolicy::Always` also fsynced. Readers never see more.
//! - `committed` (the watch channel) is sent only after the state was updated, so a
//!   woken subscriber always finds the records it was woken for.
//! - Only published records were ever acknowledged. Whatever lies past the active
//!   segment's `end_pos` on disk was refused to its appender (or never reached one), so
//!   healing may zero it.
//!
//! Who writes which field is in ARCHITECTURE.md's concurrency map.

use std::fs::File;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use crate::error::{Result, StorageError};
use crate::faults::SharedFaults;
use crate::format::{Frame, FrameReader};
use crate::segments::{corrupt, Mode, SegmentMeta};
use crate::LogConfig;

pub(crate) type AppendReply = oneshot::Sender<Result<Range<u64>>>;
pub(crate) type SyncReply = oneshot::Sender<Result<()>>;

pub(crate) enum Request {
    Append {
        records: Vec<Vec<u8>>,
        /// Framed size of `records`.
        bytes: usize,
        reply: AppendReply,
    },
    Sync {
        reply: SyncReply,
    },
}

impl Request {
    pub fn size(&self) -> (usize, usize) {
        match self {
            Request::Append { records, bytes, .. } => (records.len(), *bytes),
            Request::Sync { .. } => (0, 0),
        }
    }
}

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub offset: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// Oldest offset still held (retention removes whole segments below it).
    pub start_offset: u64,
    /// The offset the next append gets; every offset below it and at or above
    /// `start_offset` is readable.
    pub next_offset: u64,
    /// Bytes of records and headers held in segments.
    pub bytes: u64,
    pub segments: usize,
    /// Torn tails cut back since this process opened the log.
    pub tail_truncations: u64,
    /// Whether appends can be taken (not poisoned, not read-only, not refusing).
    pub writable: bool,
    /// Times the log healed since it was opened.
    pub heals: u64,
    /// Attempts to heal that failed since it was opened.
    pub failed_heals: u64,
}

pub(crate) struct State {
    pub segments: Vec<SegmentMeta>,
}

impl State {
    pub fn start_offset(&self) -> u64 {
        self.segments[0].base
    }

    pub fn next_offset(&self) -> u64 {
        self.segments.last().expect("never empty").next_offset()
    }

    pub fn active_mut(&mut self) -> &mut SegmentMeta {
        self.segments.last_mut().expect("never empty")
    }
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub config: LogConfig,
    pub faults: SharedFaults,
    pub state: RwLock<State>,
    pub tail_truncations: AtomicU64,
    /// Why the log takes no appends until it is reopened from disk: an fsync failed, the
    /// clean-up of a failed write failed, or it could only be opened read-only. The
    /// healer clears it.
    pub poisoned: Mutex<Option<String>>,
    /// Held across each fsync of a segment and the poisoning its failure causes. Two
    /// threads fsync the active segment (the syncer, and the writer clearing a failed
    /// write); an fsync that collects the other's writeback error must have poisoned
    /// the log before the other, whose fsync then returns success, can publish.
    pub sync_turn: Mutex<()>,
    /// Why the log refuses new appends for now (a disk below its watermark).
    pub refusing: Mutex<Option<String>>,
    /// Everything below it is published; sent only after the state is updated.
    pub committed: watch::Sender<u64>,
    /// Set when the last [`Log`] handle is gone: tails end once they have read all.
    pub closed: AtomicBool,
    /// The running writer's queue (none while it is stopped).
    pub tx: RwLock<Option<flume::Sender<Request>>>,
    pub writer: Mutex<Option<JoinHandle<()>>>,
    pub heal: Mutex<HealState>,
    pub heal_wake: Condvar,
    pub heals: AtomicU64,
    pub failed_heals: AtomicU64,
    /// The failure of the latest batch write, while no write has succeeded since.
    pub write_failure: Mutex<Option<WriteFailure>>,
    pub write_failing: AtomicBool,
    pub mode: Mode,
}

/// Batch writes are failing: the latest failure, while none has succeeded since (a full
/// disk). The log is not poisoned by it — each failed batch is refused alone and the
/// next one is tried — but the server reports it as not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailure {
    pub reason: String,
    /// The disk is out of space (or quota).
    pub disk_full: bool,
    /// Batches refused since writes began to fail.
    pub batches: u64,
}

#[derive(Default)]
pub(crate) struct HealState {
    /// Attempts made since the log was last poisoned.
    pub attempts: u32,
    pub stop: bool,
}

/// Where a read starts, copied out of the state so that it reads with no lock held.
struct Located {
    file: Arc<File>,
    path: PathBuf,
    /// The offset of the record at `pos` (an indexed one at or below the read's start).
    first_indexed: u64,
    pos: u64,
    end_pos: u64,
    /// Records to read at most.
    take: usize,
}

impl Shared {
    /// Up to `max_records` records from offset `from` on, within one segment, and at
    /// most `max_bytes` of payload (one record however large).
    pub fn read_batch(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>> {
        let Some(Located {
            file,
            path,
            first_indexed: mut offset,
            pos,
            end_pos,
            take,
        }) = self.locate(from, max_records)?
        else {
            return Ok(Vec::new());
        };
        let chunk = max_bytes.clamp(4096, 256 * 1024);
        let mut reader = FrameReader::new(&file, pos, end_pos, self.config.max_record_bytes)
            .with_chunk_bytes(chunk);
        let mut out = Vec::with_capacity(take.min(1024));
        let mut bytes = 0usize;
        while out.len() < take {
            let at = reader.position();
            let frame = reader
                .next_frame()
                .map_err(StorageError::io("read segment", &path))?;
            match frame {
                Frame::Record(payload) => {
                    if offset >= from {
                        if !out.is_empty() && bytes + payload.len() > max_bytes {
                            break;
                        }
                        bytes += payload.len();
                        out.push(LogRecord {
                            offset,
                            payload: payload.to_vec(),
                        });
                    }
                    offset += 1;
                }
                Frame::End | Frame::Zero => {
                    return Err(corrupt(
                        &path,
                        offset,
                        at,
                        "published record missing".into(),
                    ))
                }
                Frame::Invalid(reason) => return Err(corrupt(&path, offset, at, reason)),
            }
        }
        Ok(out)
    }

    /// Where reading from `from` starts: the segment that holds it, from its index entry
    /// at or below `from`; `None` when there is nothing to read.
    fn locate(&self, from: u64, max_records: usize) -> Result<Option<Located>> {
        let interval = u64::from(self.config.index_interval_records);
        let state = self.state.read();
        let (start, next) = (state.start_offset(), state.next_offset());
        if from < start {
            return Err(StorageError::OffsetOutOfRange {
                offset: from,
                start,
                next,
            });
        }
        if from >= next || max_records == 0 {
            return Ok(None);
        }
        let seg = &state.segments[state.segments.partition_point(|s| s.base <= from) - 1];
        let rel = from - seg.base;
        Ok(Some(Located {
            file: seg.file.clone(),
            path: seg.path.clone(),
            first_indexed: seg.base + rel / interval * interval,
            pos: seg.index[(rel / interval) as usize],
            end_pos: seg.end_pos,
            take: usize::try_from(seg.records - rel)
                .unwrap_or(usize::MAX)
                .min(max_records),
        }))
    }

    pub fn poisoned(&self) -> Option<String> {
        self.poisoned.lock().clone()
    }

    /// Refuses every append until the log is healed, and wakes the healer.
    pub fn poison(&self, reason: String) {
        {
            let mut poisoned = self.poisoned.lock();
            if poisoned.is_some() {
                return;
            }
            *poisoned = Some(reason);
        }
        self.heal.lock().attempts = 0;
        self.heal_wake.notify_all();
    }

    /// A batch write, or the start of a segment, failed (its appends are refused;
    /// `disk_full`: for want of space): logged once per episode.
    pub fn write_failed(&self, reason: &str, disk_full: bool) {
        let mut failure = self.write_failure.lock();
        match &mut *failure {
            Some(f) => {
                f.batches += 1;
                f.reason = reason.to_string();
                f.disk_full = disk_full;
            }
            None => {
                tracing::error!(
                    dir = %self.dir.display(), reason,
                    "log writes fail; each batch is refused (and logged once) until one succeeds"
                );
                *failure = Some(WriteFailure {
                    reason: reason.to_string(),
                    disk_full,
                    batches: 1,
                });
                self.write_failing.store(true, Ordering::Release);
            }
        }
    }

    /// A batch write succeeded: ends an episode of failing writes.
    pub fn write_succeeded(&self) {
        if !self.write_failing.load(Ordering::Acquire) {
            return;
        }
        self.write_failing.store(false, Ordering::Release);
        if let Some(failure) = self.write_failure.lock().take() {
            tracing::info!(
                dir = %self.dir.display(), refused_batches = failure.batches,
                "log writes succeed again"
            );
        }
    }

    pub fn stats(&self) -> LogStats {
        let state = self.state.read();
        LogStats {
            start_offset: state.start_offset(),
            next_offset: state.next_offset(),
            bytes: state.segments.iter().map(|s| s.end_pos).sum(),
            segments: state.segments.len(),
            tail_truncations: self.tail_truncations.load(Ordering::Relaxed),
            writable: self.poisoned.lock().is_none() && self.refusing.lock().is_none(),
            heals: self.heals.load(Ordering::Relaxed),
            failed_heals: self.failed_heals.load(Ordering::Relaxed),
        }
    }

    /// The writer's queue, or why there is none.
    pub fn sender(&self) -> Result<flume::Sender<Request>> {
        if let Some(tx) = self.tx.read().as_ref() {
            return Ok(tx.clone());
        }
        Err(self.not_writable())
    }

    pub fn not_writable(&self) -> StorageError {
        match (self.mode, self.poisoned()) {
            (Mode::Inspect, _) => StorageError::ReadOnly,
            (Mode::Write, Some(reason)) => StorageError::Poisoned { reason },
            (Mode::Write, None) => StorageError::Closed,
        }
    }
}
