//! Injected I/O failures: every step by which the storage crate changes the disk asks
//! the data directory's [`FaultInjector`] first, so tests can fail each step of a
//! segment roll, a batch, a snapshot or an index commit with the error a real disk
//! gives (`ENOSPC`, `EIO`) — or hold it there — and check what the log does about it.
//!
//! Production opens a data directory with no injector: each step then costs one
//! `Option` test. [`Faults`] is a ready-made injector driven by rules.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// A step that changes the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// Creating (or truncating) a segment file.
    SegmentCreate,
    /// Writing a new segment's header.
    SegmentHeader,
    /// Fsyncing a new segment before it takes records.
    SegmentSync,
    /// Fsyncing a directory after an entry was created, renamed or removed.
    DirSync,
    /// Writing zeros into the next segment ahead of time.
    PreallocWrite,
    /// Fsyncing the pre-written segment.
    PreallocSync,
    /// Renaming the pre-written file to the new segment's name.
    PreallocRename,
    /// Writing a batch of records.
    BatchWrite,
    /// Fsyncing written batches.
    BatchSync,
    /// Creating a snapshot's temporary file.
    SnapshotCreate,
    /// Writing a snapshot's bytes.
    SnapshotWrite,
    /// Fsyncing a snapshot.
    SnapshotSync,
    /// Renaming a written snapshot into place.
    SnapshotRename,
    /// Committing a batch of index entries.
    IndexCommit,
    /// Reading one record back (a saga's history is read record by record). Holding
    /// it makes such reads slow.
    RecordRead,
}

/// Asked before each step; an error fails the step with it.
pub trait FaultInjector: Send + Sync + 'static {
    fn before(&self, point: FaultPoint, path: &Path) -> io::Result<()>;
}

/// The injector of a data directory, if any.
pub type SharedFaults = Option<Arc<dyn FaultInjector>>;

/// Asks `faults` about the step at `point` on `path`.
pub(crate) fn check(faults: &SharedFaults, point: FaultPoint, path: &Path) -> io::Result<()> {
    match faults {
        Some(faults) => faults.before(point, path),
        None => Ok(()),
    }
}

/// `ENOSPC`: no space left on the device.
pub const ENOSPC: i32 = 28;
/// `EIO`: an I/O error (a failed fsync reports this).
pub const EIO: i32 = 5;

#[derive(Debug, Clone, Copy)]
enum Action {
    Fail(i32),
    Hold,
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    point: FaultPoint,
    /// Matching steps let through before the rule acts.
    skip: u64,
    /// How many more times it acts (`None`: until cleared).
    times: Option<u64>,
    action: Action,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    hits: HashMap<FaultPoint, u64>,
    failed: HashMap<FaultPoint, u64>,
    held: usize,
    released: bool,
}

/// An injector driven by rules: fail the steps at a point with an errno, some times or
/// until cleared, after letting some through; or hold them until [`Faults::release`].
#[derive(Default)]
pub struct Faults {
    state: Mutex<State>,
    changed: Condvar,
}

impl Faults {
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// Fails every step at `point` with `errno` until [`Faults::clear`].
    pub fn fail(&self, point: FaultPoint, errno: i32) {
        self.add(point, 0, None, Action::Fail(errno));
    }

    /// Lets `skip` steps at `point` through, then fails the next `times` with `errno`.
    pub fn fail_after(&self, point: FaultPoint, skip: u64, times: u64, errno: i32) {
        self.add(point, skip, Some(times), Action::Fail(errno));
    }

    /// Holds every step at `point` (its thread waits) until [`Faults::release`].
    pub fn hold(&self, point: FaultPoint) {
        self.hold_after(point, 0);
    }

    /// Lets `skip` steps at `point` through, then holds the next ones until
    /// [`Faults::release`].
    pub fn hold_after(&self, point: FaultPoint, skip: u64) {
        self.state.lock().released = false;
        self.add(point, skip, None, Action::Hold);
    }

    /// Lets held steps go on and stops holding.
    pub fn release(&self) {
        let mut state = self.state.lock();
        state.released = true;
        state.rules.retain(|r| !matches!(r.action, Action::Hold));
        self.changed.notify_all();
    }

    /// Drops every rule (held steps go on).
    pub fn clear(&self) {
        let mut state = self.state.lock();
        state.rules.clear();
        state.released = true;
        self.changed.notify_all();
    }

    /// How many steps at `point` were asked about.
    pub fn hits(&self, point: FaultPoint) -> u64 {
        self.state.lock().hits.get(&point).copied().unwrap_or(0)
    }

    /// How many steps at `point` were failed.
    pub fn failed(&self, point: FaultPoint) -> u64 {
        self.state.lock().failed.get(&point).copied().unwrap_or(0)
    }

    /// How many steps wait in a hold now.
    pub fn held(&self) -> usize {
        self.state.lock().held
    }

    fn add(&self, point: FaultPoint, skip: u64, times: Option<u64>, action: Action) {
        self.state.lock().rules.push(Rule {
            point,
            skip,
            times,
            action,
        });
    }
}

impl FaultInjector for Faults {
    fn before(&self, point: FaultPoint, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        *state.hits.entry(point).or_default() += 1;
        let Some(rule) = state
            .rules
            .iter_mut()
            .find(|r| r.point == point && r.times != Some(0))
        else {
            return Ok(());
        };
        if rule.skip > 0 {
            rule.skip -= 1;
            return Ok(());
        }
        if let Some(times) = &mut rule.times {
            *times -= 1;
        }
        match rule.action {
            Action::Fail(errno) => {
                *state.failed.entry(point).or_default() += 1;
                tracing::debug!(?point, path = %path.display(), errno, "injected I/O failure");
                Err(io::Error::from_raw_os_error(errno))
            }
            Action::Hold => {
                state.held += 1;
                while !state.released {
                    self.changed.wait(&mut state);
                }
                state.held -= 1;
                Ok(())
            }
        }
    }
}
