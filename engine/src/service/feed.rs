//! What the engine offers its adapters besides the API, so that they need no storage
//! handle of their own:
//! - the [`CommandFeed`]: the commands the log issues, from a position on, woken by each
//!   commit (the HTTP outbox, the Kafka relay and the demo participants read it);
//! - a named, durable [`Cursor`] kept beside the indexes (the relay's position);
//! - the log's [`LogHealth`] and figures, for readiness and metrics.

use std::sync::Arc;

use sagalog_storage::{Keyspace, StorageError, Tail, WriteFailure};

use crate::error::{EngineError, Result};
use crate::render::command::Command;
use crate::render::filter::CommandFilter;
use crate::service::inner::Inner;

/// The commands issued from a position on, in log order.
pub struct CommandFeed {
    inner: Arc<Inner>,
    tail: Tail,
    filter: CommandFilter,
    /// Stop at the first command whose topic is paused (the HTTP outbox).
    holding: bool,
}

/// What one read of a [`CommandFeed`] gives.
#[derive(Debug, Default)]
pub struct FeedBatch {
    /// The commands among the records read (a record may issue none, or several) that
    /// the feed's filter wants.
    pub commands: Vec<Command>,
    /// How many records were read.
    pub records: usize,
    /// The offset of the last record read.
    pub last_offset: Option<u64>,
    /// A holding feed stopped before a command whose topic is paused: it reads from
    /// that command again next time.
    pub held: bool,
}

impl CommandFeed {
    pub(crate) fn new(inner: Arc<Inner>, from: u64) -> CommandFeed {
        let tail = inner.log.subscribe(from);
        CommandFeed {
            inner,
            tail,
            filter: CommandFilter::all(),
            holding: false,
        }
    }

    /// The feed that stops at the first command whose topic is paused, and hands it out
    /// only once its topic is resumed (a reader with one cursor, the HTTP outbox, must
    /// not move past it). The relay does not hold: it parks such commands itself so the
    /// other topics go on.
    pub fn holding(mut self) -> CommandFeed {
        self.holding = true;
        self
    }

    /// The feed of only the commands `filter` wants (the others are read past, and not
    /// rendered).
    pub fn filtered(mut self, filter: CommandFilter) -> CommandFeed {
        self.filter = filter;
        self
    }

    /// The offset of the next record the feed reads.
    pub fn position(&self) -> u64 {
        self.tail.position()
    }

    /// Whether a record past [`CommandFeed::position`] can be read now, without waiting.
    pub fn ready(&self) -> bool {
        self.tail.position() < self.inner.log.next_offset()
    }

    /// The commands among the next records (at most `max_records`, and no more than
    /// `max_bytes` of them past the first), waiting until there is at least one record.
    /// Fails with [`EngineError::Closed`] once the engine is closed and all is read.
    pub async fn next(&mut self, max_records: usize, max_bytes: usize) -> Result<FeedBatch> {
        let records = match self.tail.next_batch(max_records, max_bytes).await {
            Ok(records) => records,
            Err(StorageError::Closed) => return Err(EngineError::Closed),
            Err(e) => return Err(e.into()),
        };
        let mut commands = crate::render::command::render(
            &self.inner.log,
            &self.inner.registry,
            &records,
            &self.filter,
        )?;
        let mut batch_end = records.last().map(|r| r.offset + 1);
        let mut held = false;
        if self.holding {
            let delivery = self.inner.delivery.borrow();
            if let Some(at) = commands.iter().position(|c| delivery.is_paused(&c.topic)) {
                // Read again from the held command next time; what came before it is
                // handed out.
                let from = commands[at].feed_offset;
                commands.truncate(at);
                self.tail = self.inner.log.subscribe(from);
                batch_end = Some(from);
                held = true;
            }
        }
        let first = records.first().map_or(0, |r| r.offset);
        let read = batch_end.map_or(0, |end| end.saturating_sub(first)) as usize;
        Ok(FeedBatch {
            commands,
            records: read,
            last_offset: batch_end.filter(|&end| end > first).map(|end| end - 1),
            held,
        })
    }
}

/// A position an adapter keeps across restarts (the relay's: the first offset whose
/// command may not have reached Kafka), in its own keyspace of the index store.
pub struct Cursor {
    inner: Arc<Inner>,
    space: Keyspace,
}

/// The key a cursor's value is kept under, in its keyspace.
const CURSOR_KEY: &[u8] = b"position";

impl Cursor {
    pub(crate) fn new(inner: Arc<Inner>, name: &'static str) -> Cursor {
        Cursor {
            inner,
            space: Keyspace::new(name),
        }
    }

    /// The stored position, 0 when none was ever stored.
    pub fn load(&self) -> Result<u64> {
        Ok(self
            .inner
            .index
            .get(&self.space, CURSOR_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Stores `position` (durable with the index's next flush).
    pub fn store(&self, position: u64) -> Result<()> {
        self.inner
            .index
            .put(&self.space, CURSOR_KEY, &position.to_be_bytes())?;
        Ok(())
    }

    /// Stores `position` and flushes it, for a clean stop.
    pub fn store_durably(&self, position: u64) -> Result<()> {
        self.store(position)?;
        self.inner.index.flush()?;
        Ok(())
    }
}

/// Whether the log takes writes, and why not.
#[derive(Debug, Clone, Default)]
pub struct LogHealth {
    /// The log refuses appends until it has healed (a failed fsync, a read-only open).
    pub poisoned: Option<String>,
    /// Appends are refused for now by the server (a disk below its watermark).
    pub refusing: Option<String>,
    /// Batch writes are failing (the latest failure, while none has succeeded since).
    pub write_failure: Option<WriteFailure>,
}
