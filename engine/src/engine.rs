//! The engine service: the API the HTTP server and the relay call.
//!
//! Concurrency: sagas live in shards (a `parking_lot` mutex over a map each). An input
//! is decided under its shard's lock, which is held for microseconds and never across
//! I/O: when deciding needs the log (the first answer to a repeated reply's event id)
//! or the index (a saga not in memory that may have finished), the locked step says so
//! (`Step::Read`), `transact` reads without the lock and decides again, re-checking that
//! what it read still holds (the saga's last offset; the shard's count of sagas that
//! left memory). After a few such rounds it reads under the lock, so a decision always
//! ends. The saga is then marked busy, the records are appended, and the durable wait
//! happens with no lock held, so one group commit carries many sagas' records. A second input for a busy
//! saga waits for the first to be durable (a saga's records are decided one input at a
//! time); other sagas never wait. The new state is installed only once the records are
//! durable: a failed append changes nothing.
//!
//! The one lock held across the durable wait is the snapshot gate, shared by every
//! write and taken exclusively only for a snapshot's cut (microseconds, once no write is
//! in flight): the state in memory then reflects exactly the log below the cut's offset,
//! and the copy-on-write capture that follows (see `replay` and `table`) keeps it so
//! while writes go on.
//!
//! Background threads: the *indexer* follows the log tail and writes the sled indexes
//! (then lets finished sagas leave memory); the *timer* fires due timeouts and retries
//! and starts the periodic snapshots, each in a task of its own beside the timers.

use std::hash::BuildHasher;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use sagalog_storage::{
    DataDir, IndexBatch, IndexStore, Log, LogRecord, LogStats, SnapshotInfo, SnapshotStore,
    StorageError,
};
use tokio::sync::Notify;

use crate::command::Command;
use crate::dead_letters::DeadLetter;
use crate::decider::{decide_and_apply, Input, Rejection, Reply};
use crate::definition::{Definition, Registered, Registry};
use crate::error::{EngineError, Inconsistency, Result};
use crate::feed::{CommandFeed, Cursor, LogHealth};
use crate::indexing::{predecessors, read_saga_record, saga_history, Indexer, Keys, SagaMeta};
use crate::progress::Progress;
use crate::projection::{Place, Projections};
use crate::record::{encode_saga_record, Action, Entry, Kind, Link, Record, Status};
use crate::replay;
use crate::retention::RetentionReport;
use crate::shutdown::{Shutdown, Stop};
use crate::state::{apply_mut, SagaState};
use crate::table::SagaTable;
use crate::timers::Timers;
use crate::view::{self, SagaView};
use sagalog_storage::index::IndexWriter;

use crate::api::{
    self, invalid, EngineStats, HistoryItem, ListPage, ListQuery, ReplyAnswer, StartAnswer,
    StartRequest,
};
use crate::config::{Clock, EngineConfig, EngineObserver, SystemClock};

/// How often each kind of repeated background failure is logged.
const REPEATED_FAILURE_EVERY: Duration = Duration::from_secs(60);
/// Bytes of records the indexer reads at most per batch (beside its record count).
const INDEX_READ_BYTES: usize = 16 << 20;
/// The pause before the indexer tries again after a failed batch.
const INDEX_RETRY: Duration = Duration::from_secs(1);

/// Failures the background threads retry (a full disk refuses them every second):
/// each kind is logged once a minute.
static REPEATED_FAILURES: std::sync::LazyLock<crate::throttle::Throttle> =
    std::sync::LazyLock::new(|| crate::throttle::Throttle::new(REPEATED_FAILURE_EVERY));

/// List calls that scan at once; more wait for a turn.
pub const MAX_CONCURRENT_SCANS: usize = 4;

/// How long the indexer lets records gather after a short batch.
const INDEX_GATHER: Duration = Duration::from_millis(5);

#[derive(Clone)]
pub(crate) struct Slot {
    pub state: SagaState,
    pub busy: bool,
    /// The snapshot capture that last saw it (see `table`): 0 for none yet.
    pub epoch: u32,
    /// Offset of the saga's `saga_started` record (which holds the payload).
    pub first_offset: u64,
    /// Offset of the saga's latest record.
    pub last_offset: u64,
    /// A two-bit-per-id filter of the `event_id`s the saga has recorded: a reply whose
    /// bits are not all set is new without reading the log.
    pub events: u64,
}

#[derive(Default)]
pub(crate) struct Shard {
    pub sagas: Mutex<SagaTable>,
    idle: Notify,
    /// Sagas that left memory (finished and indexed); changed only under `sagas`' lock.
    /// A decision that read the index without the lock re-checks it (see `transact`).
    left: AtomicU64,
}

/// The first answer to a reply, found in the saga's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EventAnswer {
    offset: u64,
    status: Status,
}

/// The bits an `event_id` sets in [`Slot::events`]. Snapshots store these filters:
/// changing this function needs a new snapshot format.
pub(crate) fn event_bits(event_id: &str) -> u64 {
    // FNV's low bits barely differ between ids that differ only at the end (`…/step`):
    // take the bit numbers from the top of a multiplicative mix instead.
    let hash = fnv1a(event_id.bytes()).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (1 << (hash >> 58)) | (1 << ((hash >> 52) & 63))
}

pub(crate) struct Inner {
    pub config: EngineConfig,
    pub clock: Arc<dyn Clock>,
    pub log: Log,
    pub index: IndexStore,
    pub keys: Keys,
    pub snapshots: SnapshotStore,
    pub registry: RwLock<Registry>,
    pub shards: Box<[Shard]>,
    pub projections: Mutex<Projections>,
    /// The due times of the sagas in memory, and the timer thread's wake-ups.
    pub(crate) timers: Timers,
    /// The indexer's progress: its watermark, the finished sagas waiting for it, the
    /// filter of finished ids.
    pub(crate) progress: Progress,
    pub(crate) gate: Arc<tokio::sync::RwLock<()>>,
    active: AtomicUsize,
    since_snapshot: AtomicU64,
    /// The capture epoch of the latest snapshot (see `table`).
    snapshot_epoch: std::sync::atomic::AtomicU32,
    /// Held while a snapshot is taken: one at a time.
    snapshotting: Arc<tokio::sync::Mutex<()>>,
    /// A periodic snapshot runs beside the timers.
    periodic_snapshot: std::sync::atomic::AtomicBool,
    /// Turns for list scans.
    scans: Arc<tokio::sync::Semaphore>,
    snapshot_offset: AtomicU64,
    snapshot_at_ms: AtomicU64,
    replayed: u64,
    stop: Stop,
    id_hasher: std::collections::hash_map::RandomState,
    id_counter: AtomicU64,
    pub(crate) retention: Mutex<crate::retention::Retention>,
    /// Sagas that started below this offset are removed (retention chose to delete
    /// their records; the files may still be there).
    pub(crate) retained_from: AtomicU64,
    /// The reserve was released at open: the disk was full.
    reserve_released: bool,
}

/// The saga engine over one data directory.
pub struct Engine {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

/// An input to decide, and for a start the definition the new saga runs on.
struct Op {
    input: Input,
    definition: Option<Arc<Definition>>,
    /// The saga id was made here for this start: no finished saga can have it.
    fresh_id: bool,
}

impl From<Input> for Op {
    fn from(input: Input) -> Op {
        Op {
            input,
            definition: None,
            fresh_id: false,
        }
    }
}

impl Op {
    /// The definition and request hash of a start.
    fn start(&self) -> Option<(&Arc<Definition>, u64)> {
        match (&self.input, &self.definition) {
            (Input::Start { request_hash, .. }, Some(definition)) => {
                Some((definition, *request_hash))
            }
            _ => None,
        }
    }
}

/// What an operation did.
enum Done {
    /// Records were appended at `offsets`; the saga is now in `status` (and `state`,
    /// when the operation wants it).
    Appended {
        status: Status,
        state: Option<SagaState>,
        first_offset: u64,
        offsets: Range<u64>,
    },
    /// Nothing to append (a tick with nothing due); the saga is `state`.
    Unchanged { state: SagaState, first_offset: u64 },
    /// A repeated start of an existing saga with the same body.
    Existing { state: SagaState, first_offset: u64 },
    /// A reply whose `event_id` was answered before.
    Repeated(EventAnswer),
}

/// Decided under the shard lock: what to append, and the saga before and after.
struct Pending {
    key: Arc<str>,
    records: Vec<Record>,
    /// The link of the first record (the others follow it).
    link: Link,
    after: SagaState,
    /// Whether the caller needs the new state back (not for replies and ticks).
    want_state: bool,
}

enum Step {
    Busy,
    Done(Done),
    Append(Pending),
    /// Deciding needs this read first; `transact` reads it without the shard lock.
    Read(Need),
}

/// A read a decision needs: the log or the index, never done under the shard lock
/// (but as a last resort, see [`MAX_UNLOCKED_READS`]).
enum Need {
    /// The saga's records through `last_offset`, for the first answer to the reply's
    /// event id (the saga's event bits say it may have one).
    Answer { last_offset: u64 },
    /// The index entry of a saga not in memory, which may have finished; `left` is the
    /// shard's count of sagas that left memory when it was asked for.
    Meta { left: u64 },
}

/// What was read without the shard lock, for the next decision; each fact holds only
/// while the saga (or the shard) is as it was when it was read.
#[derive(Default)]
struct Known {
    /// The reply's event has no answer among the saga's records through this offset.
    unanswered_through: Option<u64>,
    /// The saga has no index entry, read while the shard's `left` count was this.
    no_meta_while_left: Option<u64>,
}

/// Reads one transaction makes without the shard lock before it reads under it: a
/// saga (or shard) changing faster than its reads cannot keep a decision waiting.
const MAX_UNLOCKED_READS: u32 = 4;

/// The parts of a saga the projections and timers track.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    pub place: Option<Place>,
    pub due_ms: Option<u64>,
}

impl Summary {
    pub fn of(state: &SagaState) -> Summary {
        Summary {
            place: state.status.map(|status| Place {
                status,
                updated_at_ms: state.updated_at_ms,
            }),
            due_ms: state.pending.map(|p| p.due_ms()),
        }
    }

    pub(crate) fn is_active(&self) -> bool {
        self.place.is_some_and(|p| !p.status.is_terminal())
    }
}

/// FNV-1a: stable across builds and platforms (it is stored in the log), and cheap.
fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// What a repeated start is compared by: the saga type and the canonical payload.
fn request_hash(saga_type: &str, payload: &str) -> u64 {
    fnv1a(saga_type.bytes().chain([0]).chain(payload.bytes()))
}

pub(crate) fn shard_index(saga_id: &str, shards: usize) -> usize {
    (fnv1a(saga_id.bytes()) % shards as u64) as usize
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
        let restored = replay::restore(&log, &snapshots, config.shards, watermark)?;
        let log_start = log.start_offset();
        let snapshot_at_ms = written_at_ms(&snapshots, restored.snapshot_offset);
        let inner = Arc::new(Inner {
            clock,
            log,
            index,
            keys,
            snapshots,
            registry: RwLock::new(restored.registry),
            shards: restored.shards,
            projections: Mutex::new(restored.projections),
            timers: Timers::new(restored.timers),
            progress: Progress::new(watermark, restored.unindexed, config.max_unindexed),
            gate: Arc::new(tokio::sync::RwLock::new(())),
            active: AtomicUsize::new(restored.active),
            // Records replayed count towards the next snapshot: a long replay is
            // followed by a snapshot soon, so the next start is short.
            since_snapshot: AtomicU64::new(restored.replayed),
            snapshot_epoch: std::sync::atomic::AtomicU32::new(0),
            snapshotting: Arc::new(tokio::sync::Mutex::new(())),
            periodic_snapshot: std::sync::atomic::AtomicBool::new(false),
            scans: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_SCANS)),
            snapshot_offset: AtomicU64::new(restored.snapshot_offset),
            snapshot_at_ms: AtomicU64::new(snapshot_at_ms),
            replayed: restored.replayed,
            stop: Shutdown::new().0,
            id_hasher: std::collections::hash_map::RandomState::new(),
            id_counter: AtomicU64::new(0),
            retention: Mutex::default(),
            retained_from: AtomicU64::new(log_start),
            reserve_released,
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
        engine.threads.push(spawn("sagalog-timer", run_timer)?);
        Ok(engine)
    }

    /// Rebuilds the indexes of the (closed) data directory `dir` from its log, from
    /// nothing; returns how many records it read. `sagalog reindex` runs this.
    pub fn reindex(dir: impl AsRef<Path>, config: &EngineConfig) -> Result<u64> {
        let data = DataDir::open(dir)?;
        let (log, _) = data.open_log(config.log.clone())?;
        let index = data.open_index()?;
        index.clear()?;
        replay::catch_up_index(&log, &index, &Keys::default(), config.index_batch_records)?;
        index.flush()?;
        Ok(log.next_offset() - log.start_offset())
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
        crate::command::render(&self.inner.log, &self.inner.registry, records)
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
        let saga_id = match request.saga_id {
            Some(id) => api::check_saga_id(&id).map(|()| id)?,
            None => inner.random_uuid().to_string(),
        };
        let trace_id = match request.trace_id {
            Some(t) => api::check_trace_id(&t).map(|()| t)?,
            None => inner.random_uuid().simple().to_string(),
        };
        let payload = request.payload.to_string();
        api::check_size("payload", payload.len(), inner.config.max_payload_bytes)?;
        let op = Op {
            input: Input::Start {
                request_hash: request_hash(&definition.name, &payload),
                payload: payload.clone(),
                trace_id,
            },
            definition: Some(definition),
            fresh_id,
        };
        match inner.transact(&saga_id, op).await? {
            // The payload is at hand: no need to read it back from the log.
            Done::Appended {
                state: Some(state), ..
            } => Ok(StartAnswer {
                saga: view::saga_view(&state, payload),
                created: true,
            }),
            Done::Existing {
                state,
                first_offset,
            } => Ok(StartAnswer {
                saga: inner.view(&state, first_offset)?,
                created: false,
            }),
            Done::Appended { state: None, .. } | Done::Unchanged { .. } | Done::Repeated(_) => {
                unreachable!("a start appends (with its state) or finds the saga")
            }
        }
    }

    pub async fn reply(&self, saga_id: &str, reply: Reply) -> Result<ReplyAnswer> {
        api::check_reply(&reply, self.inner.config.max_payload_bytes)?;
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
        api::check_reason(&reason)?;
        let done = self
            .inner
            .transact(saga_id, Input::Override { to, reason }.into())
            .await?;
        self.inner.view_of(done)
    }

    /// An operator re-issues the saga's pending command with a fresh attempt budget.
    pub async fn retry(&self, saga_id: &str) -> Result<SagaView> {
        let done = self.inner.transact(saga_id, Input::Retry.into()).await?;
        self.inner.view_of(done)
    }

    pub fn get(&self, saga_id: &str) -> Result<SagaView> {
        self.inner.get_view(saga_id)
    }

    /// Every record of the saga, oldest first, with its offset.
    pub async fn history(&self, saga_id: &str) -> Result<Vec<HistoryItem>> {
        self.inner.history(saga_id).await
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
            inner.list(&query)
        })
        .await
        .unwrap_or_else(|e| Err(task_failed("listing sagas", e)))
    }

    /// Registers a definition (recorded in the log so it survives a restart).
    pub async fn register_definition(&self, definition: Definition) -> Result<Registered> {
        self.inner.register_definition(definition).await
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
        self.inner
            .log
            .append(entry.encode())
            .await
            .map_err(EngineError::Unavailable)
    }

    /// Dead letters after the entry offset `after`, oldest first (as far as indexed).
    pub fn dead_letters(&self, after: Option<u64>, limit: usize) -> Result<Vec<DeadLetter>> {
        let inner = &self.inner;
        crate::dead_letters::list(
            &inner.log,
            &inner.index,
            &inner.keys,
            &inner.registry,
            after,
            limit,
        )
    }

    /// Puts the dead-lettered command at `dead_letter_offset` back into the command
    /// feed (the relay publishes it again); returns the replay entry's offset.
    pub async fn replay_dead_letter(&self, dead_letter_offset: u64) -> Result<u64> {
        // Held across the check and the append, so retention cannot remove the
        // command's saga in between.
        let _gate = self.inner.gate.read().await;
        let log = &self.inner.log;
        let (saga_id, command_offset, _) = crate::dead_letters::read(log, dead_letter_offset)?;
        let (link, _) = read_saga_record(log, command_offset).map_err(|e| e.for_saga(&saga_id))?;
        let (_, first) =
            predecessors(log, command_offset, link).map_err(|e| e.for_saga(&saga_id))?;
        let start = self.inner.retained_from.load(Ordering::SeqCst);
        if first < start {
            return Err(EngineError::SagaRemoved { saga_id, start });
        }
        let entry = Entry::DeadLetterReplayed {
            dead_letter_offset,
            command_offset,
        };
        self.inner
            .log
            .append(entry.encode())
            .await
            .map_err(EngineError::Unavailable)
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

    pub fn stats(&self) -> EngineStats {
        let inner = &self.inner;
        let counters = inner.projections.lock().counters.clone();
        let mut active_by_status = [0; 6];
        for status in Status::ALL.into_iter().filter(|s| !s.is_terminal()) {
            active_by_status[status.index()] = counters.status_counts[status.index()] as usize;
        }
        let mut oldest_updated_ms: [Option<u64>; 6] = [None; 6];
        for shard in inner.shards.iter() {
            for slot in shard.sagas.lock().values() {
                if let Some(status) = slot.state.status.filter(|s| !s.is_terminal()) {
                    let oldest = &mut oldest_updated_ms[status.index()];
                    *oldest = Some(oldest.map_or(slot.state.updated_at_ms, |o| {
                        o.min(slot.state.updated_at_ms)
                    }));
                }
            }
        }
        EngineStats {
            counters,
            active_by_status,
            oldest_updated_ms,
            log_next_offset: inner.log.next_offset(),
            index_watermark: inner.progress.watermark(),
            snapshot_offset: inner.snapshot_offset.load(Ordering::Relaxed),
            snapshot_at_ms: inner.snapshot_at_ms.load(Ordering::Relaxed),
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

/// When the snapshot at `offset` was written: its file's modification time in unix ms,
/// or 0 when there is no such snapshot (offset 0 is "none") or the time is unreadable.
fn written_at_ms(snapshots: &SnapshotStore, offset: u64) -> u64 {
    if offset == 0 {
        return 0;
    }
    let Ok(list) = snapshots.list() else { return 0 };
    list.iter()
        .find(|info| info.offset == offset)
        .map_or(0, |info| modified_ms(&info.path))
}

/// A file's modification time in unix ms, 0 when it cannot be read.
fn modified_ms(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
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

impl Inner {
    fn shard(&self, saga_id: &str) -> &Shard {
        &self.shards[shard_index(saga_id, self.shards.len())]
    }

    /// A random (version 4) UUID for ids and trace ids the caller did not give: SipHash
    /// with a random per-process key over a counter — unpredictable and unique, without
    /// a system call per id.
    fn random_uuid(&self) -> uuid::Uuid {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        let high = self.id_hasher.hash_one((n, 0u8));
        let low = self.id_hasher.hash_one((n, 1u8));
        let bytes = (u128::from(high) << 64 | u128::from(low)).to_be_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// The type of a saga in memory.
    pub(crate) fn saga_type_in_memory(&self, saga_id: &str) -> Option<String> {
        let sagas = self.shard(saga_id).sagas.lock();
        sagas
            .get(saga_id)
            .map(|slot| slot.state.definition.name.clone())
    }

    /// Decides `op` for the saga, appends the records and installs the new state once
    /// they are durable.
    ///
    /// Cancel-safe: once the saga is marked busy, the append and the install run in a
    /// task of their own, so a caller that goes away (a closed HTTP connection) cannot
    /// leave the saga busy, or its records durable but not installed.
    async fn transact(self: &Arc<Self>, saga_id: &str, op: Op) -> Result<Done> {
        let gate = self.gate.clone().read_owned().await;
        self.progress.wait_for_room().await?;
        let shard = self.shard(saga_id);
        let mut known = Known::default();
        let mut reads = 0;
        let pending = loop {
            let idle = shard.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let under_lock = reads >= MAX_UNLOCKED_READS;
            match self.decide_locked(shard, saga_id, &op, &mut known, under_lock)? {
                Step::Busy => idle.await,
                Step::Done(done) => return Ok(done),
                Step::Append(pending) => break pending,
                Step::Read(need) => {
                    reads += 1;
                    if let Some(done) = self.read_for(saga_id, &op, need, &mut known)? {
                        return Ok(done);
                    }
                }
            }
        };
        // The saga is busy from here: a caller dropped before the records reach the
        // writer releases it (`Release`); one dropped after leaves the rest to a task
        // (`Finishing`), since the records will be durable either way.
        let release = Release {
            inner: self,
            key: Some(pending.key.clone()),
        };
        let encoded: Vec<Vec<u8>> = pending
            .records
            .iter()
            .enumerate()
            .map(|(i, record)| {
                let link = if i == 0 { pending.link } else { Link::Follows };
                encode_saga_record(link, record)
            })
            .collect();
        let submitted = self.log.submit_batch(encoded).await;
        release.disarm();
        match submitted {
            Err(e) => self.install(pending, Err(e)),
            Ok(appending) => {
                Finishing {
                    inner: self.clone(),
                    gate: Some(gate),
                    pending: Some(pending),
                    appending: Some(appending),
                }
                .run()
                .await
            }
        }
    }

    /// Installs the outcome of a transaction's append: the new state once its records
    /// are durable, or the saga as it was when they are not.
    fn install(
        &self,
        pending: Pending,
        appended: sagalog_storage::Result<Range<u64>>,
    ) -> Result<Done> {
        let offsets = match appended {
            Ok(offsets) => offsets,
            Err(e) => {
                self.release(&pending.key);
                return Err(EngineError::Unavailable(e));
            }
        };
        let shard = self.shard(&pending.key);
        let done = {
            let mut sagas = shard.sagas.lock();
            let slot = sagas
                .get_mut(&pending.key)
                .expect("a busy saga stays in memory");
            slot.busy = false;
            let before = Summary::of(&slot.state);
            if slot.state.status.is_none() {
                slot.first_offset = offsets.start;
            }
            slot.last_offset = offsets.end - 1;
            slot.state = pending.after;
            self.installed(&pending.key, before, slot, &pending.records, &offsets);
            Done::Appended {
                status: slot.state.status.expect("started"),
                state: pending.want_state.then(|| slot.state.clone()),
                first_offset: slot.first_offset,
                offsets,
            }
        };
        shard.idle.notify_waiters();
        Ok(done)
    }

    /// Leaves a busy saga as it was before a transaction whose records were not
    /// appended (a saga that was being started goes), and wakes its waiters.
    fn release(&self, key: &str) {
        let shard = self.shard(key);
        {
            let mut sagas = shard.sagas.lock();
            if let Some(slot) = sagas.get_mut(key) {
                slot.busy = false;
                if slot.state.status.is_none() {
                    sagas.remove(key);
                }
            }
        }
        shard.idle.notify_waiters();
    }

    /// Decides `op` under the shard lock. A decision that needs the log or the index
    /// returns `Step::Read` instead, unless `read_under_lock` (the last resort): the
    /// caller reads without the lock, keeps what it learnt in `known`, and asks again.
    fn decide_locked(
        &self,
        shard: &Shard,
        saga_id: &str,
        op: &Op,
        known: &mut Known,
        read_under_lock: bool,
    ) -> Result<Step> {
        let now_ms = self.clock.now_ms();
        let mut sagas = shard.sagas.lock();
        if let Some(slot) = sagas.get_mut(saga_id) {
            let key = slot.state.saga_id.clone();
            if slot.busy {
                return Ok(Step::Busy);
            }
            if let Some((definition, request_hash)) = op.start() {
                return same_start(&slot.state, definition, request_hash).map(|()| {
                    Step::Done(Done::Existing {
                        state: slot.state.clone(),
                        first_offset: slot.first_offset,
                    })
                });
            }
            if let Input::Reply(reply) = &op.input {
                let bits = event_bits(&reply.event_id);
                // The records through `last_offset` are the saga's as it is now: what
                // was read of them holds as long as it is unchanged.
                if slot.events & bits == bits && known.unanswered_through != Some(slot.last_offset)
                {
                    let need = Need::Answer {
                        last_offset: slot.last_offset,
                    };
                    if !read_under_lock {
                        return Ok(Step::Read(need));
                    }
                    if let Some(done) = self.read_for(saga_id, op, need, known)? {
                        return Ok(Step::Done(done));
                    }
                }
            }
            let (records, after) = decide_and_apply(&slot.state, op.input.clone(), now_ms)?;
            if records.is_empty() {
                return Ok(Step::Done(Done::Unchanged {
                    state: after,
                    first_offset: slot.first_offset,
                }));
            }
            slot.busy = true;
            return Ok(Step::Append(Pending {
                want_state: !matches!(op.input, Input::Reply(_) | Input::Tick),
                key,
                records,
                link: Link::After {
                    prev: slot.last_offset,
                    first: slot.first_offset,
                },
                after,
            }));
        }
        // Not in memory: a new saga, or one that finished and left memory, or none. A
        // saga leaves memory only once its index entry is written, so an entry read as
        // missing stays missing while no saga of the shard left memory since.
        let left = shard.left.load(Ordering::Relaxed);
        let may_have_finished = !op.fresh_id && self.progress.may_have_finished(saga_id);
        if may_have_finished && known.no_meta_while_left != Some(left) {
            let need = Need::Meta { left };
            if !read_under_lock {
                return Ok(Step::Read(need));
            }
            if let Some(done) = self.read_for(saga_id, op, need, known)? {
                return Ok(Step::Done(done));
            }
        }
        let Some((definition, _)) = op.start() else {
            return Err(self.not_found(saga_id));
        };
        let limit = self.config.max_active_sagas;
        if self.active.load(Ordering::Relaxed) >= limit {
            return Err(EngineError::AtLimit {
                what: crate::error::ACTIVE_SAGAS,
                limit,
            });
        }
        let key: Arc<str> = Arc::from(saga_id);
        let state = SagaState::new(key.clone(), definition.clone());
        let (records, after) = decide_and_apply(&state, op.input.clone(), now_ms)?;
        sagas.insert(Slot {
            state,
            busy: true,
            epoch: 0,
            first_offset: 0,
            last_offset: 0,
            events: 0,
        });
        Ok(Step::Append(Pending {
            want_state: true,
            key,
            records,
            link: Link::Start,
            after,
        }))
    }

    /// Makes the read a decision needs: the answer it gives, when the read settles the
    /// operation, or `None` with what was learnt kept in `known`.
    fn read_for(
        &self,
        saga_id: &str,
        op: &Op,
        need: Need,
        known: &mut Known,
    ) -> Result<Option<Done>> {
        match need {
            Need::Answer { last_offset } => {
                let Input::Reply(reply) = &op.input else {
                    unreachable!("only a reply asks for its answer")
                };
                match self.find_reply(saga_id, last_offset, &reply.event_id)? {
                    Some(answer) => Ok(Some(Done::Repeated(answer))),
                    None => {
                        known.unanswered_through = Some(last_offset);
                        Ok(None)
                    }
                }
            }
            Need::Meta { left } => match self.meta(saga_id)? {
                // A finished saga never comes back to memory: answer from its records.
                Some(meta) => self.answer_finished(saga_id, op, &meta).map(Some),
                None => {
                    known.no_meta_while_left = Some(left);
                    Ok(None)
                }
            },
        }
    }

    /// `op` on a saga that finished and left memory (its index entry is `meta`).
    fn answer_finished(&self, saga_id: &str, op: &Op, meta: &SagaMeta) -> Result<Done> {
        let finished = || -> EngineError {
            Rejection::Finished {
                saga_id: saga_id.to_string(),
                status: meta.status,
            }
            .into()
        };
        if let Some((definition, request_hash)) = op.start() {
            let (state, first_offset, _) = self.load_finished(saga_id, meta)?;
            return same_start(&state, definition, request_hash).map(|()| Done::Existing {
                state,
                first_offset,
            });
        }
        match &op.input {
            Input::Reply(reply) => {
                match self.find_reply(saga_id, meta.last_offset, &reply.event_id)? {
                    Some(answer) => Ok(Done::Repeated(answer)),
                    None => Err(finished()),
                }
            }
            Input::Tick => {
                let (state, first_offset, _) = self.load_finished(saga_id, meta)?;
                Ok(Done::Unchanged {
                    state,
                    first_offset,
                })
            }
            _ => Err(finished()),
        }
    }

    /// The first answer to `event_id` among the saga's records, read back from its last.
    fn find_reply(
        &self,
        saga_id: &str,
        last_offset: u64,
        event_id: &str,
    ) -> Result<Option<EventAnswer>> {
        let history = saga_history(&self.log, saga_id, last_offset)?;
        Ok(history.into_iter().find_map(|(offset, record)| {
            record
                .kind
                .reply()
                .filter(|(id, _)| *id == event_id)
                .map(|(_, status)| EventAnswer { offset, status })
        }))
    }

    /// What the index keeps of a finished saga that left memory.
    fn meta(&self, saga_id: &str) -> Result<Option<SagaMeta>> {
        self.index
            .get(&self.keys.saga, saga_id.as_bytes())?
            .map(|value| {
                SagaMeta::decode(&value).ok_or_else(|| {
                    Inconsistency::BadIndexEntry {
                        what: "saga",
                        key: saga_id.to_string(),
                    }
                    .into()
                })
            })
            .transpose()
    }

    /// Updates projections, timers and what waits for the indexer after `records`
    /// took a saga from `before` to `slot.state`.
    fn installed(
        &self,
        key: &Arc<str>,
        before: Summary,
        slot: &mut Slot,
        records: &[Record],
        offsets: &Range<u64>,
    ) {
        let after = Summary::of(&slot.state);
        self.note_change(key, &slot.state.definition.name, before, after, records);
        if let Some(observer) = &self.config.observer {
            observe(observer.as_ref(), before, &slot.state, records);
        }
        log_records(before, &slot.state, records, offsets);
        for record in records {
            if let Some((event_id, _)) = record.kind.reply() {
                slot.events |= event_bits(event_id);
            }
        }
        if slot.state.is_terminal() {
            self.progress.finished(offsets.end - 1, key.clone());
        }
        let appended = self
            .since_snapshot
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let every = self.config.snapshot_every_records;
        if every > 0 && appended + records.len() as u64 >= every {
            self.timers.wake();
        }
    }

    /// Projections, timers and the active count for a saga that `records` took from
    /// `before` to `after`. The projections count every status the records pass
    /// through (a first step failing for good goes FAILED, then COMPENSATED, in one
    /// transaction), record by record as replay does.
    fn note_change(
        &self,
        key: &Arc<str>,
        saga_type: &str,
        before: Summary,
        after: Summary,
        records: &[Record],
    ) {
        if before.place != after.place {
            let mut projections = self.projections.lock();
            let mut place = before.place;
            for record in records {
                let status = crate::state::status_after(place.map(|p| p.status), &record.kind);
                let next = status.map(|status| Place {
                    status,
                    updated_at_ms: record.at_ms,
                });
                if next.map(|p| p.status) != place.map(|p| p.status) {
                    projections.moved(saga_type, place, next);
                }
                place = next;
            }
            debug_assert_eq!(
                place.map(|p| p.status),
                after.place.map(|p| p.status),
                "the records' statuses end where the state does"
            );
        }
        self.timers.moved(key, before.due_ms, after.due_ms);
        match (before.is_active(), after.is_active()) {
            (false, true) => {
                self.active.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.active.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// The indexer committed everything below `watermark`: finished sagas it covers
    /// leave memory.
    fn indexed_through(&self, watermark: u64) {
        for key in self.progress.take_indexed(watermark) {
            let shard = self.shard(&key);
            let mut sagas = shard.sagas.lock();
            let leave = sagas.get(&key).is_some_and(|slot| {
                !slot.busy && slot.state.is_terminal() && slot.last_offset < watermark
            });
            if leave {
                sagas.remove(&key);
                shard.left.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.progress.publish(watermark);
    }

    fn not_found(&self, saga_id: &str) -> EngineError {
        EngineError::SagaNotFound {
            saga_id: saga_id.to_string(),
            log_start: self.log.start_offset(),
        }
    }

    /// A finished saga that left memory, rebuilt from its records:
    /// (state, offset of its first record, its start payload).
    fn load_finished(&self, saga_id: &str, meta: &SagaMeta) -> Result<(SagaState, u64, String)> {
        let start = self.retained_from.load(Ordering::SeqCst);
        if meta.first_offset < start {
            return Err(EngineError::SagaRemoved {
                saga_id: saga_id.to_string(),
                start,
            });
        }
        let mut history =
            saga_history(&self.log, saga_id, meta.last_offset).map_err(|e| e.for_saga(saga_id))?;
        let definition = match history.first().map(|(_, r)| &r.kind) {
            Some(Kind::SagaStarted {
                saga_type,
                definition_version,
                ..
            }) => self
                .registry
                .read()
                .get(saga_type, *definition_version)
                .cloned()
                .ok_or_else(|| Inconsistency::UnregisteredDefinition {
                    saga_id: saga_id.to_string(),
                    saga_type: saga_type.clone(),
                    version: *definition_version,
                })?,
            _ => {
                return Err(Inconsistency::HistoryWithoutStart {
                    saga_id: saga_id.to_string(),
                }
                .into())
            }
        };
        let mut state = SagaState::new(saga_id, definition);
        for (_, record) in &history {
            apply_mut(&mut state, record);
        }
        let payload = match &mut history[0].1.kind {
            Kind::SagaStarted { payload, .. } => std::mem::take(payload),
            _ => unreachable!("checked above"),
        };
        Ok((state, meta.first_offset, payload))
    }

    /// Where a saga's records end, whether it is in memory or finished: (first, last).
    fn saga_offsets(&self, saga_id: &str) -> Result<Option<(u64, u64)>> {
        let in_memory = {
            let sagas = self.shard(saga_id).sagas.lock();
            sagas
                .get(saga_id)
                .filter(|slot| slot.state.status.is_some())
                .map(|slot| (slot.first_offset, slot.last_offset))
        };
        match in_memory {
            Some(offsets) => Ok(Some(offsets)),
            None => Ok(self.meta(saga_id)?.map(|m| (m.first_offset, m.last_offset))),
        }
    }

    fn view(&self, state: &SagaState, first_offset: u64) -> Result<SagaView> {
        let (_, started) =
            read_saga_record(&self.log, first_offset).map_err(|e| e.for_saga(&state.saga_id))?;
        let payload = match started.kind {
            Kind::SagaStarted { payload, .. } if *started.saga_id == *state.saga_id => payload,
            _ => {
                return Err(Inconsistency::WrongStart {
                    saga_id: state.saga_id.to_string(),
                    offset: first_offset,
                }
                .into())
            }
        };
        Ok(view::saga_view(state, payload))
    }

    fn view_of(&self, done: Done) -> Result<SagaView> {
        match done {
            Done::Appended {
                state: Some(state),
                first_offset,
                ..
            }
            | Done::Unchanged {
                state,
                first_offset,
            }
            | Done::Existing {
                state,
                first_offset,
            } => self.view(&state, first_offset),
            Done::Appended { state: None, .. } | Done::Repeated(_) => {
                unreachable!("operations with a view keep their state; only replies repeat")
            }
        }
    }

    pub(crate) fn get_view(&self, saga_id: &str) -> Result<SagaView> {
        let in_memory = {
            let sagas = self.shard(saga_id).sagas.lock();
            sagas
                .get(saga_id)
                .filter(|slot| slot.state.status.is_some())
                .map(|slot| (slot.state.clone(), slot.first_offset))
        };
        if let Some((state, first_offset)) = in_memory {
            return self.view(&state, first_offset);
        }
        match self.meta(saga_id)? {
            // The records are read already: the payload is the first one's.
            Some(meta) => {
                let (state, _, payload) = self.load_finished(saga_id, &meta)?;
                Ok(view::saga_view(&state, payload))
            }
            None => Err(self.not_found(saga_id)),
        }
    }

    async fn history(&self, saga_id: &str) -> Result<Vec<HistoryItem>> {
        let (_, last) = self
            .saga_offsets(saga_id)?
            .ok_or_else(|| self.not_found(saga_id))?;
        Ok(saga_history(&self.log, saga_id, last)
            .map_err(|e| e.for_saga(saga_id))?
            .into_iter()
            .map(|(offset, record)| HistoryItem { offset, record })
            .collect())
    }

    fn list(&self, query: &ListQuery) -> Result<ListPage> {
        crate::list::list(self, query)
    }

    async fn register_definition(self: &Arc<Self>, definition: Definition) -> Result<Registered> {
        let gate = self.gate.clone().read_owned().await;
        {
            let registry = self.registry.read();
            let mut probe = registry.clone();
            if probe.register(definition.clone())? == Registered::Unchanged {
                return Ok(Registered::Unchanged);
            }
            let limit = self.config.max_definition_versions;
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
        let inner = self.clone();
        tokio::spawn(async move {
            inner
                .log
                .append(entry.encode())
                .await
                .map_err(EngineError::Unavailable)?;
            let registered = inner.registry.write().register(definition)?;
            drop(gate);
            Ok(registered)
        })
        .await
        .unwrap_or_else(|e| Err(task_failed("registering a definition", e)))
    }

    /// Takes a snapshot: writes stop only for its cut (see `replay`), then it is
    /// captured and written off the runtime while they go on. One at a time: the
    /// blocking task that captures and writes holds the turn, so even a dropped caller
    /// cannot let a second capture begin while the first runs.
    async fn snapshot(self: &Arc<Self>) -> Result<SnapshotInfo> {
        let one = self.snapshotting.clone().lock_owned().await;
        let started = std::time::Instant::now();
        let cut = {
            let _gate = self.gate.write().await;
            let epoch = self.snapshot_epoch.fetch_add(1, Ordering::Relaxed) + 1;
            replay::cut(self, epoch)
        };
        let paused_ms = started.elapsed().as_millis() as u64;
        let offset = cut.offset;
        let inner = self.clone();
        // The turn goes with the blocking task, and comes back to be held until the
        // offsets below are stored: a later snapshot's cannot be overwritten by these.
        let (_one, written) = tokio::task::spawn_blocking(move || {
            let written = replay::write_snapshot(&inner, &cut);
            (one, written)
        })
        .await
        .map_err(|e| task_failed("writing the snapshot", e))?;
        let info = written?;
        self.snapshot_offset.store(offset, Ordering::Relaxed);
        // The file's own time, as a restart reads it: the gauge keeps its value.
        self.snapshot_at_ms
            .store(modified_ms(&info.path), Ordering::Relaxed);
        // Records appended since the cut count towards the next one.
        self.since_snapshot.store(
            self.log.next_offset().saturating_sub(offset),
            Ordering::Relaxed,
        );
        tracing::info!(
            offset,
            bytes = info.bytes,
            writes_paused_ms = paused_ms,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot taken"
        );
        Ok(info)
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

    async fn run_due_timers(self: Arc<Self>) -> usize {
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

/// Logs each record with the saga's trace id (debug), and a saga that failed (info) or
/// whose compensation failed (warn), so one trace id finds a saga in the logs.
fn log_records(before: Summary, state: &SagaState, records: &[Record], offsets: &Range<u64>) {
    let status = state.status.expect("installed sagas started");
    let changed = before.place.map(|p| p.status) != Some(status);
    let failed = changed && matches!(status, Status::Failed | Status::CompensationFailed);
    if !failed && !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let trace_id = crate::state::trace_id_hex(&state.trace_id);
    for (record, offset) in records.iter().zip(offsets.clone()) {
        tracing::debug!(saga_id = %state.saga_id, trace_id, offset, seq = record.seq, kind = record.kind.name(), "saga record");
    }
    let reason = state.failure_reason.as_deref().unwrap_or_default();
    match status {
        Status::Failed if failed => {
            tracing::info!(saga_id = %state.saga_id, trace_id, reason, "saga failed; compensating")
        }
        Status::CompensationFailed if failed => {
            tracing::warn!(saga_id = %state.saga_id, trace_id, reason, "compensation failed; an operator must retry or override")
        }
        _ => {}
    }
}

/// Reports what `records` did to the observer. A step's duration runs from the saga's
/// record before the outcome (the command's issue or re-issue) to the outcome.
fn observe(observer: &dyn EngineObserver, before: Summary, state: &SagaState, records: &[Record]) {
    let saga_type = state.definition.name.as_str();
    let step_name = |step: u16| state.definition.steps[usize::from(step)].name.as_str();
    let mut previous_at = before
        .place
        .map_or(state.created_at_ms, |p| p.updated_at_ms);
    for record in records {
        let took = record.at_ms.saturating_sub(previous_at);
        match &record.kind {
            Kind::StepSucceeded { step, .. } => observer.step_outcome(
                saga_type,
                step_name(*step),
                Action::Execute,
                "succeeded",
                took,
            ),
            Kind::StepCompensated { step, .. } => observer.step_outcome(
                saga_type,
                step_name(*step),
                Action::Compensate,
                "compensated",
                took,
            ),
            Kind::StepFailed { step, action, .. } => {
                let outcome = match action {
                    Action::Execute => "failed",
                    Action::Compensate => "compensation_failed",
                };
                observer.step_outcome(saga_type, step_name(*step), *action, outcome, took)
            }
            Kind::StepTimedOut { step, action, .. } => {
                observer.step_outcome(saga_type, step_name(*step), *action, "timed_out", took)
            }
            _ => {}
        }
        previous_at = record.at_ms;
    }
    let status = state.status.expect("installed sagas started");
    let changed = before.place.map(|p| p.status) != Some(status);
    let reportable =
        status.is_terminal() || matches!(status, Status::Failed | Status::CompensationFailed);
    if changed && reportable {
        observer.saga_status(
            saga_type,
            status,
            state.updated_at_ms.saturating_sub(state.created_at_ms),
        );
    }
}

/// Releases a busy saga whose records never reached the writer (the transaction was
/// dropped while waiting for room in the writer's queue).
struct Release<'a> {
    inner: &'a Inner,
    key: Option<Arc<str>>,
}

impl Release<'_> {
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.inner.release(&key);
        }
    }
}

/// Waits for a transaction's records to be durable and installs them. Dropped before
/// that (its caller went away), it hands the wait and the install to a task: the
/// records are on their way to disk, and the saga must not stay busy nor its state fall
/// behind its records.
struct Finishing {
    inner: Arc<Inner>,
    gate: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
    pending: Option<Pending>,
    appending: Option<sagalog_storage::Appending>,
}

impl Finishing {
    async fn run(mut self) -> Result<Done> {
        let appended = self.appending.as_mut().expect("set until run").await;
        self.appending = None;
        let pending = self.pending.take().expect("set until run");
        let done = self.inner.install(pending, appended);
        drop(self.gate.take());
        done
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        let (Some(pending), Some(appending)) = (self.pending.take(), self.appending.take()) else {
            return;
        };
        let (inner, gate) = (self.inner.clone(), self.gate.take());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let appended = appending.await;
                    if let Err(e) = inner.install(pending, appended) {
                        tracing::warn!(error = %e, "an abandoned transaction's records were not installed");
                    }
                    drop(gate);
                });
            }
            Err(_) => tracing::error!(
                saga_id = %pending.key,
                "a transaction was dropped outside a runtime; the saga stays busy until restart"
            ),
        }
    }
}

/// The start of an existing saga matches a repeated start when type and payload do.
fn same_start(state: &SagaState, definition: &Definition, request_hash: u64) -> Result<()> {
    if state.definition.name == definition.name && state.request_hash == request_hash {
        Ok(())
    } else {
        Err(EngineError::StartConflict {
            saga_id: state.saga_id.to_string(),
        })
    }
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

/// Follows the log tail and writes the indexes, one sled batch per batch of records.
fn run_indexer(inner: Arc<Inner>) {
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
fn run_timer(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    current_thread_runtime().block_on(async {
        loop {
            if stop.is_set() {
                return;
            }
            let every = inner.config.snapshot_every_records;
            let due = every > 0 && inner.since_snapshot.load(Ordering::Relaxed) >= every;
            if due && !inner.periodic_snapshot.swap(true, Ordering::AcqRel) {
                // In a task of its own: due timers keep firing while it is written.
                let inner = inner.clone();
                tokio::spawn(async move {
                    if let Err(e) = inner.snapshot().await {
                        tracing::error!(error = %e, "periodic snapshot failed");
                        inner.since_snapshot.store(0, Ordering::Relaxed);
                    }
                    inner.periodic_snapshot.store(false, Ordering::Release);
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

/// An engine task that panicked or was cancelled (`what` it was doing).
fn task_failed(what: &'static str, e: tokio::task::JoinError) -> EngineError {
    Inconsistency::TaskFailed {
        what,
        reason: e.to_string(),
    }
    .into()
}
