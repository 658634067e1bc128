//! `sagalog verify`: every record's checksum, every snapshot, and the indexes against
//! the log, changing nothing.

use std::path::{Path, PathBuf};

use sagalog_storage::check::{check_log, segment_bases, LogCheck};
use sagalog_storage::{segment_path, DataDir, LogRecord};
use serde::Serialize;

use super::{io_err, require_data_dir, Progress};
use crate::config::EngineConfig;
use crate::error::{EngineError, Inconsistency, Result};
use crate::history::decode_at;
use crate::model::record::{peek, Entry, Kind, Record};
use crate::service::indexing::{Keys, SagaMeta};

/// Most problems of one kind listed one by one (the rest are counted).
const MAX_LISTED: usize = 100;

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

pub(crate) fn check_snapshots(
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

/// Problems of one kind: the first [`MAX_LISTED`] one by one, the rest counted.
#[derive(Default)]
struct Listed {
    items: Vec<String>,
    more: usize,
}

impl Listed {
    fn push(&mut self, text: String) {
        if self.items.len() < MAX_LISTED {
            self.items.push(text);
        } else {
            self.more += 1;
        }
    }

    fn into_lines(mut self) -> Vec<String> {
        if self.more > 0 {
            self.items.push(format!("and {} more", self.more));
        }
        self.items
    }
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
    let head = log.next_offset();
    let mut check = IndexCheck {
        watermark: index.watermark()?,
        ..IndexCheck::default()
    };
    let mut problems = Listed::default();
    let watermark = check.watermark;
    if watermark > head {
        problems.push(format!(
            "its watermark {watermark} is past the log's head {head} (the log lost records it \
             had seen): serve rebuilds it on start, or run `sagalog reindex`"
        ));
    }
    progress.begin("checking the index", 0);
    for entry in index.range(&keys.saga, ..) {
        let (key, value) = entry?;
        check.sagas += 1;
        progress.advance(1);
        let id = String::from_utf8_lossy(&key).into_owned();
        for problem in saga_entry_problems(&log, &id, &value) {
            problems.push(format!("saga {id}: {problem}"));
        }
    }
    for entry in index.range(&keys.dead_letters, ..) {
        let (key, _) = entry?;
        check.dead_letters += 1;
        let Ok(offset) = <[u8; 8]>::try_from(key.as_slice()).map(u64::from_be_bytes) else {
            problems.push("a dead-letter key is not an offset".into());
            continue;
        };
        if offset < log.start_offset() {
            continue;
        }
        if let Err(e) = crate::service::dead_letters::read(&log, offset) {
            problems.push(format!("dead letter at offset {offset}: {e}"));
        }
    }
    progress.end();
    check.problems = problems.into_lines();
    Ok(check)
}

/// What is wrong with saga `id`'s index entry `value`, checked against its first and
/// last records (nothing for a saga retention removed: the next pass prunes its entry).
fn saga_entry_problems(log: &sagalog_storage::Log, id: &str, value: &[u8]) -> Vec<String> {
    let Some(meta) = SagaMeta::decode(value) else {
        return vec!["unreadable entry".into()];
    };
    let head = log.next_offset();
    if meta.first_offset < log.start_offset() {
        return Vec::new();
    }
    if meta.last_offset >= head {
        return vec![format!(
            "its last record at offset {} is past the log's head {head}",
            meta.last_offset
        )];
    }
    let mut problems = Vec::new();
    match saga_record(log, meta.first_offset) {
        Ok(r) if *r.saga_id == *id && matches!(r.kind, Kind::SagaStarted { .. }) => {}
        Ok(r) => problems.push(format!(
            "offset {} holds a {} record of saga {}, not its start",
            meta.first_offset,
            r.kind.name(),
            r.saga_id
        )),
        Err(e) => problems.push(format!("its first record: {e}")),
    }
    let last = log
        .read(meta.last_offset)
        .map_err(EngineError::from)
        .and_then(|payload| {
            Ok(peek(&payload)
                .map_err(|source| EngineError::Corrupt {
                    offset: meta.last_offset,
                    source,
                })?
                .map(|p| (p.saga_id.to_string(), p.finished)))
        });
    match last {
        Ok(Some((saga, Some(status)))) if saga == id && status == meta.status => {}
        Ok(found) => problems.push(format!(
            "offset {} does not end it as {} ({found:?})",
            meta.last_offset,
            meta.status.as_str()
        )),
        Err(e) => problems.push(format!("its last record: {e}")),
    }
    problems
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
