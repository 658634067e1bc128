//! The engine's two threads, each on a current-thread runtime of its own:
//! - the *indexer* follows the log tail and writes the sled indexes, one batch per
//!   batch of records, then lets the finished sagas they cover leave memory;
//! - the *timer* fires due timeouts and retries (each a `Tick` transaction) and starts
//!   the periodic snapshots, each in a task of its own beside the timers.
//!
//! Both stop when the engine's `Stop` is set, and retry a failed step every second,
//! logging each kind of repeated failure once a minute.

use std::sync::Arc;
use std::time::Duration;

use sagalog_storage::{IndexBatch, StorageError};

use crate::error::{EngineError, Result};
use crate::model::decider::Input;
use crate::service::indexing::Indexer;
use crate::service::inner::Inner;
use sagalog_storage::index::IndexWriter;

/// How often each kind of repeated background failure is logged.
const REPEATED_FAILURE_EVERY: Duration = Duration::from_secs(60);
/// Bytes of records the indexer reads at most per batch (beside its record count).
const INDEX_READ_BYTES: usize = 16 << 20;
/// The pause before the indexer tries again after a failed batch.
const INDEX_RETRY: Duration = Duration::from_secs(1);
/// How long the indexer lets records gather after a short batch.
const INDEX_GATHER: Duration = Duration::from_millis(5);

/// Failures the background threads retry (a full disk refuses them every second):
/// each kind is logged once a minute.
static REPEATED_FAILURES: std::sync::LazyLock<crate::throttle::Throttle> =
    std::sync::LazyLock::new(|| crate::throttle::Throttle::new(REPEATED_FAILURE_EVERY));

impl Inner {
    /// The indexer committed everything below `watermark`: finished sagas it covers
    /// leave memory.
    fn indexed_through(&self, watermark: u64) {
        for key in self.progress.take_indexed(watermark) {
            self.sagas.leave_if_indexed(&key, watermark);
        }
        self.progress.publish(watermark);
    }

    async fn tick(self: Arc<Self>, key: Arc<str>) {
        match self.transact(&key, Input::Tick.into()).await {
            Ok(_) => {}
            // The log cannot take the records now: try again in a second.
            Err(e) if e.class() == crate::error::ErrorClass::Unavailable => {
                if let Some(held_back) = REPEATED_FAILURES.admit("timer", std::time::Instant::now())
                {
                    tracing::warn!(saga_id = %key, error = %e, held_back, "firing a due timer failed; retrying in 1 s");
                }
                let retry_at = self.clock.now_ms() + 1000;
                self.timers.retry_at(retry_at, key);
            }
            Err(e) => tracing::error!(saga_id = %key, error = %e, "firing a due timer failed"),
        }
    }

    pub(crate) async fn run_due_timers(self: Arc<Self>) -> usize {
        let now_ms = self.clock.now_ms();
        let due = self.timers.take_due(now_ms, self.config.timer_concurrency);
        let count = due.len();
        let mut ticks = tokio::task::JoinSet::new();
        for key in due {
            ticks.spawn(self.clone().tick(key));
        }
        while ticks.join_next().await.is_some() {}
        count
    }
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

/// Follows the log tail and writes the indexes, one sled batch per batch of records.
pub(crate) fn run_indexer(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let stopping = inner.stop.subscribe();
    if let Err(e) = inner
        .progress
        .fill_finished_ids(&inner.index, &inner.keys.saga, || stopping.is_set())
    {
        tracing::error!(error = %e, "reading the finished sagas' ids failed; every new id is looked up in the index");
    }
    current_thread_runtime().block_on(async {
        let mut from = inner.progress.watermark();
        let mut tail = inner.log.subscribe(from);
        let mut indexer = Indexer::new(&inner.keys, &inner.log).with_filter(inner.progress.finished_ids());
        loop {
            let batch = tokio::select! {
                batch = tail.next_batch(inner.config.index_batch_records, INDEX_READ_BYTES) => batch,
                () = stop.wait() => return,
            };
            let result = batch
                .map_err(EngineError::from)
                .and_then(|records| index_records(&inner, &mut indexer, &records));
            match result {
                Ok((next, read)) => {
                    from = next;
                    inner.indexed_through(next);
                    // A short batch: let records gather rather than pay a sled batch for
                    // each group commit (finished sagas leave memory a little later).
                    if read < inner.config.index_batch_records {
                        tokio::select! {
                            _ = tokio::time::sleep(INDEX_GATHER) => {}
                            () = stop.wait() => return,
                        }
                    }
                }
                Err(EngineError::Storage(StorageError::Closed)) => return,
                Err(e) => {
                    if let Some(held_back) = REPEATED_FAILURES.admit("indexer", std::time::Instant::now()) {
                        tracing::error!(error = %e, offset = from, held_back, "indexing failed; retrying in 1 s");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(INDEX_RETRY) => {}
                        () = stop.wait() => return,
                    }
                    tail = inner.log.subscribe(from);
                    indexer =
                        Indexer::new(&inner.keys, &inner.log).with_filter(inner.progress.finished_ids());
                }
            }
        }
    });
}

fn index_records(
    inner: &Inner,
    indexer: &mut Indexer<'_>,
    records: &[sagalog_storage::LogRecord],
) -> Result<(u64, usize)> {
    let mut batch = IndexBatch::default();
    for record in records {
        indexer.add(record, &mut batch)?;
    }
    indexer.end_chunk(&mut batch)?;
    let next = records.last().map_or(0, |r| r.offset + 1);
    inner.index.commit(batch, next)?;
    Ok((next, records.len()))
}

/// Fires due timers, sleeping until the next one is due (or a sooner one is added),
/// and takes the periodic snapshot.
pub(crate) fn run_timer(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    current_thread_runtime().block_on(async {
        loop {
            if stop.is_set() {
                return;
            }
            if inner.snapshots.begin_periodic() {
                // In a task of its own: due timers keep firing while it is written.
                let inner = inner.clone();
                tokio::spawn(async move {
                    let taken = inner.snapshot().await;
                    if let Err(e) = &taken {
                        tracing::error!(error = %e, "periodic snapshot failed");
                    }
                    inner.snapshots.periodic_done(taken.is_err());
                });
            }
            if inner.clone().run_due_timers().await > 0 {
                continue;
            }
            if !inner.timers.sleep(|| inner.clock.now_ms(), &mut stop).await {
                return;
            }
        }
    });
}
