//! The engine's façade: the API the HTTP server and the relay call, over the parts in
//! the sibling modules (see `service` for the map). It opens the data directory,
//! starts the threads, checks each call's input and hands it to the part that does it.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use sagalog_storage::{DataDir, IndexStore, Log, LogRecord, LogStats, SnapshotInfo};

use crate::api::{
    self, invalid, EngineStats, HistoryItem, ListPage, ListQuery, Operation, ReplyAnswer,
    StartAnswer, StartRequest,
};
use crate::config::{Clock, EngineConfig, SystemClock};
use crate::error::{EngineError, Result};
use crate::history::{predecessors, read_saga_record};
use crate::model::decider::{Input, Reply};
use crate::model::definition::{Definition, Registered};
use crate::model::record::{Entry, Status};
use crate::render::command::Command;
use crate::render::results::StepResults;
use crate::render::view::{self, SagaView};
use crate::service::active::ActiveSagas;
use crate::service::background::{run_indexer, run_timer};
use crate::service::dead_letters::{DeadLetter, DeadLetterCounts};
use crate::service::feed::{CommandFeed, Cursor, LogHealth};
use crate::service::indexing::Keys;
use crate::service::inner::{task_failed, Ids, Inner, MAX_CONCURRENT_SCANS};
use crate::service::progress::Progress;
use crate::service::replay;
use crate::service::retention::RetentionReport;
use crate::service::snapshots::Snapshots;
use crate::service::timers::Timers;
use crate::service::transaction::{request_hash, Done, Op};
use crate::shutdown::Shutdown;

/// The saga engine over one data directory.
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Opens (or creates) the data directory `dir`: catches the indexes up, restores the
    /// newest usable snapshot, replays the log after it, and starts the indexer and
    /// timer threads.
    pub fn open(dir: impl AsRef<Path>, config: EngineConfig) -> Result<Engine> {
        Engine::open_with_clock(dir, config, Arc::new(SystemClock))
    }

    pub fn open_with_clock(
        dir: impl AsRef<Path>,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine> {
        config.validate()?;
        let data = DataDir::open(dir)?.with_faults(config.faults.clone());
        let reserve_released = release_reserve_if_full(&data, config.reserve_bytes)?;
        let (log, _report) = data.open_log(config.log.clone())?;
        let index = data.open_index()?;
        let snapshots = data.open_snapshots(config.snapshots.clone())?;
        let keys = Keys::default();
        match replay::catch_up_index(&log, &index, &keys, config.index_batch_records) {
            // A full disk: serve what the log holds; the indexer catches up once it can.
            Err(EngineError::Storage(e)) if e.is_disk_failure() => tracing::warn!(
                error = %e,
                "the indexes could not catch up with the log; finished sagas they lack stay in memory until the indexer has them"
            ),
            other => other?,
        }
        let watermark = index.watermark()?;
        let mut restored = replay::restore(&log, &snapshots, config.shards, watermark)?;
        if !config.builtin_definitions {
            retire_builtin(&mut restored);
        }
        let log_start = log.start_offset();
        let inner = Arc::new(Inner {
            clock,
            log,
            index,
            keys,
            snapshots: Snapshots::new(
                snapshots,
                config.snapshot_every_records,
                restored.snapshot_offset,
                restored.replayed,
            ),
            registry: RwLock::new(restored.registry),
            sagas: ActiveSagas::new(
                restored.shards,
                restored.active,
                config.active_sagas.clone(),
            ),
            projections: Mutex::new(restored.projections),
            timers: Timers::new(restored.timers),
            progress: Progress::new(watermark, restored.unindexed, config.max_unindexed),
            gate: Arc::new(tokio::sync::RwLock::new(())),
            scans: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_SCANS)),
            replayed: restored.replayed,
            stop: Shutdown::new().0,
            ids: Ids::default(),
            retention: Mutex::default(),
            retained_from: AtomicU64::new(log_start),
            reserve_released,
            delivery: tokio::sync::watch::Sender::new(restored.delivery),
            config,
        });
        let spawn = |name: &str, run: fn(Arc<Inner>)| {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || run(inner))
                .map_err(|source| EngineError::Thread {
                    name: name.to_string(),
                    source,
                })
        };
        let mut engine = Engine {
            inner: inner.clone(),
            threads: Vec::with_capacity(2),
        };
        // On an error `engine` is dropped, which stops the threads already started.
        engine.threads.push(spawn("sagalog-indexer", run_indexer)?);
        if engine.inner.config.timers {
            engine.threads.push(spawn("sagalog-timer", run_timer)?);
        }
        Ok(engine)
    }

    /// Rebuilds the indexes of the (closed) data directory `dir` from its log, from
    /// nothing; returns how many records it read. `sagalog reindex` runs this.
    pub fn reindex(dir: impl AsRef<Path>, config: &EngineConfig) -> Result<u64> {
        replay::reindex(dir.as_ref(), config)
    }

    /// The log itself, for tests and the offline tools; adapters use the feed, the
    /// cursors and the health below.
    #[doc(hidden)]
    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    /// The index store itself, for tests.
    #[doc(hidden)]
    pub fn index(&self) -> &IndexStore {
        &self.inner.index
    }

    /// The commands among `records` (consecutive records read from [`Engine::log`]).
    #[doc(hidden)]
    pub fn commands(&self, records: &[LogRecord]) -> Result<Vec<Command>> {
        let all = crate::render::filter::CommandFilter::all();
        crate::render::command::render(&self.inner.log, &self.inner.registry, records, &all)
    }

    /// The commands the log issues from offset `from` on (see [`CommandFeed`]).
    pub fn command_feed(&self, from: u64) -> CommandFeed {
        CommandFeed::new(self.inner.clone(), from)
    }

    /// The log's first offset kept (below it retention removed the records) and its
    /// next offset.
    pub fn log_bounds(&self) -> (u64, u64) {
        (self.inner.log.start_offset(), self.inner.log.next_offset())
    }

    /// The durable cursor `name` (its own keyspace beside the indexes).
    pub fn cursor(&self, name: &'static str) -> Cursor {
        Cursor::new(self.inner.clone(), name)
    }

    /// Whether the log takes writes now, and why not.
    pub fn log_health(&self) -> LogHealth {
        let log = &self.inner.log;
        LogHealth {
            poisoned: log.poisoned(),
            refusing: log.refusing(),
            write_failure: log.write_failure(),
        }
    }

    /// The log's figures (segments, bytes, offsets, heals), for metrics.
    pub fn log_stats(&self) -> LogStats {
        self.inner.log.stats()
    }

    /// Refuses new writes (`Some`, with the reason they get) or takes them again
    /// (`None`): the server's disk watch.
    pub fn set_refusing(&self, reason: Option<String>) {
        self.inner.log.set_refusing(reason);
    }

    pub async fn start(&self, request: StartRequest) -> Result<StartAnswer> {
        let inner = &self.inner;
        let definition = inner
            .registry
            .read()
            .latest(&request.saga_type)
            .cloned()
            .ok_or_else(|| EngineError::UnknownDefinition {
                name: request.saga_type.clone(),
            })?;
        let fresh_id = request.saga_id.is_none();
        let partition = inner.config.partition;
        let saga_id = match request.saga_id {
            Some(id) => {
                api::check_saga_id(&id)?;
                partition.check(&id)?;
                id
            }
            None => partition.fresh_id(|| inner.ids.random_uuid()),
        };
        let trace_id = match request.trace_id {
            Some(t) => api::check_trace_id(&t).map(|()| t)?,
            None => inner.ids.random_uuid().simple().to_string(),
        };
        let payload = request.payload.to_string();
        let limit = (inner.config.max_payload_bytes, "--max-payload-bytes");
        api::check_size("payload", payload.len(), limit)?;
        let op = Op {
            input: Input::Start {
                request_hash: request_hash(&definition.name, &payload),
                payload: payload.clone(),
                trace_id,
            },
            definition: Some(definition),
            fresh_id,
            unchanged_since_ms: None,
        };
        match inner.transact(&saga_id, op).await? {
            // The payload is at hand: no need to read it back from the log.
            Done::Appended {
                state: Some(state), ..
            } => Ok(StartAnswer {
                // A new saga: no step has a result yet.
                saga: view::saga_view(&state, payload, &StepResults::default(), None),
                created: true,
            }),
            Done::Existing { state, last_offset } => Ok(StartAnswer {
                saga: inner.view(state, last_offset)?,
                created: false,
            }),
            Done::Appended { state: None, .. } | Done::Unchanged { .. } | Done::Repeated(_) => {
                unreachable!("a start appends (with its state) or finds the saga")
            }
        }
    }

    pub async fn reply(&self, saga_id: &str, reply: Reply) -> Result<ReplyAnswer> {
        api::check_reply(&reply, self.inner.config.max_step_data_bytes)?;
        match self
            .inner
            .transact(saga_id, Input::Reply(reply).into())
            .await?
        {
            Done::Appended {
                status, offsets, ..
            } => Ok(ReplyAnswer {
                saga_id: saga_id.to_string(),
                status,
                offset: offsets.start,
                repeated: false,
            }),
            Done::Repeated(answer) => Ok(ReplyAnswer {
                saga_id: saga_id.to_string(),
                status: answer.status,
                offset: answer.offset,
                repeated: true,
            }),
            Done::Unchanged { .. } | Done::Existing { .. } => {
                unreachable!("a reply appends or is repeated")
            }
        }
    }

    /// An operator sets the saga's status, with a reason that is recorded.
    pub async fn override_status(
        &self,
        saga_id: &str,
        to: Status,
        reason: String,
    ) -> Result<SagaView> {
        self.operate(saga_id, Operation::Override { to, reason }, None)
            .await
    }

    /// An operator re-issues the saga's pending command with a fresh attempt budget.
    pub async fn retry(&self, saga_id: &str) -> Result<SagaView> {
        self.operate(saga_id, Operation::Retry, None).await
    }

    /// An operator's `operation` on the saga; with `unchanged_since_ms`, only if the
    /// saga's last record is from then or before (else [`crate::Rejection::ChangedSince`]),
    /// checked under the saga's lock — so that a bulk action repeated, or run twice at
    /// once, acts on each saga once.
    pub async fn operate(
        &self,
        saga_id: &str,
        operation: Operation,
        unchanged_since_ms: Option<u64>,
    ) -> Result<SagaView> {
        operation.check()?;
        let input = match operation {
            Operation::Retry => Input::Retry,
            Operation::Override { to, reason } => Input::Override { to, reason },
        };
        let op = Op {
            unchanged_since_ms,
            ..Op::from(input)
        };
        let done = self.inner.transact(saga_id, op).await?;
        view_of(&self.inner, done)
    }

    pub fn get(&self, saga_id: &str) -> Result<SagaView> {
        self.inner.get_view(saga_id)
    }

    /// Every record of the saga, oldest first, with its offset.
    pub async fn history(&self, saga_id: &str) -> Result<Vec<HistoryItem>> {
        self.inner.history(saga_id)
    }

    /// A page of sagas (see `list`): read off the async runtime, at most
    /// [`MAX_CONCURRENT_SCANS`] at once (the others wait their turn).
    pub async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        // The turn goes with the scan: a caller that goes away does not free it while
        // the scan still runs.
        let turn = self
            .inner
            .scans
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| EngineError::Closed)?;
        let (inner, query) = (self.inner.clone(), query.clone());
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            crate::service::list::list(&inner, &query)
        })
        .await
        .unwrap_or_else(|e| Err(task_failed("listing sagas", e)))
    }

    /// Registers a definition (recorded in the log so it survives a restart).
    pub async fn register_definition(&self, definition: Definition) -> Result<Registered> {
        let gate = self.inner.gate.clone().read_owned().await;
        {
            let registry = self.inner.registry.read();
            let mut probe = registry.clone();
            if probe.register(definition.clone())? == Registered::Unchanged {
                return Ok(Registered::Unchanged);
            }
            let limit = self.inner.config.max_definition_versions;
            if registry.len() >= limit {
                return Err(EngineError::LimitReached {
                    what: "definition versions",
                    limit,
                    option: "--max-definition-versions",
                });
            }
        }
        let entry = Entry::DefinitionRegistered {
            json: definition.to_json(),
        };
        // Like `transact`: the registry follows the log even if the caller goes away.
        let inner = self.inner.clone();
        tokio::spawn(async move {
            inner.append_entry(entry).await?;
            let registered = inner.registry.write().register(definition)?;
            drop(gate);
            Ok(registered)
        })
        .await
        .unwrap_or_else(|e| Err(task_failed("registering a definition", e)))
    }

    /// Records that the command at `command_offset` could not be published (the relay
    /// gave up on it); returns the dead letter's offset.
    pub async fn dead_letter(
        &self,
        saga_id: &str,
        command_offset: u64,
        reason: String,
    ) -> Result<u64> {
        if command_offset >= self.inner.log.next_offset() {
            return Err(invalid(
                "command_offset",
                format!("{command_offset} is past the log's head"),
            ));
        }
        let entry = Entry::DeadLettered {
            saga_id: saga_id.to_string(),
            command_offset,
            reason,
        };
        self.inner.append_entry(entry).await
    }

    /// Dead letters after the entry offset `after`, oldest first (as far as indexed).
    pub fn dead_letters(&self, after: Option<u64>, limit: usize) -> Result<Vec<DeadLetter>> {
        let inner = &self.inner;
        crate::service::dead_letters::list(
            &inner.log,
            &inner.index,
            &inner.keys,
            &inner.registry,
            after,
            limit,
        )
    }

    /// How many dead letters there are (and not yet replayed), counting at most `bound`.
    pub fn dead_letter_counts(&self, bound: usize) -> Result<DeadLetterCounts> {
        let inner = &self.inner;
        crate::service::dead_letters::count(&inner.log, &inner.index, &inner.keys, bound)
    }

    /// Puts the dead-lettered command at `dead_letter_offset` back into the command
    /// feed (the relay publishes it again); returns the replay entry's offset.
    pub async fn replay_dead_letter(&self, dead_letter_offset: u64) -> Result<u64> {
        // Held across the check and the append, so retention cannot remove the
        // command's saga in between.
        let _gate = self.inner.gate.read().await;
        let log = &self.inner.log;
        let (saga_id, command_offset, _) =
            crate::service::dead_letters::read(log, dead_letter_offset)?;
        let (link, _) = read_saga_record(log, command_offset).map_err(|e| e.for_saga(&saga_id))?;
        let (_, first) =
            predecessors(log, command_offset, link).map_err(|e| e.for_saga(&saga_id))?;
        self.inner.check_retained(&saga_id, first)?;
        let entry = Entry::DeadLetterReplayed {
            dead_letter_offset,
            command_offset,
        };
        self.inner.append_entry(entry).await
    }

    /// Deletes the sealed segments nothing needs any more and whose newest record is
    /// older than `min_age`; `hold` is an offset the caller still reads from (the relay's
    /// position). Blocks (it reads and deletes files): call it off the async runtime.
    /// See the `retention` module for what "needed" means.
    pub fn apply_retention(&self, min_age: Duration, hold: Option<u64>) -> Result<RetentionReport> {
        self.inner.apply_retention(min_age, hold)
    }

    pub fn definitions(&self) -> Vec<Arc<Definition>> {
        self.inner.registry.read().all()
    }

    /// Takes a snapshot now. It runs in a task of its own: a caller that goes away
    /// (a closed HTTP connection) does not stop it half way, and the next one waits.
    pub async fn snapshot(&self) -> Result<SnapshotInfo> {
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.snapshot().await })
            .await
            .unwrap_or_else(|e| Err(task_failed("taking the snapshot", e)))
    }

    /// Fires every timer due by the clock now; returns how many sagas it looked at.
    /// (The timer thread does this by itself; tests with a manual clock call it.)
    pub async fn run_due_timers(&self) -> usize {
        self.inner.clone().run_due_timers().await
    }

    /// Waits until the indexes reflect every record appended so far.
    pub async fn wait_indexed(&self) -> Result<()> {
        let head = self.inner.log.next_offset();
        self.inner.progress.wait_indexed(head).await
    }

    /// Whether the data directory's reserve was released at open (the disk was full):
    /// the server then refuses writes until it can keep the reserve again.
    pub fn reserve_released_at_open(&self) -> bool {
        self.inner.reserve_released
    }

    /// The status counts and per-type counters alone (no scan of the sagas).
    pub fn counters(&self) -> crate::service::projection::Counters {
        self.inner.projections.lock().counters.clone()
    }

    /// The newest snapshot and the replay at open, without the scan [`Engine::stats`]
    /// makes.
    pub fn snapshot_figures(&self) -> api::SnapshotFigures {
        let inner = &self.inner;
        api::SnapshotFigures {
            offset: inner.snapshots.offset(),
            at_ms: inner.snapshots.at_ms(),
            replayed_records: inner.replayed,
        }
    }

    pub fn stats(&self) -> EngineStats {
        let inner = &self.inner;
        let counters = self.counters();
        let (oldest_updated_ms, oldest_active) = inner.sagas.oldest();
        let mut active_by_status = [0; 6];
        for status in Status::ALL.into_iter().filter(|s| !s.is_terminal()) {
            active_by_status[status.index()] = counters.status_counts[status.index()] as usize;
        }
        EngineStats {
            counters,
            active_by_status,
            oldest_updated_ms,
            oldest_active,
            log_next_offset: inner.log.next_offset(),
            index_watermark: inner.progress.watermark(),
            snapshot_offset: inner.snapshots.offset(),
            snapshot_at_ms: inner.snapshots.at_ms(),
            snapshot_every_records: inner.config.snapshot_every_records,
            replayed_records: inner.replayed,
        }
    }
}

/// Releases the data directory's reserve when the disk has less than `reserve_bytes`
/// free (the opening that follows needs room); true when it did.
fn release_reserve_if_full(data: &DataDir, reserve_bytes: u64) -> Result<bool> {
    if reserve_bytes == 0 {
        return Ok(false);
    }
    let reserve = sagalog_storage::Reserve::new(data.path(), reserve_bytes);
    let (free, _) = sagalog_storage::disk_space(data.path())?;
    if free >= reserve_bytes || !reserve.release()? {
        return Ok(false);
    }
    tracing::warn!(
        dir = %data.path().display(), free_bytes = free, reserve_bytes,
        "the disk is full: released the data directory's reserve to open; writes are refused until it can be kept again"
    );
    Ok(true)
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.inner.stop.stop();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("an engine thread panicked");
            }
        }
        if let Err(e) = self.inner.index.flush() {
            tracing::warn!(error = %e, "flushing the indexes on close failed; they catch up on open");
        }
    }
}

/// Takes the built-in `order` definition out of what `restored` offers, unless sagas of
/// this data directory ran on it (an `order` saga was ever started and no other `order`
/// was registered in its place): reading them needs it.
fn retire_builtin(restored: &mut replay::Restored) {
    let builtin = crate::model::definition::builtin_order();
    let started = restored
        .projections
        .counters
        .by_type
        .get(&builtin.name)
        .map_or(0, |t| t.entered[Status::Started.index()]);
    if started == 0 {
        restored.registry.retire_builtin();
    } else if restored
        .registry
        .get(&builtin.name, builtin.version)
        .map(|d| &**d)
        == Some(&builtin)
    {
        tracing::info!(
            sagas = started,
            "the built-in order definition stays known: sagas of this data directory ran on it"
        );
    }
}

fn view_of(inner: &Inner, done: Done) -> Result<SagaView> {
    match done {
        Done::Appended {
            state: Some(state),
            offsets,
            ..
        } => inner.view(state, offsets.end - 1),
        Done::Unchanged { state, last_offset } | Done::Existing { state, last_offset } => {
            inner.view(state, last_offset)
        }
        Done::Appended { state: None, .. } | Done::Repeated(_) => {
            unreachable!("operations with a view keep their state; only replies repeat")
        }
    }
}
