//! `sagalog backup` and `restore`: a consistent copy of a data directory, safe beside a
//! running server, and putting one back.

use std::path::Path;

use sagalog_storage::check::{check_log, segment_bases};
use sagalog_storage::format::whole_frames;
use sagalog_storage::{fsync_dir, segment_path, DataDir, LOG_DIR, SNAPSHOT_DIR};
use serde::Serialize;

use super::verify::{verify, VerifyReport};
use super::{io_err, require_data_dir, Progress};
use crate::config::EngineConfig;
use crate::error::{EngineError, Inconsistency, Result};

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
    let snapshot_offset = copy_newest_snapshot(&dir.join(SNAPSHOT_DIR), &snap_out)?;
    let mut manifest = Manifest {
        format: 1,
        offset: 0,
        start_offset: 0,
        segments: 0,
        bytes: 0,
        snapshot_offset,
    };
    copy_segments(
        &dir.join(LOG_DIR),
        &log_out,
        config,
        progress,
        &mut manifest,
    )?;
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

/// Copies the newest snapshot in `from` into `to`; its offset, or `None` when there is
/// none (or it was replaced by a newer one meanwhile: the backup replays the log).
fn copy_newest_snapshot(from: &Path, to: &Path) -> Result<Option<u64>> {
    let Some(info) = sagalog_storage::snapshot::list_in(from)?.into_iter().next() else {
        return Ok(None);
    };
    match std::fs::read(&info.path) {
        Ok(bytes) => {
            copy_durably(&bytes, &to.join(info.path.file_name().expect("a name")))?;
            Ok(Some(info.offset))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &info.path)(e)),
    }
}

/// Copies every segment of `log_dir` into `log_out` — sealed ones whole, the newest up
/// to its last whole record — and counts them into `manifest`.
fn copy_segments(
    log_dir: &Path,
    log_out: &Path,
    config: &EngineConfig,
    progress: &dyn Progress,
    manifest: &mut Manifest,
) -> Result<()> {
    let bases = segment_bases(log_dir)?;
    progress.begin("copying segments", bases.len() as u64);
    let mut expected: Option<u64> = None;
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(log_dir, base);
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
    Ok(())
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
