//! The offline commands (docs/recovery.md) over a data directory no server holds (except
//! [`backup`], which reads beside a running server): verify, recover, replay, inspect,
//! backup and restore. `snapshot` and `reindex` are
//! [`Engine::snapshot`](crate::Engine::snapshot) on an opened engine and
//! [`Engine::reindex`](crate::Engine::reindex).
//!
//! Each returns a report the binary prints for a person or as JSON; none prints itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sagalog_storage::check::{check_log, cut_log, segment_bases, LogCheck, LogCut};
use sagalog_storage::format::whole_frames;
use sagalog_storage::{fsync_dir, segment_path, DataDir, LogRecord, LOG_DIR, SNAPSHOT_DIR};
use serde::Serialize;

use crate::config::EngineConfig;
use crate::error::{EngineError, Inconsistency, Result};
use crate::indexing::{decode_at, Keys, SagaMeta};
use crate::record::{peek, Entry, Kind, Record, Status};

/// Reports progress of long steps (the binary draws bars; tests pass [`NoProgress`]).
pub trait Progress {
    /// A step of `total` units (bytes or items) begins.
    fn begin(&self, _step: &str, _total: u64) {}
    fn advance(&self, _units: u64) {}
    fn end(&self) {}
}

pub struct NoProgress;

impl Progress for NoProgress {}

/// Most problems of one kind listed one by one (the rest are counted).
const MAX_LISTED: usize = 100;

/// `dir` must be a data directory already: offline commands never make one.
pub fn require_data_dir(dir: &Path) -> Result<()> {
    if dir.join(LOG_DIR).is_dir() {
        Ok(())
    } else {
        Err(EngineError::InvalidRequest {
            field: "data_dir",
            message: format!(
                "{} is not a sagalog data directory (it has no log/)",
                dir.display()
            ),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotCheck {
    pub offset: u64,
    pub path: PathBuf,
    pub bytes: u64,
    /// Why it is unusable (`serve` then falls back to an older one or the whole log).
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexCheck {
    /// Why the index was not checked, if it was not.
    pub skipped: Option<String>,
    pub watermark: u64,
    pub sagas: u64,
    pub dead_letters: u64,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub data_dir: PathBuf,
    pub log: LogCheck,
    pub snapshots: Vec<SnapshotCheck>,
    pub index: IndexCheck,
}

impl VerifyReport {
    /// Every problem, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .log
            .problems
            .iter()
            .map(|p| format!("log: {p}"))
            .collect();
        out.extend(self.snapshots.iter().filter_map(|s| {
            s.problem
                .as_ref()
                .map(|p| format!("snapshot at offset {}: {p}", s.offset))
        }));
        out.extend(self.index.problems.iter().map(|p| format!("index: {p}")));
        out
    }

    pub fn is_clean(&self) -> bool {
        self.problems().is_empty()
    }
}

/// Checks every record's CRC, every snapshot, and the indexes against the log, changing
/// nothing (the indexes are checked only when the log is whole, on a copy in a
/// temporary directory: sled writes even when it only reads).
pub fn verify(dir: &Path, config: &EngineConfig, progress: &dyn Progress) -> Result<VerifyReport> {
    require_data_dir(dir)?;
    let data = DataDir::open_inspect(dir)?;
    let log_dir = data.log_dir();
    let bytes: u64 = segment_bases(&log_dir)?
        .iter()
        .filter_map(|base| std::fs::metadata(segment_path(&log_dir, *base)).ok())
        .map(|m| m.len())
        .sum();
    progress.begin("checking the log", bytes);
    let log = check_log(&log_dir, &config.log, &|n| progress.advance(n))?;
    progress.end();
    let snapshots = check_snapshots(&data, config, log.start_offset, log.next_offset)?;
    let index = if log.segments == 0 {
        IndexCheck {
            skipped: Some("the log holds no segment yet".into()),
            ..IndexCheck::default()
        }
    } else if log.problems.is_empty() {
        check_index(&data, config, progress)?
    } else {
        IndexCheck {
            skipped: Some("the log has problems: run `sagalog recover`, then verify again".into()),
            ..IndexCheck::default()
        }
    };
    Ok(VerifyReport {
        data_dir: dir.to_path_buf(),
        log,
        snapshots,
        index,
    })
}

fn check_snapshots(
    data: &DataDir,
    config: &EngineConfig,
    start: u64,
    head: u64,
) -> Result<Vec<SnapshotCheck>> {
    let store = data.open_snapshots_inspect(config.snapshots.clone())?;
    let mut out = Vec::new();
    for info in store.list()? {
        let problem = if info.offset < start || info.offset > head {
            Some(format!(
                "its offset {} is outside the log ({start}..{head}); serve skips it",
                info.offset
            ))
        } else {
            crate::service::replay::check_snapshot(&store, &info)
                .err()
                .map(|e| e.to_string())
        };
        out.push(SnapshotCheck {
            offset: info.offset,
            path: info.path,
            bytes: info.bytes,
            problem,
        });
    }
    Ok(out)
}

/// Each finished saga's index entry against its first and last records, and each dead
/// letter's entry against the log.
fn check_index(
    data: &DataDir,
    config: &EngineConfig,
    progress: &dyn Progress,
) -> Result<IndexCheck> {
    let (log, _) = data.open_log_inspect(config.log.clone())?;
    let scratch =
        tempfile::tempdir().map_err(io_err("create a directory for", &std::env::temp_dir()))?;
    progress.begin("copying the index to read it", 0);
    let index = data.open_index_copy(scratch.path())?;
    progress.end();
    let keys = Keys::default();
    let (start, head) = (log.start_offset(), log.next_offset());
    let mut check = IndexCheck {
        watermark: index.watermark()?,
        ..IndexCheck::default()
    };
    let mut more = 0usize;
    let mut problem = |check: &mut IndexCheck, text: String| {
        if check.problems.len() < MAX_LISTED {
            check.problems.push(text);
        } else {
            more += 1;
        }
    };
    let watermark = check.watermark;
    if watermark > head {
        problem(
            &mut check,
            format!(
                "its watermark {watermark} is past the log's head {head} (the log lost records it \
             had seen): serve rebuilds it on start, or run `sagalog reindex`"
            ),
        );
    }
    progress.begin("checking the index", 0);
    for entry in index.range(&keys.saga, ..) {
        let (key, value) = entry?;
        check.sagas += 1;
        progress.advance(1);
        let id = String::from_utf8_lossy(&key).into_owned();
        let Some(meta) = SagaMeta::decode(&value) else {
            problem(&mut check, format!("saga {id}: unreadable entry"));
            continue;
        };
        if meta.first_offset < start {
            continue; // Retention removed it; the next pass prunes the entry.
        }
        if meta.last_offset >= head {
            problem(
                &mut check,
                format!(
                    "saga {id}: its last record at offset {} is past the log's head {head}",
                    meta.last_offset
                ),
            );
            continue;
        }
        match saga_record(&log, meta.first_offset) {
            Ok(r) if *r.saga_id == *id && matches!(r.kind, Kind::SagaStarted { .. }) => {}
            Ok(r) => problem(
                &mut check,
                format!(
                    "saga {id}: offset {} holds a {} record of saga {}, not its start",
                    meta.first_offset,
                    r.kind.name(),
                    r.saga_id
                ),
            ),
            Err(e) => problem(&mut check, format!("saga {id}: its first record: {e}")),
        }
        match log
            .read(meta.last_offset)
            .map_err(EngineError::from)
            .and_then(|payload| {
                Ok(peek(&payload)
                    .map_err(|source| EngineError::Corrupt {
                        offset: meta.last_offset,
                        source,
                    })?
                    .map(|p| (p.saga_id.to_string(), p.finished)))
            }) {
            Ok(Some((saga, Some(status)))) if saga == id && status == meta.status => {}
            Ok(found) => problem(
                &mut check,
                format!(
                    "saga {id}: offset {} does not end it as {} ({found:?})",
                    meta.last_offset,
                    meta.status.as_str()
                ),
            ),
            Err(e) => problem(&mut check, format!("saga {id}: its last record: {e}")),
        }
    }
    for entry in index.range(&keys.dead_letters, ..) {
        let (key, _) = entry?;
        check.dead_letters += 1;
        let Ok(offset) = <[u8; 8]>::try_from(key.as_slice()).map(u64::from_be_bytes) else {
            problem(&mut check, "a dead-letter key is not an offset".into());
            continue;
        };
        if offset < start {
            continue;
        }
        match crate::dead_letters::read(&log, offset) {
            Ok(_) => {}
            Err(e) => problem(&mut check, format!("dead letter at offset {offset}: {e}")),
        }
    }
    progress.end();
    if more > 0 {
        check.problems.push(format!("and {more} more"));
    }
    Ok(check)
}

fn saga_record(log: &sagalog_storage::Log, offset: u64) -> Result<Record> {
    let payload = log.read(offset)?;
    match decode_at(&LogRecord { offset, payload })? {
        Entry::Saga { record, .. } => Ok(record),
        other => Err(Inconsistency::NotASagaRecord {
            offset,
            found: other.kind_name().to_string(),
        }
        .into()),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RecoverReport {
    /// What was cut from the log, if anything.
    pub cut: Option<LogCut>,
    /// Where the cut data (and snapshots past the new head) went.
    pub aside: Option<PathBuf>,
    pub snapshots_moved: Vec<PathBuf>,
    /// Records the rebuilt indexes read.
    pub reindexed_records: u64,
    pub verify: VerifyReport,
}

/// Cuts a corrupt range or torn tail (moved under `DIR/recovered/`, never deleted),
/// moves aside snapshots that are unusable or past the new head, rebuilds the indexes,
/// and verifies.
pub fn recover(
    dir: &Path,
    config: &EngineConfig,
    progress: &dyn Progress,
) -> Result<RecoverReport> {
    require_data_dir(dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = dir.join("recovered").join(format!("at-{stamp}"));
    let mut snapshots_moved = Vec::new();
    let cut = {
        let data = DataDir::open(dir)?;
        progress.begin("cutting the damage", 0);
        let cut = cut_log(&data.log_dir(), &config.log, &aside, true)?;
        progress.end();
        // Snapshots past the new head, or unusable, go aside too (serve would skip them).
        let log = check_log(&data.log_dir(), &config.log, &|_| {})?;
        let target = aside.join(SNAPSHOT_DIR);
        for snapshot in check_snapshots(&data, config, log.start_offset, log.next_offset)? {
            if snapshot.problem.is_none() {
                continue;
            }
            std::fs::create_dir_all(&target).map_err(io_err("create directory", &target))?;
            let to = target.join(snapshot.path.file_name().expect("a snapshot file name"));
            std::fs::rename(&snapshot.path, &to)
                .map_err(io_err("move snapshot aside", &snapshot.path))?;
            snapshots_moved.push(to);
        }
        cut
    };
    progress.begin("rebuilding the indexes", 0);
    let reindexed_records = crate::service::replay::reindex(dir, config)?;
    progress.end();
    let verify = verify(dir, config, progress)?;
    Ok(RecoverReport {
        aside: (cut.is_some() || !snapshots_moved.is_empty()).then_some(aside),
        cut,
        snapshots_moved,
        reindexed_records,
        verify,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplaySummary {
    /// The snapshot replay began from (0: the whole log).
    pub snapshot_offset: u64,
    /// Records folded in after it.
    pub replayed: u64,
    /// Replay stopped before this offset.
    pub to_offset: u64,
    /// `saga_status_gauge`: active sagas per active status, every saga that ended in
    /// COMPLETED or COMPENSATED… as the server exports it.
    pub status_counts: BTreeMap<&'static str, u64>,
    pub active: usize,
}

/// Rebuilds the projections from the newest snapshot (or none) plus the log, up to
/// `to_offset`, and returns the status counts.
pub fn replay(
    dir: &Path,
    config: &EngineConfig,
    use_snapshots: bool,
    to_offset: Option<u64>,
) -> Result<ReplaySummary> {
    require_data_dir(dir)?;
    let data = DataDir::open_inspect(dir)?;
    let (log, _) = data.open_log_inspect(config.log.clone())?;
    let snapshots = data.open_snapshots_inspect(config.snapshots.clone())?;
    let head = to_offset.map_or(log.next_offset(), |to| to.min(log.next_offset()));
    let restored = crate::service::replay::restore_to(
        &log,
        &snapshots,
        config.shards,
        use_snapshots,
        Some(head),
        u64::MAX,
    )?;
    let counts = &restored.projections.counters.status_counts;
    Ok(ReplaySummary {
        snapshot_offset: restored.snapshot_offset,
        replayed: restored.replayed,
        to_offset: head,
        status_counts: Status::ALL
            .iter()
            .map(|s| (s.as_str(), counts[s.index()]))
            .collect(),
        active: restored.active,
    })
}

/// Records from `from` on (of saga `saga` only, when given), at most `limit`, each as
/// its offset and entry, read with the data directory held.
pub fn inspect(
    dir: &Path,
    config: &EngineConfig,
    saga: Option<&str>,
    from: u64,
    limit: usize,
) -> Result<Vec<(u64, Entry)>> {
    require_data_dir(dir)?;
    let data = DataDir::open_inspect(dir)?;
    let (log, _) = data.open_log_inspect(config.log.clone())?;
    let mut out = Vec::new();
    for record in log.iter_from(from.max(log.start_offset())) {
        if out.len() >= limit {
            break;
        }
        let record = record?;
        if let Some(want) = saga {
            let peeked = peek(&record.payload).map_err(|source| EngineError::Corrupt {
                offset: record.offset,
                source,
            })?;
            let matches = match peeked {
                Some(p) => p.saga_id == want,
                None => match decode_at(&record)? {
                    Entry::DeadLettered { saga_id, .. } => saga_id == want,
                    _ => false,
                },
            };
            if !matches {
                continue;
            }
        }
        out.push((record.offset, decode_at(&record)?));
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The backup holds the log below this offset.
    pub offset: u64,
    pub start_offset: u64,
    pub segments: usize,
    pub bytes: u64,
    pub snapshot_offset: Option<u64>,
}

const MANIFEST: &str = "MANIFEST.json";

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.to_path_buf();
    move |e| EngineError::Storage(sagalog_storage::StorageError::io(op, path)(e))
}

/// `dir` must not exist or be empty.
fn fresh(dir: &Path, what: &'static str) -> Result<()> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(io_err("list", dir))?
            .next()
            .is_some()
    {
        return Err(EngineError::InvalidRequest {
            field: what,
            message: format!(
                "{} is not empty; give a new or empty directory",
                dir.display()
            ),
        });
    }
    Ok(())
}

fn copy_durably(bytes: &[u8], to: &Path) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(to).map_err(io_err("create", to))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", to))
}

/// A consistent copy of `dir` into `out`, safe while a server writes to `dir`: the
/// newest snapshot, then every segment — sealed ones whole, the newest up to its last
/// whole record. The copy holds the log below the offset it reports.
pub fn backup(
    dir: &Path,
    out: &Path,
    config: &EngineConfig,
    progress: &dyn Progress,
) -> Result<Manifest> {
    require_data_dir(dir)?;
    fresh(out, "out")?;
    let (log_out, snap_out) = (out.join(LOG_DIR), out.join(SNAPSHOT_DIR));
    for d in [&log_out, &snap_out] {
        std::fs::create_dir_all(d).map_err(io_err("create directory", d))?;
    }
    // The snapshot first: the log copied after it reaches at least its offset.
    let snapshot = sagalog_storage::snapshot::list_in(&dir.join(SNAPSHOT_DIR))?
        .into_iter()
        .next();
    let mut snapshot_offset = None;
    if let Some(info) = &snapshot {
        match std::fs::read(&info.path) {
            Ok(bytes) => {
                copy_durably(
                    &bytes,
                    &snap_out.join(info.path.file_name().expect("a name")),
                )?;
                snapshot_offset = Some(info.offset);
            }
            // Replaced by a newer one meanwhile: the backup replays the log instead.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("read", &info.path)(e)),
        }
    }
    let log_dir = dir.join(LOG_DIR);
    let bases = segment_bases(&log_dir)?;
    progress.begin("copying segments", bases.len() as u64);
    let mut manifest = Manifest {
        format: 1,
        offset: 0,
        start_offset: 0,
        segments: 0,
        bytes: 0,
        snapshot_offset,
    };
    let mut expected: Option<u64> = None;
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(&log_dir, base);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // Retention deleted an old one meanwhile: the copy starts after it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && expected.is_none() => continue,
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        if expected.is_some_and(|e| e != base) {
            return Err(Inconsistency::LogChangedUnderBackup { segment: path }.into());
        }
        let is_last = i + 1 == bases.len();
        let (records, end) = whole_frames(&bytes, config.log.max_record_bytes);
        // Sealed segments are copied whole (trailing zeros of a pre-written file too).
        let keep = if is_last { &bytes[..end] } else { &bytes[..] };
        copy_durably(keep, &log_out.join(path.file_name().expect("a name")))?;
        if expected.is_none() {
            manifest.start_offset = base;
        }
        manifest.segments += 1;
        manifest.bytes += keep.len() as u64;
        manifest.offset = base + records;
        expected = Some(base + records);
        progress.advance(1);
    }
    progress.end();
    if snapshot_offset.is_some_and(|s| s < manifest.start_offset || s > manifest.offset) {
        return Err(Inconsistency::SnapshotOutsideBackup.into());
    }
    fsync_dir(&log_out)?;
    fsync_dir(&snap_out)?;
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    copy_durably(&json, &out.join(MANIFEST))?;
    fsync_dir(out)?;
    Ok(manifest)
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub manifest: Manifest,
    pub reindexed_records: u64,
    pub verify: VerifyReport,
}

/// Copies a backup into the new or empty data directory `dir`, rebuilds its indexes
/// and verifies it.
pub fn restore(
    from: &Path,
    dir: &Path,
    config: &EngineConfig,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let manifest_path = from.join(MANIFEST);
    let text = std::fs::read(&manifest_path).map_err(|e| EngineError::InvalidRequest {
        field: "from",
        message: format!("{}: {e}; is it a sagalog backup?", manifest_path.display()),
    })?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| EngineError::InvalidRequest {
            field: "from",
            message: format!("{}: {e}", manifest_path.display()),
        })?;
    fresh(dir, "data_dir")?;
    std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let data = DataDir::open(dir)?;
    progress.begin("copying the backup", 0);
    for sub in [LOG_DIR, SNAPSHOT_DIR] {
        let (src, dst) = (from.join(sub), dir.join(sub));
        for entry in std::fs::read_dir(&src).map_err(io_err("list", &src))? {
            let entry = entry.map_err(io_err("list", &src))?;
            let bytes = std::fs::read(entry.path()).map_err(io_err("read", &entry.path()))?;
            copy_durably(&bytes, &dst.join(entry.file_name()))?;
            progress.advance(1);
        }
        fsync_dir(&dst)?;
    }
    progress.end();
    let check = check_log(&data.log_dir(), &config.log, &|_| {})?;
    if check.next_offset != manifest.offset || !check.problems.is_empty() {
        return Err(Inconsistency::RestoreMismatch {
            ends_at: check.next_offset,
            problems: check.problems.len(),
            expected: manifest.offset,
        }
        .into());
    }
    drop(data);
    let reindexed_records = crate::service::replay::reindex(dir, config)?;
    let verify = verify(dir, config, progress)?;
    Ok(RestoreReport {
        manifest,
        reindexed_records,
        verify,
    })
}
