//! The group-commit writer: one thread owns the active segment. Appenders queue their
//! records (a bounded queue: when it is full they wait); the writer takes as many queued
//! appends as fit one batch, writes them with one positioned write, issues one
//! `fdatasync` for all of them, publishes the new head and only then answers every
//! appender of the batch.
//!
//! Failure rules (the PostgreSQL "fsyncgate" lesson): a failed *write* zeroes what it may
//! have left behind and fails only its batch, so a full disk heals by itself; a failed
//! *fsync* leaves the page cache in an unknown state, so the log is poisoned and refuses
//! every later append until it is reopened and rescanned.
//!
//! A background pre-writer keeps the next segment ready, zero-filled and fsynced, so a
//! batch's fsync flushes only data blocks: overwriting pre-written blocks needs no journal
//! commit for a changed file size.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::datadir::{sync_dir, DirLock};
use crate::error::{Result, StorageError};
use crate::format::{encode_frame, encode_segment_header, SEGMENT_HEADER_BYTES};
use crate::log::{create_segment, segment_path, write_zeros, SegmentMeta, Shared, PREALLOC_SUFFIX};
use crate::FsyncPolicy;

pub(crate) enum Request {
    Append {
        records: Vec<Vec<u8>>,
        /// Framed size of `records`.
        bytes: usize,
        reply: oneshot::Sender<Result<Range<u64>>>,
    },
    Sync {
        reply: oneshot::Sender<Result<()>>,
    },
}

impl Request {
    fn size(&self) -> (usize, usize) {
        match self {
            Request::Append { records, bytes, .. } => (records.len(), *bytes),
            Request::Sync { .. } => (0, 0),
        }
    }
}

pub(crate) fn spawn(
    shared: Arc<Shared>,
    rx: flume::Receiver<Request>,
    committed: watch::Sender<u64>,
    lock: Arc<DirLock>,
) -> Result<JoinHandle<()>> {
    let (active, pos, next_offset) = {
        let state = shared.state.read();
        let seg = state.segments.last().expect("never empty");
        (
            Active {
                file: seg.file.clone(),
                path: seg.path.clone(),
                base: seg.base,
            },
            seg.end_pos,
            seg.next_offset(),
        )
    };
    let prealloc = shared
        .config
        .preallocate
        .then(|| Preallocator::start(&shared.dir, shared.config.segment_bytes));
    let writer = Writer {
        rx,
        committed,
        active,
        pos,
        next_offset,
        buf: Vec::with_capacity(shared.config.max_batch_bytes),
        staged: Staged::default(),
        synced: true,
        last_sync: Instant::now(),
        poisoned: None,
        prealloc,
        shared,
        _lock: lock,
    };
    std::thread::Builder::new()
        .name("sagalog-log-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| StorageError::io("spawn log writer", PathBuf::new())(e))
}

struct Active {
    file: Arc<File>,
    path: PathBuf,
    base: u64,
}

/// Records encoded into `Writer::buf` but not yet written and published.
#[derive(Default)]
struct Staged {
    records: u64,
    index: Vec<u64>,
    acks: Vec<(oneshot::Sender<Result<Range<u64>>>, Range<u64>)>,
}

struct Writer {
    shared: Arc<Shared>,
    rx: flume::Receiver<Request>,
    committed: watch::Sender<u64>,
    active: Active,
    /// Byte position just past the last published frame of the active segment.
    pos: u64,
    /// The offset of the first record not yet published.
    next_offset: u64,
    buf: Vec<u8>,
    staged: Staged,
    /// Nothing was written since the last fsync.
    synced: bool,
    last_sync: Instant,
    poisoned: Option<String>,
    prealloc: Option<Preallocator>,
    _lock: Arc<DirLock>,
}

impl Writer {
    fn run(mut self) {
        let (max_records, max_bytes) = (
            self.shared.config.max_batch_records,
            self.shared.config.max_batch_bytes,
        );
        while let Some(first) = self.next_request() {
            let (mut records, mut bytes) = first.size();
            let mut batch = vec![first];
            while records < max_records && bytes < max_bytes {
                let Ok(request) = self.rx.try_recv() else {
                    break;
                };
                let (r, b) = request.size();
                records += r;
                bytes += b;
                batch.push(request);
            }
            self.process(batch);
        }
        if !self.synced && self.poisoned.is_none() {
            if let Err(e) = self.sync() {
                tracing::error!(error = %e, "final fsync of the log failed");
            }
        }
    }

    /// The next request; under `interval_ms` it also fsyncs when the interval ends idle.
    fn next_request(&mut self) -> Option<Request> {
        loop {
            match self.shared.config.fsync {
                FsyncPolicy::IntervalMs(ms) if !self.synced && self.poisoned.is_none() => {
                    let deadline = self.last_sync + Duration::from_millis(ms);
                    match self.rx.recv_deadline(deadline) {
                        Ok(request) => return Some(request),
                        Err(flume::RecvTimeoutError::Timeout) => {
                            // A failure poisons the log; appenders learn it on their next append.
                            let _ = self.sync();
                        }
                        Err(flume::RecvTimeoutError::Disconnected) => return None,
                    }
                }
                _ => return self.rx.recv().ok(),
            }
        }
    }

    fn process(&mut self, batch: Vec<Request>) {
        let mut sync_waiters = Vec::new();
        for request in batch {
            match request {
                Request::Sync { reply } => sync_waiters.push(reply),
                Request::Append {
                    records,
                    bytes,
                    reply,
                } => self.stage(records, bytes, reply),
            }
        }
        let must_sync = !sync_waiters.is_empty()
            || match self.shared.config.fsync {
                FsyncPolicy::Always => true,
                FsyncPolicy::IntervalMs(ms) => {
                    self.last_sync.elapsed() >= Duration::from_millis(ms)
                }
                FsyncPolicy::Never => false,
            };
        let outcome = self.commit_staged(must_sync);
        for reply in sync_waiters {
            let _ = reply.send(outcome.clone().map_err(|reason| self.failure(reason)));
        }
    }

    /// Encodes one append into the batch buffer, sealing the active segment first when
    /// the append would not fit in it.
    fn stage(
        &mut self,
        records: Vec<Vec<u8>>,
        bytes: usize,
        reply: oneshot::Sender<Result<Range<u64>>>,
    ) {
        if let Some(reason) = &self.poisoned {
            let _ = reply.send(Err(StorageError::Poisoned {
                reason: reason.clone(),
            }));
            return;
        }
        let first = self.next_offset + self.staged.records;
        let full = self.pos + (self.buf.len() + bytes) as u64 > self.shared.config.segment_bytes;
        if full && first > self.active.base {
            if let Err(reason) = self.commit_staged(true).and_then(|()| self.roll()) {
                let _ = reply.send(Err(self.failure(reason)));
                return;
            }
        }
        let first = self.next_offset + self.staged.records;
        let interval = u64::from(self.shared.config.index_interval_records);
        for (i, record) in records.iter().enumerate() {
            if (first + i as u64 - self.active.base) % interval == 0 {
                self.staged.index.push(self.pos + self.buf.len() as u64);
            }
            encode_frame(&mut self.buf, record);
        }
        let count = records.len() as u64;
        self.staged.records += count;
        self.staged.acks.push((reply, first..first + count));
    }

    fn failure(&self, reason: String) -> StorageError {
        match &self.poisoned {
            Some(poison) => StorageError::Poisoned {
                reason: poison.clone(),
            },
            None => StorageError::WriteFailed {
                segment: self.active.path.clone(),
                reason,
            },
        }
    }

    /// Writes the staged batch, fsyncs it when asked, publishes it and answers its
    /// appenders. On failure every staged appender gets the error and nothing is published.
    fn commit_staged(&mut self, sync: bool) -> Result<(), String> {
        if self.staged.records == 0 {
            return if sync && !self.synced {
                self.sync()
            } else {
                Ok(())
            };
        }
        let started = Instant::now();
        let written = self.active.file.write_all_at(&self.buf, self.pos);
        if let Err(e) = written {
            let reason = format!(
                "write of {} bytes at byte {}: {e}",
                self.buf.len(),
                self.pos
            );
            self.discard_staged(&reason);
            return Err(reason);
        }
        self.synced = false;
        if let Some(observer) = &self.shared.config.observer {
            observer.batch_written(
                self.staged.records as usize,
                self.buf.len(),
                started.elapsed(),
            );
        }
        if sync {
            if let Err(reason) = self.sync() {
                self.fail_staged(&reason);
                return Err(reason);
            }
        }
        self.publish();
        Ok(())
    }

    fn publish(&mut self) {
        let staged = std::mem::take(&mut self.staged);
        let end_pos = self.pos + self.buf.len() as u64;
        {
            let mut state = self.shared.state.write();
            let seg = state.active_mut();
            debug_assert_eq!(
                seg.next_offset(),
                self.next_offset,
                "writer and state agree on the head"
            );
            seg.records += staged.records;
            seg.end_pos = end_pos;
            seg.index.extend_from_slice(&staged.index);
        }
        self.pos = end_pos;
        self.next_offset += staged.records;
        self.buf.clear();
        self.committed.send_replace(self.next_offset);
        for (reply, range) in staged.acks {
            let _ = reply.send(Ok(range));
        }
    }

    /// A write failed part-way: zero whatever it left so a crash cannot resurrect records
    /// that were never acknowledged, then fail the batch. The log stays usable.
    fn discard_staged(&mut self, reason: &str) {
        let end = self.pos + self.buf.len() as u64;
        let zeroed = write_zeros(&self.active.file, self.pos, end, None)
            .and_then(|()| self.active.file.sync_data());
        if let Err(e) = zeroed {
            self.poisoned = Some(format!(
                "clearing a failed write in {} failed: {e}",
                self.active.path.display()
            ));
        }
        tracing::error!(segment = %self.active.path.display(), reason, "log write failed; batch refused");
        self.fail_staged(reason);
    }

    fn fail_staged(&mut self, reason: &str) {
        let staged = std::mem::take(&mut self.staged);
        self.buf.clear();
        for (reply, _) in staged.acks {
            let _ = reply.send(Err(self.failure(reason.to_string())));
        }
    }

    fn sync(&mut self) -> Result<(), String> {
        if let Some(poison) = &self.poisoned {
            return Err(poison.clone());
        }
        let started = Instant::now();
        if let Err(e) = self.active.file.sync_data() {
            let reason = format!("fdatasync of {} failed: {e}", self.active.path.display());
            tracing::error!(reason, "log poisoned: it refuses writes until reopened");
            self.poisoned = Some(reason.clone());
            return Err(reason);
        }
        if let Some(observer) = &self.shared.config.observer {
            observer.synced(started.elapsed());
        }
        self.synced = true;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Seals the active segment (already fsynced by the caller) and starts the next one at
    /// the current head, from the pre-written file when one is ready.
    fn roll(&mut self) -> Result<(), String> {
        debug_assert!(self.staged.records == 0 && self.synced);
        let dir = self.shared.dir.clone();
        let base = self.next_offset;
        let path = segment_path(&dir, base);
        let ready = self.prealloc.as_mut().and_then(|p| p.take(&path));
        let file = match ready {
            Some(file) => file
                .and_then(|file| {
                    file.write_all_at(&encode_segment_header(base), 0)?;
                    file.sync_data()?;
                    Ok(file)
                })
                .map_err(|e| format!("starting segment {}: {e}", path.display()))
                .and_then(|file| sync_dir(&dir).map(|()| file).map_err(|e| e.to_string()))?,
            None => create_segment(&dir, base, 0).map_err(|e| e.to_string())?,
        };
        let file = Arc::new(file);
        self.shared.state.write().segments.push(SegmentMeta {
            base,
            path: path.clone(),
            file: file.clone(),
            records: 0,
            end_pos: SEGMENT_HEADER_BYTES as u64,
            index: Vec::new(),
        });
        tracing::debug!(segment = %path.display(), "log rolled to a new segment");
        self.active = Active { file, path, base };
        self.pos = SEGMENT_HEADER_BYTES as u64;
        if let Some(prealloc) = &self.prealloc {
            prealloc.request();
        }
        Ok(())
    }
}

/// Keeps one zero-filled, fsynced file of `segment_bytes` ready for the next roll.
struct Preallocator {
    path: PathBuf,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tx: Option<flume::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Preallocator {
    fn start(dir: &Path, segment_bytes: u64) -> Preallocator {
        let path = dir.join(format!("next{PREALLOC_SUFFIX}"));
        let ready = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = flume::bounded::<()>(1);
        let (thread_path, thread_ready, thread_stop) = (path.clone(), ready.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("sagalog-log-prealloc".into())
            .spawn(move || {
                for () in rx.iter() {
                    if thread_ready.load(Ordering::Acquire) {
                        continue;
                    }
                    let filled = File::create(&thread_path).and_then(|file| {
                        write_zeros(&file, 0, segment_bytes, Some(&thread_stop))?;
                        file.sync_all()
                    });
                    match filled {
                        Ok(()) => thread_ready.store(true, Ordering::Release),
                        Err(e) if thread_stop.load(Ordering::Relaxed) => {
                            tracing::debug!(error = %e, "segment pre-write stopped");
                        }
                        Err(e) => tracing::warn!(
                            file = %thread_path.display(), error = %e,
                            "could not pre-write the next segment; the next roll creates a plain file"
                        ),
                    }
                }
            })
            .ok();
        let prealloc = Preallocator {
            path,
            ready,
            stop,
            tx: Some(tx),
            thread,
        };
        prealloc.request();
        prealloc
    }

    fn request(&self) {
        if let Some(tx) = &self.tx {
            // A full queue means a request is already pending: nothing to add.
            let _ = tx.try_send(());
        }
    }

    /// The pre-written file renamed to `dest`, if one is ready.
    fn take(&mut self, dest: &Path) -> Option<std::io::Result<File>> {
        if !self.ready.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(
            std::fs::rename(&self.path, dest)
                .and_then(|()| OpenOptions::new().read(true).write(true).open(dest)),
        )
    }
}

impl Drop for Preallocator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
