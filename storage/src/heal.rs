//! Healing: a failed fsync, or a failed clean-up of a failed write, *poisons* the log
//! (the page cache can no longer be trusted). A log that cannot be opened for writing (a
//! full disk at start) opens read-only and is poisoned the same way. Either way the
//! healer thread stops the writer, reopens the active segment from disk as a restart
//! would — zeroing what lies past the published end, checking the published records
//! read back, removing leftover files — and starts a new writer; it retries with a
//! growing pause, `LogConfig::heal_attempts` times at most. Readers and tail subscribers
//! go on throughout: offsets below the published head never change.

use std::fs::{File, OpenOptions};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Result, StorageError};
use crate::files::{sync_dir, DirLock};
use crate::scan::scan_segment;
use crate::segments::{list_segments, open_and_scan, zero_from};
use crate::shared::Shared;
use crate::writer;

/// Longest pause between two attempts to heal the log.
const MAX_HEAL_PAUSE: Duration = Duration::from_secs(30);
/// Pause before the first attempt to heal the log.
const FIRST_HEAL_PAUSE: Duration = Duration::from_millis(100);

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
pub(crate) fn run_healer(shared: Arc<Shared>, lock: Arc<DirLock>) {
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
        let outcome = parking_lot::MutexGuard::unlocked(&mut heal, || heal_once(&shared, &lock));
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

/// Reopens the log for writing as a restart would, keeping every published record:
/// stops the writer, removes segment files the log does not hold (leftovers of failed
/// rolls; one holding a record is refused), zeroes what lies past the active
/// segment's published end on a fresh file handle, checks that the published records
/// read back whole, and starts a new writer.
fn heal_once(shared: &Arc<Shared>, lock: &Arc<DirLock>) -> Result<(), String> {
    writer::stop(shared);
    remove_unheld_segments(shared).map_err(|e| e.to_string())?;
    let (path, base, records, end_pos) = {
        let state = shared.state.read();
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
    zero_from(&file, &path, end_pos, file_len, None, &shared.faults).map_err(|e| e.to_string())?;
    let after = scan_segment(&file, base, &shared.config)
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
        let mut state = shared.state.write();
        let active = state.active_mut();
        active.file = Arc::new(file);
        active.index = after.index;
    }
    writer::start(shared, lock).map_err(|e| e.to_string())?;
    *shared.poisoned.lock() = None;
    Ok(())
}

/// Removes segment files in the directory that the log does not hold and that hold
/// no record (what a failed roll or an interrupted open left).
fn remove_unheld_segments(shared: &Shared) -> Result<()> {
    let (held, start): (std::collections::HashSet<u64>, u64) = {
        let state = shared.state.read();
        let held = state.segments.iter().map(|s| s.base).collect();
        (held, state.start_offset())
    };
    let mut removed = false;
    // Files below the start are retention's (it removes them itself).
    for base in list_segments(&shared.dir, false)? {
        if held.contains(&base) || base < start {
            continue;
        }
        let (path, _, scan) = open_and_scan(&shared.dir, base, &shared.config, false)?;
        if scan.holds_records() {
            return Err(StorageError::SegmentGap {
                segment: path,
                expected: shared.state.read().next_offset(),
                found: base,
                records: scan.records,
            });
        }
        std::fs::remove_file(&path).map_err(StorageError::io("remove leftover segment", &path))?;
        tracing::warn!(segment = %path.display(), "removed a segment file left by a failed roll");
        removed = true;
    }
    if removed {
        sync_dir(&shared.dir, &shared.faults)?;
    }
    Ok(())
}

/// Asks the kernel to drop `file`'s clean cached pages, so the next reads come from the
/// disk (best effort: a failure leaves the cache as it was).
fn drop_cached_pages(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}
