//! A reader that follows the log from an offset, woken by each commit (the engine's
//! indexer, command feeds and the relay read through one).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use crate::error::{Result, StorageError};
use crate::shared::{LogRecord, Shared};

/// A reader following the log from an offset; woken by the writer, never by a timer.
pub struct Tail {
    shared: Arc<Shared>,
    committed: watch::Receiver<u64>,
    next: u64,
}

impl Tail {
    pub(crate) fn new(shared: Arc<Shared>, from: u64) -> Tail {
        Tail {
            committed: shared.committed.subscribe(),
            shared,
            next: from,
        }
    }
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
