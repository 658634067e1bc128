//! The segmented log: opening (with torn-tail recovery), reads by offset, tail
//! subscriptions, retention, healing, and the [`Log`] handle through which records are
//! appended.
//!
//! Invariants, relied on by every reader and by the writer:
//! - `State::segments` is never empty, sorted by base offset, and contiguous: each
//!   segment's base is the previous segment's `base + records`. The last one is active.
//! - Everything a `SegmentMeta` counts (`records`, `end_pos`, `index`) is published: written,
//!   and under `FsyncPolicy::Always` also fsynced. Readers never see more.
//! - `committed` (the watch channel) is sent only after the state was updated, so a woken
//!   subscriber always finds the records it was woken for.
//! - Only published records were ever acknowledged. Whatever lies past the active
//!   segment's `end_pos` on disk was refused to its appender (or never reached one), so
//!   healing may zero it.
//!
//! Opening decides from a read-only scan of every segment (`scan`) what the files hold:
//! - a torn tail of the last segment (damage with no valid frame after it) is cut;
//! - a segment that holds no record and starts inside or after the segment before it is
//!   the leftover of a roll that failed (a full disk while it was being created): it is
//!   removed, since it holds nothing;
//! - anything else out of place — damage with valid frames after it, segments that hold
//!   records and do not follow each other — is refused with the facts.
//!
//! Writes and healing: a failed fsync, or a failed clean-up of a failed write, *poisons*
//! the log (the page cache can no longer be trusted). A log that cannot be opened for
//! writing (a full disk at start) opens read-only and is poisoned the same way. Either
//! way the healer thread stops the writer, reopens the active segment from disk as a
//! restart would — zeroing what lies past the published end, checking the published
//! records read back, removing leftover files — and starts a new writer; it retries with
//! a growing pause, `LogConfig::heal_attempts` times at most. Readers and tail
//! subscribers go on throughout: offsets below the published head never change.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use crate::datadir::{sync_dir, DirLock};
use crate::error::{Result, StorageError};
use crate::faults::{self, FaultPoint, SharedFaults};
use crate::format::{
    dirty_end, encode_segment_header, frame_bytes, Frame, FrameReader, HeaderProblem,
    SEGMENT_FORMAT_VERSION, SEGMENT_HEADER_BYTES,
};
use crate::scan::{is_leftover, scan_segment, SegmentScan};
use crate::writer::{self, Request};
use crate::LogConfig;

pub const SEGMENT_SUFFIX: &str = ".log";
pub(crate) const PREALLOC_SUFFIX: &str = ".prealloc";
/// Longest pause between two attempts to heal the log.
const MAX_HEAL_PAUSE: Duration = Duration::from_secs(30);
/// Pause before the first attempt to heal the log.
const FIRST_HEAL_PAUSE: Duration = Duration::from_millis(100);

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub offset: u64,
    pub payload: Vec<u8>,
}

/// A torn tail that was cut back on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    pub segment: PathBuf,
    /// The first offset that was not kept (the log's next offset after the cut).
    pub offset: u64,
    /// Byte position in the segment where the kept data ends.
    pub position: u64,
    /// How many bytes of damaged data were zeroed.
    pub bytes: u64,
    pub reason: String,
}

/// What opening the log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    pub start_offset: u64,
    pub next_offset: u64,
    pub cuts: Vec<TailCut>,
    /// Leftover segment files of failed rolls (they held no record), removed — or, when
    /// opened read-only, left for a writable open to remove.
    pub leftovers: Vec<PathBuf>,
    /// Why the log opened read-only, when it did (it then heals by itself when it can).
    pub read_only: Option<String>,
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

/// A sealed segment (one the writer has moved past), as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSegment {
    pub base: u64,
    /// The offset just past its last record.
    pub next_offset: u64,
    pub bytes: u64,
    /// When its last record was written (the file's modification time).
    pub modified: std::time::SystemTime,
}

/// What [`Log::remove_segments_below`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub removed_segments: usize,
    pub removed_bytes: u64,
    pub start_offset: u64,
}

pub(crate) struct SegmentMeta {
    pub base: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub records: u64,
    /// Byte position just past the last published frame.
    pub end_pos: u64,
    /// `index[k]` is the byte position of record `base + k * index_interval_records`.
    pub index: Vec<u64>,
}

impl SegmentMeta {
    pub fn next_offset(&self) -> u64 {
        self.base + self.records
    }
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

/// How the log was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// For appends: damage is cut, leftovers removed, a writer runs.
    Write,
    /// For inspection: nothing on disk changes, no writer, no healing.
    Inspect,
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub config: LogConfig,
    pub faults: SharedFaults,
    pub state: RwLock<State>,
    tail_truncations: AtomicU64,
    /// Why the log takes no appends until it is reopened from disk: an fsync failed, the
    /// clean-up of a failed write failed, or it could only be opened read-only. The
    /// healer clears it.
    poisoned: Mutex<Option<String>>,
    /// Held across each fsync of a segment and the poisoning its failure causes. Two
    /// threads fsync the active segment (the syncer, and the writer clearing a failed
    /// write); an fsync that collects the other's writeback error must have poisoned
    /// the log before the other, whose fsync then returns success, can publish.
    pub sync_turn: Mutex<()>,
    /// Why the log refuses new appends for now (a disk below its watermark).
    refusing: Mutex<Option<String>>,
    /// Everything below it is published; sent only after the state is updated.
    pub committed: watch::Sender<u64>,
    /// Set when the last [`Log`] handle is gone: tails end once they have read all.
    closed: AtomicBool,
    /// The running writer's queue (none while it is stopped).
    tx: RwLock<Option<flume::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    heal: Mutex<HealState>,
    heal_wake: Condvar,
    heals: AtomicU64,
    failed_heals: AtomicU64,
    /// The failure of the latest batch write, while no write has succeeded since.
    write_failure: Mutex<Option<WriteFailure>>,
    write_failing: AtomicBool,
    mode: Mode,
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
struct HealState {
    /// Attempts made since the log was last poisoned.
    attempts: u32,
    stop: bool,
}

/// The file of the segment starting at offset `base` in the log directory `dir`.
pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}{SEGMENT_SUFFIX}"))
}

impl Shared {
    pub fn read_batch(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>> {
        let interval = u64::from(self.config.index_interval_records);
        let (file, path, mut offset, pos, end_pos, take) = {
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
                return Ok(Vec::new());
            }
            let seg = &state.segments[state.segments.partition_point(|s| s.base <= from) - 1];
            let rel = from - seg.base;
            let first_indexed = seg.base + rel / interval * interval;
            let take = usize::try_from(seg.records - rel)
                .unwrap_or(usize::MAX)
                .min(max_records);
            let pos = seg.index[(rel / interval) as usize];
            (
                seg.file.clone(),
                seg.path.clone(),
                first_indexed,
                pos,
                seg.end_pos,
                take,
            )
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
    fn sender(&self) -> Result<flume::Sender<Request>> {
        if let Some(tx) = self.tx.read().as_ref() {
            return Ok(tx.clone());
        }
        Err(self.not_writable())
    }

    fn not_writable(&self) -> StorageError {
        match (self.mode, self.poisoned()) {
            (Mode::Inspect, _) => StorageError::ReadOnly,
            (Mode::Write, Some(reason)) => StorageError::Poisoned { reason },
            (Mode::Write, None) => StorageError::Closed,
        }
    }

    /// Starts a writer on the active segment.
    fn start_writer(self: &Arc<Self>, lock: &Arc<DirLock>) -> Result<()> {
        let (tx, rx) = flume::bounded(self.config.queue_depth);
        let thread = writer::spawn(self.clone(), rx, lock.clone())?;
        *self.writer.lock() = Some(thread);
        *self.tx.write() = Some(tx);
        Ok(())
    }

    /// Stops the writer: appends queued are answered (refused, when poisoned), the
    /// syncer makes what it has durable, then both threads end.
    fn stop_writer(&self) {
        drop(self.tx.write().take());
        if let Some(writer) = self.writer.lock().take() {
            if writer.join().is_err() {
                tracing::error!(dir = %self.dir.display(), "log writer thread panicked");
            }
        }
    }
}

fn corrupt(segment: &Path, offset: u64, position: u64, reason: String) -> StorageError {
    StorageError::Corrupt {
        segment: segment.to_path_buf(),
        offset,
        position,
        reason,
    }
}

/// A handle on the open log. Cheap to clone; the writer thread stops, after a final
/// fsync, when the last clone is dropped.
#[derive(Clone)]
pub struct Log {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    healer: Option<JoinHandle<()>>,
    _lock: Arc<DirLock>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.heal.lock().stop = true;
        self.shared.heal_wake.notify_all();
        if let Some(healer) = self.healer.take() {
            if healer.join().is_err() {
                tracing::error!(dir = %self.shared.dir.display(), "log healer thread panicked");
            }
        }
        self.shared.stop_writer();
        self.shared.closed.store(true, Ordering::SeqCst);
        // Wakes every tail, which then sees the log closed.
        self.shared.committed.send_modify(|_| {});
    }
}

impl Log {
    /// Opens the log in `dir` for appends. When it cannot be made writable (a full or
    /// failing disk while cutting a tail or creating the first segment), it opens
    /// read-only instead — reads work, appends are refused with the reason — and heals
    /// by itself once the disk lets it.
    pub(crate) fn open(
        dir: PathBuf,
        config: LogConfig,
        lock: Arc<DirLock>,
        faults: SharedFaults,
    ) -> Result<(Log, OpenReport)> {
        config.validate()?;
        let (opened, read_only) = match open_segments(&dir, &config, &faults, Mode::Write) {
            Ok(opened) => (opened, None),
            Err(e) if e.is_disk_failure() => {
                let reason = format!("opening it for writing failed: {e}");
                let opened = open_segments(&dir, &config, &faults, Mode::Inspect).map_err(|_| e)?;
                tracing::error!(
                    dir = %dir.display(), %reason,
                    "the log opened read-only; it becomes writable by itself once the disk lets it"
                );
                (opened, Some(reason))
            }
            Err(e) => return Err(e),
        };
        Log::start(dir, config, lock, faults, opened, Mode::Write, read_only)
    }

    /// Opens the log in `dir` to read it only: nothing on disk changes (a torn tail is
    /// where the log ends, leftovers stay), and appends are refused.
    pub(crate) fn open_inspect(
        dir: PathBuf,
        config: LogConfig,
        lock: Arc<DirLock>,
    ) -> Result<(Log, OpenReport)> {
        config.validate()?;
        let opened = open_segments(&dir, &config, &None, Mode::Inspect)?;
        Log::start(dir, config, lock, None, opened, Mode::Inspect, None)
    }

    fn start(
        dir: PathBuf,
        config: LogConfig,
        lock: Arc<DirLock>,
        faults: SharedFaults,
        opened: Opened,
        mode: Mode,
        read_only: Option<String>,
    ) -> Result<(Log, OpenReport)> {
        let state = State {
            segments: opened.segments,
        };
        let report = OpenReport {
            segments: state.segments.len(),
            start_offset: state.start_offset(),
            next_offset: state.next_offset(),
            cuts: opened.cuts,
            leftovers: opened.leftovers,
            read_only: read_only.clone(),
        };
        let shared = Arc::new(Shared {
            committed: watch::channel(state.next_offset()).0,
            dir,
            state: RwLock::new(state),
            tail_truncations: AtomicU64::new(report.cuts.len() as u64),
            sync_turn: Mutex::new(()),
            poisoned: Mutex::new(read_only),
            refusing: Mutex::new(None),
            closed: AtomicBool::new(false),
            tx: RwLock::new(None),
            writer: Mutex::new(None),
            heal: Mutex::new(HealState::default()),
            heal_wake: Condvar::new(),
            heals: AtomicU64::new(0),
            failed_heals: AtomicU64::new(0),
            write_failure: Mutex::new(None),
            write_failing: AtomicBool::new(false),
            mode,
            faults,
            config,
        });
        let mut healer = None;
        if mode == Mode::Write {
            if shared.poisoned().is_none() {
                shared.start_writer(&lock)?;
            }
            let (thread_shared, thread_lock) = (shared.clone(), lock.clone());
            healer = Some(
                std::thread::Builder::new()
                    .name("sagalog-log-healer".into())
                    .spawn(move || run_healer(thread_shared, thread_lock))
                    .map_err(StorageError::io("spawn log thread", shared.dir.clone()))?,
            );
        }
        let handle = Handle {
            shared,
            healer,
            _lock: lock,
        };
        Ok((
            Log {
                handle: Arc::new(handle),
            },
            report,
        ))
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    pub fn dir(&self) -> &Path {
        &self.shared().dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.shared().config
    }

    /// Appends one record; resolves with its offset once it is durable (per the fsync policy).
    pub async fn append(&self, record: Vec<u8>) -> Result<u64> {
        Ok(self.append_batch(vec![record]).await?.start)
    }

    /// Appends records as one contiguous run of offsets, all or none; resolves once they
    /// are durable. Waits while the writer's queue is full.
    pub async fn append_batch(&self, records: Vec<Vec<u8>>) -> Result<Range<u64>> {
        self.submit_batch(records).await?.await
    }

    /// The first half of [`Log::append_batch`]: hands the records to the writer (waiting
    /// while its queue is full) and returns the [`Appending`] that resolves once they
    /// are durable. Once this returns, the records will be written whether or not the
    /// `Appending` is awaited — a caller that must act on the outcome even if it is
    /// cancelled (the engine installs state) awaits it in a task of its own then.
    pub async fn submit_batch(&self, records: Vec<Vec<u8>>) -> Result<Appending> {
        let (request, reply) = self.append_request(records)?;
        self.shared()
            .sender()?
            .send_async(request)
            .await
            .map_err(|_| self.shared().not_writable())?;
        Ok(Appending { reply })
    }

    /// [`Log::append_batch`] for threads outside an async runtime (offline tools).
    pub fn append_batch_blocking(&self, records: Vec<Vec<u8>>) -> Result<Range<u64>> {
        let (request, reply) = self.append_request(records)?;
        self.shared()
            .sender()?
            .send(request)
            .map_err(|_| self.shared().not_writable())?;
        reply.blocking_recv().map_err(|_| StorageError::Closed)?
    }

    /// Forces an fsync of everything written so far (useful under `interval_ms` / `never`).
    pub async fn sync(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.shared()
            .sender()?
            .send_async(Request::Sync { reply })
            .await
            .map_err(|_| self.shared().not_writable())?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    #[allow(clippy::type_complexity)]
    fn append_request(
        &self,
        records: Vec<Vec<u8>>,
    ) -> Result<(Request, oneshot::Receiver<Result<Range<u64>>>)> {
        if let Some(reason) = self.refusing() {
            return Err(StorageError::Refusing { reason });
        }
        if self.shared().mode == Mode::Inspect {
            return Err(StorageError::ReadOnly);
        }
        if let Some(reason) = self.poisoned() {
            return Err(StorageError::Poisoned { reason });
        }
        let config = self.config();
        let mut bytes = 0usize;
        for record in &records {
            if record.is_empty() {
                return Err(StorageError::EmptyRecord);
            }
            if record.len() > config.max_record_bytes as usize {
                return Err(StorageError::RecordTooLarge {
                    bytes: record.len(),
                    max: config.max_record_bytes,
                });
            }
            bytes += frame_bytes(record.len());
        }
        if records.is_empty()
            || records.len() > config.max_batch_records
            || bytes > config.max_batch_bytes
        {
            return Err(StorageError::AppendTooLarge {
                records: records.len(),
                bytes,
                max_records: config.max_batch_records,
                max_bytes: config.max_batch_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        Ok((
            Request::Append {
                records,
                bytes,
                reply,
            },
            rx,
        ))
    }

    /// The record at `offset`.
    pub fn read(&self, offset: u64) -> Result<Vec<u8>> {
        let shared = self.shared();
        faults::check(&shared.faults, FaultPoint::RecordRead, &shared.dir)
            .map_err(StorageError::io("read record", &shared.dir))?;
        let mut batch = shared.read_batch(offset, 1, 0)?;
        match batch.pop() {
            Some(record) => Ok(record.payload),
            None => {
                let stats = self.stats();
                Err(StorageError::OffsetOutOfRange {
                    offset,
                    start: stats.start_offset,
                    next: stats.next_offset,
                })
            }
        }
    }

    /// Up to `max_records` consecutive records from `from` (fewer at a segment's end or
    /// when `max_bytes` would be passed; at least one if `from` is readable; none at the head).
    pub fn read_batch(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>> {
        self.shared().read_batch(from, max_records, max_bytes)
    }

    /// Every record from `from` to the current head, in order, read in batches.
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = Result<LogRecord>> + '_ {
        let end = self.next_offset();
        let mut next = from;
        let mut pending = std::collections::VecDeque::new();
        std::iter::from_fn(move || {
            if pending.is_empty() && next < end {
                match self.read_batch(next, 1024, 1 << 20) {
                    Ok(batch) => pending.extend(batch.into_iter().filter(|r| r.offset < end)),
                    Err(e) => {
                        next = end;
                        return Some(Err(e));
                    }
                }
            }
            let record = pending.pop_front()?;
            next = record.offset + 1;
            Some(Ok(record))
        })
    }

    pub fn start_offset(&self) -> u64 {
        self.shared().state.read().start_offset()
    }

    pub fn next_offset(&self) -> u64 {
        self.shared().state.read().next_offset()
    }

    pub fn stats(&self) -> LogStats {
        self.shared().stats()
    }

    /// Why the log takes no appends until it has healed, if it does: an fsync failed (what
    /// the disk holds is only known again after a rescan), or it opened read-only.
    pub fn poisoned(&self) -> Option<String> {
        self.shared().poisoned()
    }

    /// Whether batch writes are failing now (none succeeded since the latest failure).
    pub fn write_failure(&self) -> Option<WriteFailure> {
        if !self.shared().write_failing.load(Ordering::Acquire) {
            return None;
        }
        self.shared().write_failure.lock().clone()
    }

    /// Refuses new appends (`Some`, with the reason they get) or takes them again
    /// (`None`). Appends already handed to the writer go on.
    pub fn set_refusing(&self, reason: Option<String>) {
        let mut refusing = self.shared().refusing.lock();
        match (&*refusing, &reason) {
            (None, Some(reason)) => tracing::error!(%reason, "the log refuses writes"),
            (Some(_), None) => tracing::info!("the log takes writes again"),
            _ => {}
        }
        *refusing = reason;
    }

    /// Why new appends are refused, if they are.
    pub fn refusing(&self) -> Option<String> {
        self.shared().refusing.lock().clone()
    }

    /// Follows the log from `from`: the tail yields records as soon as they are published.
    pub fn subscribe(&self, from: u64) -> Tail {
        Tail {
            shared: self.handle.shared.clone(),
            committed: self.handle.shared.committed.subscribe(),
            next: from,
        }
    }

    /// The sealed segments, oldest first (the active segment is never listed).
    pub fn sealed_segments(&self) -> Result<Vec<SealedSegment>> {
        let state = self.shared().state.read();
        let sealed = &state.segments[..state.segments.len() - 1];
        sealed
            .iter()
            .map(|seg| {
                let modified = seg
                    .file
                    .metadata()
                    .and_then(|m| m.modified())
                    .map_err(StorageError::io("stat segment", &seg.path))?;
                Ok(SealedSegment {
                    base: seg.base,
                    next_offset: seg.next_offset(),
                    bytes: seg.end_pos,
                    modified,
                })
            })
            .collect()
    }

    /// Deletes every sealed segment whose records all lie below `offset`. The active
    /// segment is never deleted, so everything at or above `offset` stays readable.
    pub fn remove_segments_below(&self, offset: u64) -> Result<RetentionReport> {
        let removed: Vec<SegmentMeta> = {
            let mut state = self.shared().state.write();
            let count = state
                .segments
                .windows(2)
                .take_while(|pair| pair[1].base <= offset)
                .count();
            state.segments.drain(..count).collect()
        };
        let mut report = RetentionReport {
            start_offset: self.start_offset(),
            ..Default::default()
        };
        for seg in &removed {
            std::fs::remove_file(&seg.path)
                .map_err(StorageError::io("remove segment", &seg.path))?;
            report.removed_segments += 1;
            report.removed_bytes += seg.end_pos;
            tracing::info!(segment = %seg.path.display(), below = offset, "retention removed segment");
        }
        if !removed.is_empty() {
            sync_dir(self.dir(), &self.shared().faults)?;
        }
        Ok(report)
    }
}

/// Records handed to the writer: resolves to their offsets once they are durable (or
/// to the error that kept them from it).
pub struct Appending {
    reply: oneshot::Receiver<Result<Range<u64>>>,
}

impl std::future::Future for Appending {
    type Output = Result<Range<u64>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.reply)
            .poll(cx)
            .map(|reply| reply.map_err(|_| StorageError::Closed)?)
    }
}

/// A reader following the log from an offset; woken by the writer, never by a timer.
pub struct Tail {
    shared: Arc<Shared>,
    committed: watch::Receiver<u64>,
    next: u64,
}

impl Tail {
    /// The offset the next batch starts at.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next records after [`Tail::position`], waiting until there is at least one.
    /// Fails with [`StorageError::Closed`] once the log is closed and everything is read.
    pub async fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>> {
        loop {
            let committed = *self.committed.borrow_and_update();
            if self.next < committed {
                let batch = self
                    .shared
                    .read_batch(self.next, max_records.max(1), max_bytes)?;
                let last = batch.last().expect("published records are readable");
                self.next = last.offset + 1;
                return Ok(batch);
            }
            if self.shared.closed.load(Ordering::SeqCst) {
                return Err(StorageError::Closed);
            }
            // The sender lives as long as `shared`: this only wakes on a change (or on
            // the close, which also marks one).
            let _ = self.committed.changed().await;
        }
    }
}

/// Segment bases in `dir`, sorted; with `clean`, leftover pre-written files go.
fn list_segments(dir: &Path, clean: bool) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(StorageError::io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(StorageError::io("list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(PREALLOC_SUFFIX) {
            if clean {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(StorageError::io("remove", &path))?;
            }
        } else if let Some(base) = parse_segment_name(&name) {
            bases.push(base);
        } else {
            tracing::warn!(file = %entry.path().display(), "ignoring unknown file in log directory");
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// The base offset a segment file name (`{base:020}.log`) gives.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_suffix(SEGMENT_SUFFIX)
        .filter(|digits| digits.len() == 20)
        .and_then(|digits| digits.parse::<u64>().ok())
}

/// What [`open_segments`] found and kept.
#[derive(Default)]
pub(crate) struct Opened {
    pub segments: Vec<SegmentMeta>,
    pub cuts: Vec<TailCut>,
    pub leftovers: Vec<PathBuf>,
}

/// A segment file read at open.
struct Found {
    base: u64,
    path: PathBuf,
    file: File,
    scan: SegmentScan,
}

/// Scans every segment and keeps the log they make (see the module's rules); in
/// `Mode::Write` it cuts a torn tail and removes leftovers of failed rolls, and creates
/// the first segment of an empty directory.
pub(crate) fn open_segments(
    dir: &Path,
    config: &LogConfig,
    faults: &SharedFaults,
    mode: Mode,
) -> Result<Opened> {
    let write = mode == Mode::Write;
    let mut bases = list_segments(dir, write)?;
    if bases.is_empty() {
        if !write {
            return Err(StorageError::NoSegments {
                dir: dir.to_path_buf(),
            });
        }
        create_first_segment(dir, config, faults)?;
        bases.push(0);
    }
    let mut kept: Vec<Found> = Vec::with_capacity(bases.len());
    let mut opened = Opened::default();
    for base in bases {
        let path = segment_path(dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&path)
            .map_err(StorageError::io("open segment", &path))?;
        let scan =
            scan_segment(&file, base, config).map_err(StorageError::io("scan segment", &path))?;
        if let Err(HeaderProblem::UnsupportedVersion(version)) = scan.header {
            return Err(StorageError::UnsupportedFormat {
                segment: path,
                version,
                supported: SEGMENT_FORMAT_VERSION,
            });
        }
        if let Some(prev) = kept.last() {
            let expected = prev.base + prev.scan.records;
            if is_leftover(&scan, base, prev.base, expected) {
                tracing::warn!(
                    segment = %path.display(), log_ends_at = expected,
                    "a segment file holding no record, left by a roll that failed: {}",
                    if write { "removing it" } else { "a writable open removes it" }
                );
                opened.leftovers.push(path);
                continue;
            }
            if let Some(damage) = &prev.scan.damage {
                // A segment follows: the damage is not at the end of the log.
                return Err(corrupt(
                    &prev.path,
                    expected,
                    damage.position,
                    damage.reason.clone(),
                ));
            }
            if base != expected {
                return Err(StorageError::SegmentGap {
                    segment: path,
                    expected,
                    found: base,
                    records: scan.records,
                });
            }
        }
        kept.push(Found {
            base,
            path,
            file,
            scan,
        });
    }
    if write && !opened.leftovers.is_empty() {
        for path in &opened.leftovers {
            std::fs::remove_file(path)
                .map_err(StorageError::io("remove leftover segment", path))?;
        }
        sync_dir(dir, faults)?;
    }
    let last = kept.len() - 1;
    for (i, found) in kept.into_iter().enumerate() {
        opened.segments.push(accept_segment(
            found,
            i == last,
            mode,
            faults,
            &mut opened.cuts,
        )?);
    }
    Ok(opened)
}

/// A scanned segment as the log holds it: damage in a sealed segment, or with a valid
/// frame after it, is corruption; at the end of the last segment it is a torn tail, cut
/// (in `Mode::Write`) back to the last whole record.
fn accept_segment(
    found: Found,
    is_last: bool,
    mode: Mode,
    faults: &SharedFaults,
    cuts: &mut Vec<TailCut>,
) -> Result<SegmentMeta> {
    let Found {
        base,
        path,
        file,
        scan,
    } = found;
    if let Some(damage) = &scan.damage {
        let offset = base + scan.records;
        if !is_last || damage.valid_frame_at.is_some() {
            return Err(corrupt(
                &path,
                offset,
                damage.position,
                damage.reason.clone(),
            ));
        }
        if mode == Mode::Write {
            cut_tail(&file, &path, base, &scan, faults)?;
        }
        record_cut(
            cuts,
            &path,
            offset,
            damage.position,
            damage.dirty_end.saturating_sub(damage.position),
            damage.reason.clone(),
            mode,
        );
    }
    Ok(SegmentMeta {
        base,
        path,
        file: Arc::new(file),
        records: scan.records,
        end_pos: scan.end_pos,
        index: scan.index,
    })
}

/// Zeroes what lies past the last whole record of the active segment (giving it a
/// header again when it had none), and makes that durable.
fn cut_tail(
    file: &File,
    path: &Path,
    base: u64,
    scan: &SegmentScan,
    faults: &SharedFaults,
) -> Result<()> {
    let header = scan.header.is_err().then_some(base);
    let from = if header.is_none() { scan.end_pos } else { 0 };
    zero_from(file, path, from, scan.file_len, header, faults)
}

/// Zeroes the file's bytes from `from` to the last that is not zero (below `file_len`),
/// writes the header of segment `header` when asked, and makes that durable.
fn zero_from(
    file: &File,
    path: &Path,
    from: u64,
    file_len: u64,
    header: Option<u64>,
    faults: &SharedFaults,
) -> Result<()> {
    let io = |op| StorageError::io(op, path);
    let dirty_end = dirty_end(file, from, file_len).map_err(io("inspect segment"))?;
    faults::check(faults, FaultPoint::BatchWrite, path)
        .and_then(|()| write_zeros(file, from, dirty_end, None))
        .map_err(io("cut torn tail"))?;
    if let Some(base) = header {
        faults::check(faults, FaultPoint::SegmentHeader, path)
            .and_then(|()| file.write_all_at(&encode_segment_header(base), 0))
            .map_err(io("rewrite segment header"))?;
    }
    faults::check(faults, FaultPoint::BatchSync, path)
        .and_then(|()| file.sync_data())
        .map_err(io("cut torn tail"))
}

/// Creates the first segment of an empty log, pre-written when the disk has room for
/// it; a failed pre-write leaves a plain segment instead, never a partial file.
fn create_first_segment(dir: &Path, config: &LogConfig, faults: &SharedFaults) -> Result<()> {
    if config.preallocate && crate::writer::room_to_prewrite(dir, config.segment_bytes) {
        match create_segment(dir, 0, config.segment_bytes, faults) {
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "could not pre-write the first segment; creating a plain one")
            }
        }
    }
    create_segment(dir, 0, 0, faults).map(|_| ())
}

/// Creates a segment file holding only its header, pre-written with zeros up to
/// `prealloc_bytes`, and makes its directory entry durable. On any failure the file is
/// removed again (a failed roll must leave nothing behind that open could mistake for a
/// part of the log); when even that fails, the error says so.
pub(crate) fn create_segment(
    dir: &Path,
    base: u64,
    prealloc_bytes: u64,
    faults: &SharedFaults,
) -> Result<File> {
    let path = segment_path(dir, base);
    let created = faults::check(faults, FaultPoint::SegmentCreate, &path).and_then(|()| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
    });
    let file = created.map_err(StorageError::io("create segment", &path))?;
    let prewritten = if prealloc_bytes > SEGMENT_HEADER_BYTES as u64 {
        faults::check(faults, FaultPoint::PreallocWrite, &path)
            .and_then(|()| write_zeros(&file, SEGMENT_HEADER_BYTES as u64, prealloc_bytes, None))
    } else {
        Ok(())
    };
    let initialised = prewritten
        .and_then(|()| faults::check(faults, FaultPoint::SegmentHeader, &path))
        .and_then(|()| file.write_all_at(&encode_segment_header(base), 0))
        .and_then(|()| faults::check(faults, FaultPoint::SegmentSync, &path))
        .and_then(|()| file.sync_all())
        .map_err(StorageError::io("initialise segment", &path))
        .and_then(|()| sync_dir(dir, faults));
    match initialised {
        Ok(()) => Ok(file),
        Err(e) => Err(abandon_segment(dir, &path, faults, e)),
    }
}

/// Removes a segment file a failed roll created, returning the roll's error — or, if
/// the file could not be removed, an error saying so (the caller must then stop taking
/// appends: the file would break the log's order at the next open).
pub(crate) fn abandon_segment(
    dir: &Path,
    path: &Path,
    faults: &SharedFaults,
    cause: StorageError,
) -> StorageError {
    let removed = match std::fs::remove_file(path) {
        Ok(()) => sync_dir(dir, faults),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove failed segment", path)(e)),
    };
    match removed {
        Ok(()) => cause,
        Err(e) => StorageError::LeftoverSegment {
            segment: path.to_path_buf(),
            cause: cause.to_string(),
            reason: e.to_string(),
        },
    }
}

/// Writes zeros over `[from, to)` in 1 MiB writes, giving up early when `stop` is set.
pub(crate) fn write_zeros(
    file: &File,
    from: u64,
    to: u64,
    stop: Option<&AtomicBool>,
) -> std::io::Result<()> {
    static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
    let mut pos = from;
    while pos < to {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "stopped",
            ));
        }
        let n = (to - pos).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

fn record_cut(
    cuts: &mut Vec<TailCut>,
    path: &Path,
    offset: u64,
    position: u64,
    bytes: u64,
    reason: String,
    mode: Mode,
) {
    match mode {
        Mode::Write => tracing::warn!(
            segment = %path.display(), offset, position, bytes, reason = %reason,
            "cut a torn tail of the log back to the last whole record"
        ),
        Mode::Inspect => tracing::info!(
            segment = %path.display(), offset, position, bytes, reason = %reason,
            "the log has a torn tail; it ends at the last whole record (serve cuts it)"
        ),
    }
    cuts.push(TailCut {
        segment: path.to_path_buf(),
        offset,
        position,
        bytes,
        reason,
    });
}

/// The pause before heal attempt `attempt` (counted from 0): doubling from
/// [`FIRST_HEAL_PAUSE`] up to [`MAX_HEAL_PAUSE`].
fn heal_pause(attempt: u32) -> Duration {
    FIRST_HEAL_PAUSE
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_HEAL_PAUSE)
}

/// The healer thread: whenever the log is poisoned, tries to heal it, pausing longer
/// after each failure, at most `heal_attempts` times (then the log stays read-only
/// until a restart, and says so).
fn run_healer(shared: Arc<Shared>, lock: Arc<DirLock>) {
    let mut heal = shared.heal.lock();
    loop {
        if heal.stop {
            return;
        }
        let poisoned = shared.poisoned().is_some();
        if !poisoned || heal.attempts >= shared.config.heal_attempts {
            shared.heal_wake.wait(&mut heal);
            continue;
        }
        let pause = heal_pause(heal.attempts);
        shared.heal_wake.wait_for(&mut heal, pause);
        if heal.stop {
            return;
        }
        heal.attempts += 1;
        let attempt = heal.attempts;
        let outcome = parking_lot::MutexGuard::unlocked(&mut heal, || shared.heal_once(&lock));
        if let Some(observer) = &shared.config.observer {
            observer.healed(outcome.is_ok());
        }
        match outcome {
            Ok(()) => {
                shared.heals.fetch_add(1, Ordering::Relaxed);
                tracing::info!(dir = %shared.dir.display(), attempt, "the log healed: it takes writes again");
            }
            Err(reason) => {
                shared.failed_heals.fetch_add(1, Ordering::Relaxed);
                let left = shared.config.heal_attempts - attempt;
                tracing::warn!(dir = %shared.dir.display(), attempt, left, %reason, "healing the log failed");
                if left == 0 {
                    let mut poisoned = shared.poisoned.lock();
                    let why = poisoned.take().unwrap_or_default();
                    *poisoned = Some(format!(
                        "{why}; healing gave up after {attempt} attempts (the last: {reason}): restart the server"
                    ));
                    tracing::error!(dir = %shared.dir.display(), "the log gave up healing; it stays read-only until restarted");
                }
            }
        }
    }
}

impl Shared {
    /// Reopens the log for writing as a restart would, keeping every published record:
    /// stops the writer, removes segment files the log does not hold (leftovers of failed
    /// rolls; one holding a record is refused), zeroes what lies past the active
    /// segment's published end on a fresh file handle, checks that the published records
    /// read back whole, and starts a new writer.
    fn heal_once(self: &Arc<Self>, lock: &Arc<DirLock>) -> Result<(), String> {
        self.stop_writer();
        self.remove_unheld_segments().map_err(|e| e.to_string())?;
        let (path, base, records, end_pos) = {
            let state = self.state.read();
            let active = state.segments.last().expect("never empty");
            (
                active.path.clone(),
                active.base,
                active.records,
                active.end_pos,
            )
        };
        let io = |op| StorageError::io(op, &path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("reopen segment"))
            .map_err(|e| e.to_string())?;
        // Read what the disk holds, not what the page cache kept of writes whose
        // writeback failed (a failed fsync leaves such pages clean and readable).
        drop_cached_pages(&file);
        let file_len = file
            .metadata()
            .map_err(io("inspect segment"))
            .map_err(|e| e.to_string())?
            .len();
        // What lies past the published end was never acknowledged: zero it, whatever
        // the rest of the file holds. Nothing below that end is ever written here.
        zero_from(&file, &path, end_pos, file_len, None, &self.faults)
            .map_err(|e| e.to_string())?;
        let after = scan_segment(&file, base, &self.config)
            .map_err(io("scan segment"))
            .map_err(|e| e.to_string())?;
        if after.header.is_err()
            || after.records != records
            || after.end_pos != end_pos
            || after.damage.is_some()
        {
            return Err(format!(
                "{} no longer reads back as the {records} records it acknowledged \
                 (found {} records ending at byte {}, expected byte {end_pos}): restart the server \
                 so it rebuilds from what the disk holds",
                path.display(),
                after.records,
                after.end_pos
            ));
        }
        {
            let mut state = self.state.write();
            let active = state.active_mut();
            active.file = Arc::new(file);
            active.index = after.index;
        }
        self.start_writer(lock).map_err(|e| e.to_string())?;
        *self.poisoned.lock() = None;
        Ok(())
    }

    /// Removes segment files in the directory that the log does not hold and that hold
    /// no record (what a failed roll or an interrupted open left).
    fn remove_unheld_segments(&self) -> Result<()> {
        let (held, start): (std::collections::HashSet<u64>, u64) = {
            let state = self.state.read();
            let held = state.segments.iter().map(|s| s.base).collect();
            (held, state.start_offset())
        };
        let mut removed = false;
        // Files below the start are retention's (it removes them itself).
        for base in list_segments(&self.dir, false)? {
            if held.contains(&base) || base < start {
                continue;
            }
            let path = segment_path(&self.dir, base);
            let file = File::open(&path).map_err(StorageError::io("open segment", &path))?;
            let scan = scan_segment(&file, base, &self.config)
                .map_err(StorageError::io("scan segment", &path))?;
            if scan.holds_records() {
                return Err(StorageError::SegmentGap {
                    segment: path,
                    expected: self.state.read().next_offset(),
                    found: base,
                    records: scan.records,
                });
            }
            std::fs::remove_file(&path)
                .map_err(StorageError::io("remove leftover segment", &path))?;
            tracing::warn!(segment = %path.display(), "removed a segment file left by a failed roll");
            removed = true;
        }
        if removed {
            sync_dir(&self.dir, &self.faults)?;
        }
        Ok(())
    }
}

/// Asks the kernel to drop `file`'s clean cached pages, so the next reads come from the
/// disk (best effort: a failure leaves the cache as it was).
fn drop_cached_pages(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}
