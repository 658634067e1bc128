//! Making segment files: a new segment (header, optional pre-write, fsynced, its
//! directory entry durable) or the removal of one a failed roll left, the first segment
//! of an empty log, and the pre-writer that keeps the next segment zero-filled and
//! fsynced so a batch's fsync flushes data blocks only (no journal commit for a changed
//! file size).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{Result, StorageError};
use crate::faults::{self, FaultPoint, SharedFaults};
use crate::files::{disk_space, segment_path, sync_dir, write_zeros, PREALLOC_SUFFIX};
use crate::format::{encode_segment_header, SEGMENT_HEADER_BYTES};
use crate::LogConfig;

/// Creates the first segment of an empty log, pre-written when the disk has room for
/// it; a failed pre-write leaves a plain segment instead, never a partial file.
pub(crate) fn create_first_segment(
    dir: &Path,
    config: &LogConfig,
    faults: &SharedFaults,
) -> Result<()> {
    if config.preallocate && room_to_prewrite(dir, config.segment_bytes) {
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

/// Keeps one zero-filled, fsynced file of `segment_bytes` ready for the next roll.
pub(crate) struct Preallocator {
    path: PathBuf,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tx: Option<flume::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Preallocator {
    pub fn start(dir: &Path, segment_bytes: u64, faults: &SharedFaults) -> Preallocator {
        let path = dir.join(format!("next{PREALLOC_SUFFIX}"));
        let ready = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = flume::bounded::<()>(1);
        let (thread_path, thread_ready, thread_stop) = (path.clone(), ready.clone(), stop.clone());
        let (thread_dir, faults) = (dir.to_path_buf(), faults.clone());
        let thread = std::thread::Builder::new()
            .name("sagalog-log-prealloc".into())
            .spawn(move || {
                for () in rx.iter() {
                    if thread_ready.load(Ordering::Acquire) {
                        continue;
                    }
                    if !room_to_prewrite(&thread_dir, segment_bytes) {
                        tracing::debug!("too little free space to pre-write the next segment");
                        continue;
                    }
                    let filled = File::create(&thread_path).and_then(|file| {
                        faults::check(&faults, FaultPoint::PreallocWrite, &thread_path)?;
                        write_zeros(&file, 0, segment_bytes, Some(&thread_stop))?;
                        faults::check(&faults, FaultPoint::PreallocSync, &thread_path)?;
                        file.sync_all()
                    });
                    let Err(e) = filled else {
                        thread_ready.store(true, Ordering::Release);
                        continue;
                    };
                    // A half-written file must not hold on to space a full disk needs.
                    let _ = std::fs::remove_file(&thread_path);
                    if thread_stop.load(Ordering::Relaxed) {
                        tracing::debug!(error = %e, "segment pre-write stopped");
                    } else {
                        tracing::warn!(
                            file = %thread_path.display(), error = %e,
                            "could not pre-write the next segment; the next roll creates a plain file"
                        );
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

    pub fn request(&self) {
        if let Some(tx) = &self.tx {
            // A full queue means a request is already pending: nothing to add.
            let _ = tx.try_send(());
        }
    }

    /// The pre-written file renamed to `dest`, if one is ready.
    pub fn take(&mut self, dest: &Path, faults: &SharedFaults) -> Option<std::io::Result<File>> {
        if !self.ready.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(
            faults::check(faults, FaultPoint::PreallocRename, dest)
                .and_then(|()| std::fs::rename(&self.path, dest))
                .and_then(|()| OpenOptions::new().read(true).write(true).open(dest)),
        )
    }
}

/// Whether the filesystem of `dir` can spare a pre-written segment of `segment_bytes`
/// and still have as much again for the records: pre-writing must never take the space
/// the active segment is about to need.
pub(crate) fn room_to_prewrite(dir: &Path, segment_bytes: u64) -> bool {
    disk_space(dir).is_ok_and(|(free, _)| free >= segment_bytes.saturating_mul(2))
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
