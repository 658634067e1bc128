//! Offline checks and repair of the log (`sagalog verify` and `sagalog recover`).
//!
//! [`check_log`] reads every segment and every frame without changing a byte, and names
//! each problem: a damaged header, a record whose checksum fails with intact records
//! after it (corruption in the middle), a torn tail (which `serve` cuts by itself on
//! start), the leftover of a failed roll (a file holding no record, which `serve`
//! removes), a gap between segments.
//!
//! [`cut_log`] repairs what opening refuses: it cuts the log at the first bad record.
//! Nothing is deleted: the bytes from the bad record to the end of its segment, and
//! every later segment, are moved into a directory of their own with a `NOTE.txt`
//! saying what was cut and why. (Offsets are positions in the log, so the intact
//! records after a bad one cannot stay: they would take other offsets.) It never cuts
//! at a gap between segments or at a segment of an unknown format: the segments after
//! those hold acknowledged records, so it refuses with the facts instead.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError};
use crate::files::{segment_path, sync_dir};
use crate::format::{HeaderProblem, SEGMENT_HEADER_BYTES};
use crate::scan::{is_leftover, SegmentScan};
use crate::segments::open_and_scan;
pub use crate::segments::segment_bases;
use crate::LogConfig;

/// What is wrong at one place of the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub segment: PathBuf,
    /// The offset of the first record the problem affects.
    pub offset: u64,
    /// Byte position in the segment.
    pub position: u64,
    /// `corrupt`, `torn_tail`, `bad_header`, `gap`, `unsupported_format` or
    /// `leftover_segment` (a failed roll's file that holds no record).
    pub kind: &'static str,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} in segment {} at offset {} (byte {}): {}",
            self.kind,
            self.segment.display(),
            self.offset,
            self.position,
            self.reason
        )
    }
}

/// What [`check_log`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogCheck {
    pub segments: usize,
    pub records: u64,
    pub start_offset: u64,
    /// One past the last whole record before the first problem (the head, when clean).
    pub next_offset: u64,
    pub bytes: u64,
    pub problems: Vec<Problem>,
}

/// A segment file as [`check_log`] read it.
struct Seen {
    base: u64,
    path: PathBuf,
    scan: SegmentScan,
}

/// Reads the whole log in `dir` without changing it; `progress` is told the bytes of
/// each segment as it is done. It judges each file by the rules opening the log uses.
pub fn check_log(dir: &Path, config: &LogConfig, progress: &dyn Fn(u64)) -> Result<LogCheck> {
    let bases = segment_bases(dir)?;
    let mut check = LogCheck {
        segments: bases.len(),
        start_offset: bases.first().copied().unwrap_or(0),
        next_offset: bases.first().copied().unwrap_or(0),
        ..LogCheck::default()
    };
    let kept = scan_all(dir, &bases, config, progress, &mut check)?;
    judge(&kept, &mut check);
    Ok(check)
}

/// Scans every segment, setting aside (as a problem each) the leftovers of failed rolls.
fn scan_all(
    dir: &Path,
    bases: &[u64],
    config: &LogConfig,
    progress: &dyn Fn(u64),
    check: &mut LogCheck,
) -> Result<Vec<Seen>> {
    let mut kept: Vec<Seen> = Vec::with_capacity(bases.len());
    for &base in bases {
        let (path, _, scan) = open_and_scan(dir, base, config, false)?;
        check.bytes += scan.file_len;
        progress(scan.file_len);
        if let Some(prev) = kept.last() {
            let expected = prev.base + prev.scan.records;
            if is_leftover(&scan, base, prev.base, expected) {
                check.problems.push(Problem {
                    segment: path,
                    offset: base,
                    position: 0,
                    kind: "leftover_segment",
                    reason: format!(
                        "holds no record and starts inside the log (which is at offset \
                         {expected} there): a roll that failed left it; serve removes it"
                    ),
                });
                continue;
            }
        }
        kept.push(Seen { base, path, scan });
    }
    Ok(kept)
}

/// Judges the segments of the log in order: gaps, unknown formats, damage (a torn tail
/// when it ends the last one), and how far the log is whole.
fn judge(kept: &[Seen], check: &mut LogCheck) {
    let last = kept.len().saturating_sub(1);
    let mut expected = None;
    let mut intact = true;
    for (i, seen) in kept.iter().enumerate() {
        let Seen { base, path, scan } = seen;
        let problem = |offset, position, kind, reason: String| Problem {
            segment: path.clone(),
            offset,
            position,
            kind,
            reason,
        };
        if let Some(expected) = expected.filter(|e| e != base) {
            check.problems.push(problem(
                expected,
                0,
                "gap",
                format!(
                    "the log before this segment ends at offset {expected}, this one starts at \
                     {base} and holds {} records: records {expected}..{base} are missing",
                    scan.records
                ),
            ));
            intact = false;
        }
        if let Err(HeaderProblem::UnsupportedVersion(version)) = scan.header {
            let reason = format!("format version {version} is not one this build reads");
            check
                .problems
                .push(problem(*base, 0, "unsupported_format", reason));
            intact = false;
            expected = None;
            continue;
        }
        // After damage the segment's true length is unknown: no gap is reported after it.
        let mut damaged = false;
        if let Some(damage) = &scan.damage {
            let torn = i == last && damage.valid_frame_at.is_none();
            let kind = match (torn, scan.header.is_ok()) {
                (true, _) => "torn_tail",
                (false, false) => "bad_header",
                (false, true) => "corrupt",
            };
            let offset = base + scan.records;
            check.problems.push(problem(
                offset,
                damage.position,
                kind,
                damage.reason.clone(),
            ));
            intact &= torn;
            damaged = true;
        }
        check.records += scan.records;
        if intact {
            check.next_offset = base + scan.records;
        }
        expected = (!damaged).then_some(base + scan.records);
    }
}

/// What [`cut_log`] moved aside.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogCut {
    /// The log now ends here (the offset of the first bad record).
    pub next_offset: u64,
    /// Where the cut bytes went.
    pub aside: PathBuf,
    pub moved_bytes: u64,
    pub moved_segments: usize,
    pub problem: Problem,
}

/// Cuts the log in `dir` at its first problem — a torn tail too when `torn_tails` (else
/// opening cuts that by zeroing it) — moving everything from there on into `aside`
/// (created). `None` when there is nothing to cut. The log must not be open.
pub fn cut_log(
    dir: &Path,
    config: &LogConfig,
    aside: &Path,
    torn_tails: bool,
) -> Result<Option<LogCut>> {
    let check = check_log(dir, config, &|_| {})?;
    let Some(problem) = check
        .problems
        .iter()
        .find(|p| (torn_tails || p.kind != "torn_tail") && p.kind != "leftover_segment")
        .or_else(|| check.problems.iter().find(|p| p.kind == "leftover_segment"))
        .cloned()
    else {
        return Ok(None);
    };
    if matches!(problem.kind, "gap" | "unsupported_format") {
        // The segments from there on hold acknowledged records: cutting would drop them.
        return Err(StorageError::NotRepairable {
            problem: problem.to_string(),
        });
    }
    std::fs::create_dir_all(aside).map_err(StorageError::io("create directory", aside))?;
    let leftovers: Vec<&Path> = check
        .problems
        .iter()
        .filter(|p| p.kind == "leftover_segment")
        .map(|p| p.segment.as_path())
        .collect();
    let mut moved_bytes = 0u64;
    let mut moved_segments = 0usize;
    let mut moved = Vec::new();
    for base in segment_bases(dir)? {
        let path = segment_path(dir, base);
        // Leftovers (they hold nothing) go wherever they are; the rest from the problem on.
        let leftover = leftovers.contains(&path.as_path());
        let cut = problem.kind != "leftover_segment" && path >= problem.segment;
        if !leftover && !cut {
            continue;
        }
        let keep_header =
            path == problem.segment && !leftover && problem.position >= SEGMENT_HEADER_BYTES as u64;
        let (bytes, line) = if keep_header {
            // The bad record's own segment keeps what lies before it.
            move_tail(&path, problem.position, aside)?
        } else {
            moved_segments += 1;
            move_whole(&path, aside)?
        };
        moved_bytes += bytes;
        moved.push(line);
    }
    let next_offset = if problem.kind == "leftover_segment" {
        check.next_offset
    } else {
        problem.offset
    };
    let note = cut_note(&problem, next_offset, &moved.join("\n  "));
    write_durably(&aside.join("NOTE.txt"), note.as_bytes())?;
    sync_dir(dir, &None)?;
    if let Some(parent) = aside.parent() {
        sync_dir(parent, &None)?;
    }
    Ok(Some(LogCut {
        next_offset,
        aside: aside.to_path_buf(),
        moved_bytes,
        moved_segments,
        problem,
    }))
}

/// Moves the bytes of segment `path` from `position` on into a file of their own in
/// `aside`, and cuts the segment there: the bytes moved, and a line saying where.
fn move_tail(path: &Path, position: u64, aside: &Path) -> Result<(u64, String)> {
    let name = path
        .file_name()
        .expect("a segment file name")
        .to_string_lossy();
    let io = |op| StorageError::io(op, path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("open segment"))?;
    let len = file.metadata().map_err(io("stat segment"))?.len();
    let mut tail = vec![0u8; (len - position) as usize];
    file.read_exact_at(&mut tail, position)
        .map_err(io("read segment"))?;
    let target = aside.join(format!("{name}.from-byte-{position}"));
    write_durably(&target, &tail)?;
    file.set_len(position)
        .and_then(|()| file.sync_all())
        .map_err(io("cut segment"))?;
    let line = format!(
        "{} (bytes {position}.. of {})",
        target.display(),
        path.display()
    );
    Ok((tail.len() as u64, line))
}

/// Moves segment `path` into `aside` whole: its bytes, and a line saying where.
fn move_whole(path: &Path, aside: &Path) -> Result<(u64, String)> {
    let target = aside.join(path.file_name().expect("a segment file name"));
    let len = std::fs::metadata(path)
        .map_err(StorageError::io("stat segment", path))?
        .len();
    std::fs::rename(path, &target).map_err(StorageError::io("move segment aside", path))?;
    let line = format!(
        "{} (the whole segment {})",
        target.display(),
        path.display()
    );
    Ok((len, line))
}

/// The `NOTE.txt` left beside what a cut moved aside.
fn cut_note(problem: &Problem, next_offset: u64, moved: &str) -> String {
    if problem.kind == "leftover_segment" {
        format!(
            "sagalog recover moved aside files that held no record: segment files left by \
             rolls that failed. The log was not cut; it ends at offset {next_offset}.\n\
             Why: {problem}\n\
             Moved here:\n  {moved}\n"
        )
    } else {
        format!(
            "sagalog recover cut the log at offset {next_offset}.\n\
             Why: {problem}\n\
             The log now ends just before offset {next_offset}; what followed was moved here:\n  {moved}\n\
             Records after the damaged one are intact in these files (each frame is \
             length | crc32 | payload, see docs/storage.md) but could not stay: offsets are \
             positions in the log.\n"
        )
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(StorageError::io("create", path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(StorageError::io("write", path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir, &None)?;
    }
    Ok(())
}
