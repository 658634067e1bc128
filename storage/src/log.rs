//! The segmented log: opening (with torn-tail recovery), reads by offset, tail
//! subscriptions, retention and the [`Log`] handle through which records are appended.
//!
//! Invariants, relied on by every reader and by the writer:
//! - `State::segments` is never empty, sorted by base offset, and contiguous: each
//!   segment's base is the previous segment's `base + records`. The last one is active.
//! - Everything a `SegmentMeta` counts (`records`, `end_pos`, `index`) is published: written,
//!   and under `FsyncPolicy::Always` also fsynced. Readers never see more.
//! - `committed` (the watch channel) is sent only after the state was updated, so a woken
//!   subscriber always finds the records it was woken for.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use crate::datadir::{sync_dir, DirLock};
use crate::error::{Result, StorageError};
use crate::format::{
    encode_segment_header, frame_bytes, inspect_rest, read_segment_header, Frame, FrameReader,
    HeaderProblem, SEGMENT_FORMAT_VERSION, SEGMENT_HEADER_BYTES,
};
use crate::writer::{self, Request};
use crate::LogConfig;

pub const SEGMENT_SUFFIX: &str = ".log";
pub(crate) const PREALLOC_SUFFIX: &str = ".prealloc";

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

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub config: LogConfig,
    pub state: RwLock<State>,
    tail_truncations: AtomicU64,
    /// Why the log refuses writes, once an fsync failed (see `writer`).
    poisoned: Mutex<Option<String>>,
    /// Why the log refuses new appends for now (a disk below its watermark).
    refusing: Mutex<Option<String>>,
}

pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}{SEGMENT_SUFFIX}"))
}

impl Shared {
    /// Reads up to `max_records` records from `from`, stopping before the byte budget is
    /// passed (but always returning at least one record when `from` is readable), and
    /// never past the end of the segment `from` is in.
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

    pub fn poison(&self, reason: String) {
        self.poisoned.lock().get_or_insert(reason);
    }

    pub fn stats(&self) -> LogStats {
        let state = self.state.read();
        LogStats {
            start_offset: state.start_offset(),
            next_offset: state.next_offset(),
            bytes: state.segments.iter().map(|s| s.end_pos).sum(),
            segments: state.segments.len(),
            tail_truncations: self.tail_truncations.load(Ordering::Relaxed),
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
    tx: Option<flume::Sender<Request>>,
    committed: watch::Receiver<u64>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!(dir = %self.shared.dir.display(), "log writer thread panicked");
            }
        }
    }
}

impl Log {
    pub(crate) fn open(
        dir: PathBuf,
        config: LogConfig,
        lock: Arc<DirLock>,
    ) -> Result<(Log, OpenReport)> {
        config.validate()?;
        let (segments, cuts) = open_segments(&dir, &config)?;
        let state = State { segments };
        let report = OpenReport {
            segments: state.segments.len(),
            start_offset: state.start_offset(),
            next_offset: state.next_offset(),
            cuts,
        };
        let next = state.next_offset();
        let shared = Arc::new(Shared {
            dir,
            state: RwLock::new(state),
            tail_truncations: AtomicU64::new(report.cuts.len() as u64),
            poisoned: Mutex::new(None),
            refusing: Mutex::new(None),
            config,
        });
        let (committed_tx, committed) = watch::channel(next);
        let (tx, rx) = flume::bounded(shared.config.queue_depth);
        let writer = writer::spawn(shared.clone(), rx, committed_tx, lock)?;
        let handle = Handle {
            shared,
            tx: Some(tx),
            committed,
            writer: Some(writer),
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
        self.sender()?
            .send_async(request)
            .await
            .map_err(|_| StorageError::Closed)?;
        Ok(Appending { reply })
    }

    /// [`Log::append_batch`] for threads outside an async runtime (offline tools).
    pub fn append_batch_blocking(&self, records: Vec<Vec<u8>>) -> Result<Range<u64>> {
        let (request, reply) = self.append_request(records)?;
        self.sender()?
            .send(request)
            .map_err(|_| StorageError::Closed)?;
        reply.blocking_recv().map_err(|_| StorageError::Closed)?
    }

    /// Forces an fsync of everything written so far (useful under `interval_ms` / `never`).
    pub async fn sync(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send_async(Request::Sync { reply })
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    fn sender(&self) -> Result<&flume::Sender<Request>> {
        self.handle.tx.as_ref().ok_or(StorageError::Closed)
    }

    #[allow(clippy::type_complexity)]
    fn append_request(
        &self,
        records: Vec<Vec<u8>>,
    ) -> Result<(Request, oneshot::Receiver<Result<Range<u64>>>)> {
        if let Some(reason) = self.refusing() {
            return Err(StorageError::Refusing { reason });
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
        let mut batch = self.shared().read_batch(offset, 1, 0)?;
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

    /// Why the log refuses appends, if it does: an fsync failed, and what the disk holds
    /// is only known again after a reopen rescans it.
    pub fn poisoned(&self) -> Option<String> {
        self.shared().poisoned()
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
            committed: self.handle.committed.clone(),
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
            sync_dir(self.dir())?;
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
            if self.committed.changed().await.is_err() && self.next >= *self.committed.borrow() {
                return Err(StorageError::Closed);
            }
        }
    }
}

/// Lists segment files by base offset, removing leftover pre-written files.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(StorageError::io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(StorageError::io("list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(PREALLOC_SUFFIX) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(StorageError::io("remove", &path))?;
        } else if let Some(base) = name
            .strip_suffix(SEGMENT_SUFFIX)
            .filter(|digits| digits.len() == 20)
            .and_then(|digits| digits.parse::<u64>().ok())
        {
            bases.push(base);
        } else {
            tracing::warn!(file = %entry.path().display(), "ignoring unknown file in log directory");
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn open_segments(dir: &Path, config: &LogConfig) -> Result<(Vec<SegmentMeta>, Vec<TailCut>)> {
    let mut bases = list_segments(dir)?;
    if bases.is_empty() {
        let prealloc = if config.preallocate {
            config.segment_bytes
        } else {
            0
        };
        create_segment(dir, 0, prealloc)?;
        bases.push(0);
    }
    let mut segments: Vec<SegmentMeta> = Vec::with_capacity(bases.len());
    let mut cuts = Vec::new();
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        if let Some(prev) = segments.last() {
            if prev.next_offset() != base {
                return Err(StorageError::SegmentGap {
                    segment: path,
                    expected: prev.next_offset(),
                    found: base,
                });
            }
        }
        let is_last = i + 1 == bases.len();
        segments.push(open_segment(path, base, is_last, config, &mut cuts)?);
    }
    Ok((segments, cuts))
}

/// Creates a segment file holding only its header, pre-written with zeros up to
/// `prealloc_bytes`, and makes its directory entry durable.
pub(crate) fn create_segment(dir: &Path, base: u64, prealloc_bytes: u64) -> Result<File> {
    let path = segment_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(StorageError::io("create segment", &path))?;
    write_zeros(&file, SEGMENT_HEADER_BYTES as u64, prealloc_bytes, None)
        .and_then(|()| file.write_all_at(&encode_segment_header(base), 0))
        .and_then(|()| file.sync_all())
        .map_err(StorageError::io("initialise segment", &path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Writes zeros over `[from, to)` in 1 MiB writes, giving up early when `stop` is set.
pub(crate) fn write_zeros(
    file: &File,
    from: u64,
    to: u64,
    stop: Option<&std::sync::atomic::AtomicBool>,
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

/// Opens and scans one segment: rebuilds its sparse index, finds its end, and cuts a torn
/// tail of the last segment. Any damage followed by a valid frame is corruption.
fn open_segment(
    path: PathBuf,
    base: u64,
    is_last: bool,
    config: &LogConfig,
    cuts: &mut Vec<TailCut>,
) -> Result<SegmentMeta> {
    let io = |op| StorageError::io(op, &path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io("open segment"))?;
    let file_len = file.metadata().map_err(io("stat segment"))?.len();
    let max = config.max_record_bytes;
    match read_segment_header(&file, file_len, base).map_err(io("read segment header"))? {
        Ok(()) => {}
        Err(HeaderProblem::UnsupportedVersion(version)) => {
            return Err(StorageError::UnsupportedFormat {
                segment: path,
                version,
                supported: SEGMENT_FORMAT_VERSION,
            });
        }
        Err(HeaderProblem::Damaged(reason)) => {
            let rest = inspect_rest(&file, 0, file_len, max).map_err(io("inspect segment"))?;
            if !is_last || rest.valid_frame_at.is_some() {
                return Err(corrupt(&path, base, 0, reason));
            }
            // A segment created by a roll that crashed before its header was durable: it
            // never held a record. Give it a header again.
            write_zeros(&file, 0, rest.dirty_end, None)
                .and_then(|()| file.write_all_at(&encode_segment_header(base), 0))
                .and_then(|()| file.sync_data())
                .map_err(io("rewrite segment header"))?;
            record_cut(cuts, &path, base, 0, rest.dirty_end, reason);
            return Ok(SegmentMeta {
                base,
                path,
                file: Arc::new(file),
                records: 0,
                end_pos: SEGMENT_HEADER_BYTES as u64,
                index: Vec::new(),
            });
        }
    }

    let interval = u64::from(config.index_interval_records);
    let mut reader = FrameReader::new(&file, SEGMENT_HEADER_BYTES as u64, file_len, max);
    let mut index = Vec::new();
    let mut records = 0u64;
    let stop = loop {
        let pos = reader.position();
        match reader.next_frame().map_err(io("scan segment"))? {
            Frame::Record(_) => {
                if records.is_multiple_of(interval) {
                    index.push(pos);
                }
                records += 1;
            }
            Frame::End => break None,
            Frame::Zero => break Some((pos, None)),
            Frame::Invalid(reason) => break Some((pos, Some(reason))),
        }
    };
    let end_pos = reader.position();
    if let Some((pos, reason)) = stop {
        let rest = inspect_rest(&file, pos, file_len, max).map_err(io("inspect segment"))?;
        let clean = reason.is_none() && rest.dirty_end == pos;
        if !clean {
            let reason =
                reason.unwrap_or_else(|| "zero frame header followed by non-zero bytes".into());
            let offset = base + records;
            if !is_last || rest.valid_frame_at.is_some() {
                return Err(corrupt(&path, offset, pos, reason));
            }
            write_zeros(&file, pos, rest.dirty_end, None)
                .and_then(|()| file.sync_data())
                .map_err(io("cut torn tail"))?;
            record_cut(cuts, &path, offset, pos, rest.dirty_end - pos, reason);
        }
    }
    Ok(SegmentMeta {
        base,
        path,
        file: Arc::new(file),
        records,
        end_pos,
        index,
    })
}

fn record_cut(
    cuts: &mut Vec<TailCut>,
    path: &Path,
    offset: u64,
    position: u64,
    bytes: u64,
    reason: String,
) {
    tracing::warn!(
        segment = %path.display(), offset, position, bytes, reason = %reason,
        "cut a torn tail of the log back to the last whole record"
    );
    cuts.push(TailCut {
        segment: path.to_path_buf(),
        offset,
        position,
        bytes,
        reason,
    });
}
