//! Loading the segments at open: listing the log directory, scanning each segment
//! (`scan`), and deciding what the files hold —
//! - a torn tail of the last segment (damage with no valid frame after it) is cut;
//! - a segment that holds no record and is named inside the log is the leftover of a
//!   roll that failed (a full disk while it was being created): it is removed, since it
//!   holds nothing;
//! - anything else out of place — damage with valid frames after it, segments that hold
//!   records and do not follow each other, an empty segment past a missing one — is
//!   refused with the facts.
//!
//! The healer reuses the zeroing (`zero_from`) and the listing; `check` (verify and
//! recover) judges the same files through the same scan.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::alloc::create_first_segment;
use crate::error::{Result, StorageError};
use crate::faults::{self, FaultPoint, SharedFaults};
use crate::files::{parse_segment_name, segment_path, sync_dir, write_zeros, PREALLOC_SUFFIX};
use crate::format::{dirty_end, encode_segment_header, HeaderProblem, SEGMENT_FORMAT_VERSION};
use crate::scan::{is_leftover, scan_segment, SegmentScan};
use crate::LogConfig;

/// A segment as the log holds it: its file, and what is published of it.
pub(crate) struct SegmentMeta {
    pub base: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub records: u64,
    /// Byte position just past the last published frame.
    pub end_pos: u64,
    /// `index[k]` is the byte position of record `base + k * index_interval_records`.
    pub index: Vec<u64>,
}

impl SegmentMeta {
    pub fn next_offset(&self) -> u64 {
        self.base + self.records
    }
}

/// How the log was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// For appends: damage is cut, leftovers removed, a writer runs.
    Write,
    /// For inspection: nothing on disk changes, no writer, no healing.
    Inspect,
}

/// A torn tail that was cut back on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    pub segment: PathBuf,
    /// The first offset that was not kept (the log's next offset after the cut).
    pub offset: u64,
    /// Byte position in the segment where the kept data ends.
    pub position: u64,
    /// How many bytes of damaged data were zeroed.
    pub bytes: u64,
    pub reason: String,
}

/// Segment bases in `dir`, sorted, changing nothing (other files are passed over).
pub fn segment_bases(dir: &Path) -> Result<Vec<u64>> {
    Ok(read_log_dir(dir)?.0)
}

/// Segment bases in `dir`, sorted; with `clean`, leftover pre-written files go.
/// Unknown files stay, named in a warning.
pub(crate) fn list_segments(dir: &Path, clean: bool) -> Result<Vec<u64>> {
    let (bases, others) = read_log_dir(dir)?;
    for path in others {
        let prewritten = path.to_string_lossy().ends_with(PREALLOC_SUFFIX);
        if !prewritten {
            tracing::warn!(file = %path.display(), "ignoring unknown file in log directory");
        } else if clean {
            std::fs::remove_file(&path).map_err(StorageError::io("remove", &path))?;
        }
    }
    Ok(bases)
}

/// The log directory's segment bases, sorted, and its other entries.
fn read_log_dir(dir: &Path) -> Result<(Vec<u64>, Vec<PathBuf>)> {
    let (mut bases, mut others) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).map_err(StorageError::io("list", dir))? {
        let entry = entry.map_err(StorageError::io("list", dir))?;
        match parse_segment_name(&entry.file_name().to_string_lossy()) {
            Some(base) => bases.push(base),
            None => others.push(entry.path()),
        }
    }
    bases.sort_unstable();
    Ok((bases, others))
}

/// Opens the segment at `base` (writable too, with `write`) and scans it: what open,
/// the healer and `check` each judge a segment file by.
pub(crate) fn open_and_scan(
    dir: &Path,
    base: u64,
    config: &LogConfig,
    write: bool,
) -> Result<(PathBuf, File, SegmentScan)> {
    let path = segment_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .open(&path)
        .map_err(StorageError::io("open segment", &path))?;
    let scan =
        scan_segment(&file, base, config).map_err(StorageError::io("scan segment", &path))?;
    Ok((path, file, scan))
}

/// What [`open_segments`] found and kept.
#[derive(Default)]
pub(crate) struct Opened {
    pub segments: Vec<SegmentMeta>,
    pub cuts: Vec<TailCut>,
    pub leftovers: Vec<PathBuf>,
}

/// A segment file read at open.
struct Found {
    base: u64,
    path: PathBuf,
    file: File,
    scan: SegmentScan,
}

/// Scans every segment and keeps the log they make (see the module's rules); in
/// `Mode::Write` it cuts a torn tail and removes leftovers of failed rolls, and creates
/// the first segment of an empty directory.
pub(crate) fn open_segments(
    dir: &Path,
    config: &LogConfig,
    faults: &SharedFaults,
    mode: Mode,
) -> Result<Opened> {
    let write = mode == Mode::Write;
    let mut bases = list_segments(dir, write)?;
    if bases.is_empty() {
        if !write {
            return Err(StorageError::NoSegments {
                dir: dir.to_path_buf(),
            });
        }
        create_first_segment(dir, config, faults)?;
        bases.push(0);
    }
    let mut kept: Vec<Found> = Vec::with_capacity(bases.len());
    let mut opened = Opened::default();
    for base in bases {
        let (path, file, scan) = open_and_scan(dir, base, config, write)?;
        if let Err(HeaderProblem::UnsupportedVersion(version)) = scan.header {
            return Err(StorageError::UnsupportedFormat {
                segment: path,
                version,
                supported: SEGMENT_FORMAT_VERSION,
            });
        }
        if let Some(prev) = kept.last() {
            let expected = prev.base + prev.scan.records;
            if is_leftover(&scan, base, prev.base, expected) {
                tracing::warn!(
                    segment = %path.display(), log_ends_at = expected,
                    "a segment file holding no record, left by a roll that failed: {}",
                    if write { "removing it" } else { "a writable open removes it" }
                );
                opened.leftovers.push(path);
                continue;
            }
            follows(prev, base, &path, &scan)?;
        }
        kept.push(Found {
            base,
            path,
            file,
            scan,
        });
    }
    if write {
        remove_leftovers(dir, &opened.leftovers, faults)?;
    }
    let last = kept.len() - 1;
    for (i, found) in kept.into_iter().enumerate() {
        opened.segments.push(accept_segment(
            found,
            i == last,
            mode,
            faults,
            &mut opened.cuts,
        )?);
    }
    Ok(opened)
}

/// Refuses segment `base` (at `path`, scanned as `scan`) unless it follows `prev` in
/// the log: `prev` must end whole (damage with a segment after it is mid-log
/// corruption), and this one must start where it ends.
fn follows(prev: &Found, base: u64, path: &Path, scan: &SegmentScan) -> Result<()> {
    let expected = prev.base + prev.scan.records;
    if let Some(damage) = &prev.scan.damage {
        return Err(corrupt(
            &prev.path,
            expected,
            damage.position,
            damage.reason.clone(),
        ));
    }
    if base != expected {
        return Err(StorageError::SegmentGap {
            segment: path.to_path_buf(),
            expected,
            found: base,
            records: scan.records,
        });
    }
    Ok(())
}

/// Removes the leftovers of failed rolls, and makes that durable.
fn remove_leftovers(dir: &Path, leftovers: &[PathBuf], faults: &SharedFaults) -> Result<()> {
    if leftovers.is_empty() {
        return Ok(());
    }
    for path in leftovers {
        std::fs::remove_file(path).map_err(StorageError::io("remove leftover segment", path))?;
    }
    sync_dir(dir, faults)
}

/// A scanned segment as the log holds it: damage in a sealed segment, or with a valid
/// frame after it, is corruption; at the end of the last segment it is a torn tail, cut
/// (in `Mode::Write`) back to the last whole record.
fn accept_segment(
    found: Found,
    is_last: bool,
    mode: Mode,
    faults: &SharedFaults,
    cuts: &mut Vec<TailCut>,
) -> Result<SegmentMeta> {
    let Found {
        base,
        path,
        file,
        scan,
    } = found;
    if let Some(damage) = &scan.damage {
        let offset = base + scan.records;
        if !is_last || damage.valid_frame_at.is_some() {
            return Err(corrupt(
                &path,
                offset,
                damage.position,
                damage.reason.clone(),
            ));
        }
        if mode == Mode::Write {
            cut_tail(&file, &path, base, &scan, faults)?;
        }
        record_cut(
            cuts,
            &path,
            offset,
            damage.position,
            damage.dirty_end.saturating_sub(damage.position),
            damage.reason.clone(),
            mode,
        );
    }
    Ok(SegmentMeta {
        base,
        path,
        file: Arc::new(file),
        records: scan.records,
        end_pos: scan.end_pos,
        index: scan.index,
    })
}

/// Zeroes what lies past the last whole record of the active segment (giving it a
/// header again when it had none), and makes that durable.
fn cut_tail(
    file: &File,
    path: &Path,
    base: u64,
    scan: &SegmentScan,
    faults: &SharedFaults,
) -> Result<()> {
    let header = scan.header.is_err().then_some(base);
    let from = if header.is_none() { scan.end_pos } else { 0 };
    zero_from(file, path, from, scan.file_len, header, faults)
}

/// Zeroes the file's bytes from `from` to the last that is not zero (below `file_len`),
/// writes the header of segment `header` when asked, and makes that durable.
pub(crate) fn zero_from(
    file: &File,
    path: &Path,
    from: u64,
    file_len: u64,
    header: Option<u64>,
    faults: &SharedFaults,
) -> Result<()> {
    let io = |op| StorageError::io(op, path);
    let dirty_end = dirty_end(file, from, file_len).map_err(io("inspect segment"))?;
    faults::check(faults, FaultPoint::BatchWrite, path)
        .and_then(|()| write_zeros(file, from, dirty_end, None))
        .map_err(io("cut torn tail"))?;
    if let Some(base) = header {
        faults::check(faults, FaultPoint::SegmentHeader, path)
            .and_then(|()| file.write_all_at(&encode_segment_header(base), 0))
            .map_err(io("rewrite segment header"))?;
    }
    faults::check(faults, FaultPoint::BatchSync, path)
        .and_then(|()| file.sync_data())
        .map_err(io("cut torn tail"))
}

fn record_cut(
    cuts: &mut Vec<TailCut>,
    path: &Path,
    offset: u64,
    position: u64,
    bytes: u64,
    reason: String,
    mode: Mode,
) {
    match mode {
        Mode::Write => tracing::warn!(
            segment = %path.display(), offset, position, bytes, reason = %reason,
            "cut a torn tail of the log back to the last whole record"
        ),
        Mode::Inspect => tracing::info!(
            segment = %path.display(), offset, position, bytes, reason = %reason,
            "the log has a torn tail; it ends at the last whole record (serve cuts it)"
        ),
    }
    cuts.push(TailCut {
        segment: path.to_path_buf(),
        offset,
        position,
        bytes,
        reason,
    });
}

pub(crate) fn corrupt(segment: &Path, offset: u64, position: u64, reason: String) -> StorageError {
    StorageError::Corrupt {
        segment: segment.to_path_buf(),
        offset,
        position,
        reason,
    }
}
