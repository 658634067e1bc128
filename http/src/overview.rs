//! `GET /api/v1/stats`: what the console's overview shows, as JSON anyone can read with
//! curl — sagas per status, starts and endings per second over the last minutes, the
//! active saga waiting longest, dead letters, the log's head and the snapshot's age.
//!
//! The rates come from [`Activity`]: the server samples the engine's running totals
//! every [`SAMPLE_EVERY`] and keeps the last [`SAMPLES`], so a page opened now shows the
//! last five minutes at once. Nothing here lists sagas: the answer costs one pass over
//! the sagas in memory (the oldest active one) and at most [`DEAD_LETTER_COUNT_BOUND`]
//! index entries, whatever the log holds.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};

use sagalog_engine::{Counters, Partitions, Status};

use crate::json::rfc3339;

/// How often the running totals are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept: [`SAMPLE_EVERY`] × 30 = the last five minutes.
pub const SAMPLES: usize = 31;
/// Most dead-letter index entries one answer counts (past it, the count says "more").
pub const DEAD_LETTER_COUNT_BOUND: usize = 100_000;
/// Overviews computed at once (each scans the sagas in memory); the others wait.
pub static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The running totals at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Totals {
    at_ms: u64,
    started: u64,
    completed: u64,
    compensated: u64,
    failed: u64,
}

impl Totals {
    fn of(counters: &Counters, at_ms: u64) -> Totals {
        Totals {
            at_ms,
            started: counters.entered(Status::Started),
            completed: counters.status_counts[Status::Completed.index()],
            compensated: counters.status_counts[Status::Compensated.index()],
            failed: counters.entered(Status::Failed),
        }
    }

    /// What happened between `earlier` and `self`, as a bucket of the answer.
    fn since(&self, earlier: &Totals) -> Value {
        let completed = self.completed.saturating_sub(earlier.completed);
        let compensated = self.compensated.saturating_sub(earlier.compensated);
        json!({
            "at": rfc3339(earlier.at_ms),
            "seconds": self.at_ms.saturating_sub(earlier.at_ms) as f64 / 1000.0,
            "started": self.started.saturating_sub(earlier.started),
            "ended": completed + compensated,
            "completed": completed,
            "compensated": compensated,
            "failed": self.failed.saturating_sub(earlier.failed),
        })
    }
}

/// The last samples of the engine's running totals, oldest first (at most [`SAMPLES`]).
#[derive(Debug, Default, Clone)]
pub struct Activity(Arc<Mutex<VecDeque<Totals>>>);

impl Activity {
    /// Records the totals now.
    pub fn sample(&self, partitions: &Partitions, now_ms: u64) {
        let totals = Totals::of(&partitions.counters(), now_ms);
        let mut samples = self.0.lock();
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(totals);
    }

    /// Samples now and every [`SAMPLE_EVERY`] after (the server runs it while it serves).
    pub async fn run(self, partitions: Arc<Partitions>, clock: Arc<dyn sagalog_engine::Clock>) {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.sample(&partitions, clock.now_ms());
        }
    }

    /// The buckets between samples, oldest first, and a last one from the newest
    /// sample to `now` (shorter than the others).
    fn buckets(&self, now: &Totals) -> Vec<Value> {
        let samples = self.0.lock();
        let mut buckets: Vec<Value> = samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(earlier, later)| later.since(earlier))
            .collect();
        if let Some(last) = samples.back().filter(|last| now.at_ms > last.at_ms) {
            buckets.push(now.since(last));
        }
        buckets
    }
}

/// The body of `GET /api/v1/stats`.
pub fn stats(
    partitions: &Partitions,
    activity: &Activity,
    now_ms: u64,
    admin_token_required: bool,
) -> sagalog_engine::error::Result<Value> {
    let stats = partitions.stats();
    let counters = &stats.counters;
    let statuses: serde_json::Map<String, Value> = Status::ALL
        .iter()
        .map(|s| {
            (
                s.as_str().to_string(),
                json!(counters.status_counts[s.index()]),
            )
        })
        .collect();
    let active: u64 = Status::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| counters.status_counts[s.index()])
        .sum();
    let oldest = stats.oldest_active.as_ref().map(|o| {
        json!({
            "saga_id": o.saga_id,
            "type": o.saga_type,
            "status": o.status.as_str(),
            "updated_at": rfc3339(o.updated_at_ms),
            "waiting_s": now_ms.saturating_sub(o.updated_at_ms) as f64 / 1000.0,
        })
    });
    let dead = partitions.dead_letter_counts(DEAD_LETTER_COUNT_BOUND)?;
    let (first, head) = partitions.log_bounds();
    let engine = partitions.first();
    let snapshot_at = (stats.snapshot_at_ms > 0).then_some(stats.snapshot_at_ms);
    Ok(json!({
        "now": rfc3339(now_ms),
        "statuses": statuses,
        "active": active,
        "rates": {
            "interval_s": SAMPLE_EVERY.as_secs(),
            "buckets": activity.buckets(&Totals::of(counters, now_ms)),
        },
        "oldest_active": oldest,
        "dead_letters": {"total": dead.total, "waiting": dead.waiting, "more": dead.more},
        "log": {"first": first, "head": head, "indexed": stats.index_watermark},
        "snapshot": {
            "offset": stats.snapshot_offset,
            "at": snapshot_at.map(rfc3339),
            "age_s": snapshot_at.map(|at| now_ms.saturating_sub(at) as f64 / 1000.0),
        },
        "delivery": crate::json::delivery(&engine.delivery(), &engine.step_topics()),
        "admin_token_required": admin_token_required,
        "partitions": partitions.count(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_the_differences_between_samples_and_the_last_one_runs_to_now() {
        let activity = Activity::default();
        let totals = |at_ms, started, completed| Totals {
            at_ms,
            started,
            completed,
            ..Totals::default()
        };
        for i in 0..40u64 {
            activity
                .0
                .lock()
                .push_back(totals(i * 10_000, i * 5, i * 3));
            let mut samples = activity.0.lock();
            if samples.len() > SAMPLES {
                samples.pop_front();
            }
        }
        let buckets = activity.buckets(&totals(395_000, 40 * 5, 40 * 3 + 1));
        assert_eq!(buckets.len(), SAMPLES);
        assert_eq!(buckets[0]["started"], 5);
        assert_eq!(buckets[0]["seconds"], 10.0);
        let last = buckets.last().unwrap();
        assert_eq!(
            (last["seconds"].as_f64(), last["started"].as_u64()),
            (Some(5.0), Some(5))
        );
        assert_eq!(last["ended"], 4);
    }
}
