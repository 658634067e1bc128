//! The [`Log`] handle: opening the log (see `segments` for what opening decides),
//! appends handed to the group-commit writer (`writer`), reads by offset and tail
//! subscriptions over the shared state (`shared`, `tail`), the disk watch's refusal,
//! and retention's deletion of sealed segments. The healer (`heal`) runs beside it
//! while the handle lives.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use crate::error::{Result, StorageError};
use crate::faults::{self, FaultPoint, SharedFaults};
use crate::files::{sync_dir, DirLock};
use crate::format::frame_bytes;
use crate::heal::run_healer;
use crate::segments::{open_segments, Mode, Opened, SegmentMeta, TailCut};
use crate::shared::{HealState, LogRecord, LogStats, Request, Shared, State, WriteFailure};
use crate::tail::Tail;
use crate::writer;
use crate::LogConfig;

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
        writer::stop(&self.shared);
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
                writer::start(&shared, &lock)?;
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
        Tail::new(self.handle.shared.clone(), from)
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
