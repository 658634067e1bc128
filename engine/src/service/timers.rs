//! The due times of the sagas in memory (a step's timeout, a retry's back-off), and the
//! wake-ups of the timer thread that fires them: it sleeps until the next is due, and a
//! write that adds an earlier one wakes it, as does a snapshot that falls due.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::shutdown::Shutdown;

/// The longest the timer thread sleeps without looking again (a clock that jumps, a
/// snapshot that fell due), in ms.
const MAX_SLEEP_MS: u64 = 1000;

pub(crate) struct Timers {
    /// (unix ms when due, saga id), soonest first.
    due: Mutex<BTreeSet<(u64, Arc<str>)>>,
    wake: Notify,
    /// When the timer thread wakes next by itself (unix ms); `u64::MAX` while it looks.
    sleeps_until: AtomicU64,
}

impl Timers {
    pub fn new(due: BTreeSet<(u64, Arc<str>)>) -> Timers {
        Timers {
            due: Mutex::new(due),
            wake: Notify::new(),
            sleeps_until: AtomicU64::new(0),
        }
    }

    /// Saga `key`'s due time moved from `before` to `after`; the timer thread is woken
    /// only for a due time before the one it sleeps until.
    pub fn moved(&self, key: &Arc<str>, before: Option<u64>, after: Option<u64>) {
        if before != after {
            let mut due = self.due.lock();
            if let Some(at) = before {
                due.remove(&(at, key.clone()));
            }
            if let Some(at) = after {
                due.insert((at, key.clone()));
            }
        }
        if let Some(at) = after {
            if at < self.sleeps_until.load(Ordering::SeqCst) {
                self.sleeps_until.store(at, Ordering::SeqCst);
                self.wake.notify_one();
            }
        }
    }

    /// Fires saga `key` again at `at` (its firing failed for now).
    pub fn retry_at(&self, at: u64, key: Arc<str>) {
        self.due.lock().insert((at, key));
    }

    /// Takes the sagas due by `now_ms`, `max` at most, soonest first.
    pub fn take_due(&self, now_ms: u64, max: usize) -> Vec<Arc<str>> {
        let mut due = self.due.lock();
        let mut taken = Vec::new();
        while taken.len() < max {
            match due.first() {
                Some((at, _)) if *at <= now_ms => {
                    taken.push(due.pop_first().expect("checked").1);
                }
                _ => break,
            }
        }
        taken
    }

    /// Wakes the timer thread now (a snapshot fell due).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sleeps until the next due time (at most [`MAX_SLEEP_MS`]), a wake-up or the
    /// stop; false at the stop. `now_ms` reads the clock.
    pub async fn sleep(&self, now_ms: impl Fn() -> u64, stop: &mut Shutdown) -> bool {
        // "Never" while the next due time is read, so that one added meanwhile wakes it.
        let woken = self.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        self.sleeps_until.store(u64::MAX, Ordering::SeqCst);
        let now = now_ms();
        let next = self.due.lock().first().map(|(at, _)| *at);
        let wait_ms = next.map_or(MAX_SLEEP_MS, |at| {
            at.saturating_sub(now).clamp(1, MAX_SLEEP_MS)
        });
        self.sleeps_until.store(now + wait_ms, Ordering::SeqCst);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => true,
            _ = woken => true,
            () = stop.wait() => false,
        }
    }
}
