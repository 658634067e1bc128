//! `sagalog recover`, `replay` and `inspect`: cutting the damage a log holds, and
//! reading a data directory's state and records without a server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sagalog_storage::check::{check_log, cut_log, LogCut};
use sagalog_storage::{DataDir, SNAPSHOT_DIR};
use serde::Serialize;

use super::verify::{check_snapshots, verify, VerifyReport};
use super::{io_err, require_data_dir, Progress};
use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::history::decode_at;
use crate::model::record::{peek, Entry, Status};

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
