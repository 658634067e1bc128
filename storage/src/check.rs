//! Offline checks and repair of the log (`sagalog verify` and `sagalog recover`).
//!
//! [`check_log`] reads every segment and every frame without changing a byte, and names
//! each problem: a damaged header, a record whose checksum fails with intact records
//! after it (corruption in the middle), a torn tail (which `serve` cuts by itself on
//! start), a gap between segments.
//!
//! [`cut_log`] repairs what opening refuses: it cuts the log at the first bad record.
//! Nothing is deleted: the bytes from the bad record to the end of its segment, and
//! every later segment, are moved into a directory of their own with a `NOTE.txt`
//! saying what was cut and why. (Offsets are positions in the log, so the intact
//! records after a bad one cannot stay: they would take other offsets.)

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::datadir::sync_dir;
use crate::error::{Result, StorageError};
use crate::format::{
    inspect_rest, read_segment_header, Frame, FrameReader, HeaderProblem, SEGMENT_HEADER_BYTES,
};
use crate::log::{segment_path, SEGMENT_SUFFIX};
use crate::LogConfig;

/// What is wrong at one place of the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub segment: PathBuf,
    /// The offset of the first record the problem affects.
    pub offset: u64,
    /// Byte position in the segment.
    pub position: u64,
    /// `corrupt`, `torn_tail`, `bad_header`, `gap` or `unsupported_format`.
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

/// Segment bases in `dir`, sorted, changing nothing.
pub fn segment_bases(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(StorageError::io("list", dir))? {
        let name = entry.map_err(StorageError::io("list", dir))?.file_name();
        if let Some(base) = name
            .to_string_lossy()
            .strip_suffix(SEGMENT_SUFFIX)
            .filter(|digits| digits.len() == 20)
            .and_then(|digits| digits.parse::<u64>().ok())
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Reads the whole log in `dir` without changing it; `progress` is told the bytes of
/// each segment as it is done.
pub fn check_log(dir: &Path, config: &LogConfig, progress: &dyn Fn(u64)) -> Result<LogCheck> {
    let bases = segment_bases(dir)?;
    let mut check = LogCheck {
        segments: bases.len(),
        start_offset: bases.first().copied().unwrap_or(0),
        next_offset: bases.first().copied().unwrap_or(0),
        ..LogCheck::default()
    };
    let max = config.max_record_bytes;
    let mut expected = None;
    let mut intact = true;
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        let is_last = i + 1 == bases.len();
        let problem = |offset, position, kind, reason: String| Problem {
            segment: path.clone(),
            offset,
            position,
            kind,
            reason,
        };
        if let Some(expected) = expected.filter(|e| *e != base) {
            check.problems.push(problem(
                expected,
                0,
                "gap",
                format!(
                    "the previous segment ends at offset {expected}, this one starts at {base}"
                ),
            ));
            intact = false;
        }
        let io = |op| StorageError::io(op, &path);
        let file = File::open(&path).map_err(io("open segment"))?;
        let file_len = file.metadata().map_err(io("stat segment"))?.len();
        check.bytes += file_len;
        match read_segment_header(&file, file_len, base).map_err(io("read segment header"))? {
            Ok(()) => {}
            Err(HeaderProblem::UnsupportedVersion(version)) => {
                let reason = format!("format version {version} is not one this build reads");
                check
                    .problems
                    .push(problem(base, 0, "unsupported_format", reason));
                intact = false;
                expected = None;
                continue;
            }
            Err(HeaderProblem::Damaged(reason)) => {
                let rest = inspect_rest(&file, 0, file_len, max).map_err(io("inspect segment"))?;
                let kind = if is_last && rest.valid_frame_at.is_none() {
                    "torn_tail"
                } else {
                    "bad_header"
                };
                check.problems.push(problem(base, 0, kind, reason));
                intact &= kind == "torn_tail";
                expected = None;
                continue;
            }
        }
        let mut reader = FrameReader::new(&file, SEGMENT_HEADER_BYTES as u64, file_len, max);
        let mut records = 0u64;
        let stop = loop {
            let pos = reader.position();
            match reader.next_frame().map_err(io("scan segment"))? {
                Frame::Record(_) => records += 1,
                Frame::End => break None,
                Frame::Zero => break Some((pos, None)),
                Frame::Invalid(reason) => break Some((pos, Some(reason))),
            }
        };
        // After damage the segment's true length is unknown: no gap is reported after it.
        let mut damaged = false;
        if let Some((pos, reason)) = stop {
            let rest = inspect_rest(&file, pos, file_len, max).map_err(io("inspect segment"))?;
            if reason.is_some() || rest.dirty_end != pos {
                let reason =
                    reason.unwrap_or_else(|| "zero frame header followed by non-zero bytes".into());
                let kind = if is_last && rest.valid_frame_at.is_none() {
                    "torn_tail"
                } else {
                    "corrupt"
                };
                check
                    .problems
                    .push(problem(base + records, pos, kind, reason));
                intact &= kind == "torn_tail";
                damaged = true;
            }
        }
        check.records += records;
        if intact {
            check.next_offset = base + records;
        }
        expected = (!damaged).then_some(base + records);
        progress(file_len);
    }
    Ok(check)
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
        .find(|p| torn_tails || p.kind != "torn_tail")
        .cloned()
    else {
        return Ok(None);
    };
    std::fs::create_dir_all(aside).map_err(StorageError::io("create directory", aside))?;
    let bases = segment_bases(dir)?;
    let mut moved_bytes = 0u64;
    let mut moved_segments = 0usize;
    let mut moved = Vec::new();
    for base in bases {
        let path = segment_path(dir, base);
        if path < problem.segment {
            continue;
        }
        let name = path.file_name().expect("a segment file name").to_owned();
        let keep_header =
            path == problem.segment && problem.position >= SEGMENT_HEADER_BYTES as u64;
        if keep_header {
            // The bad record's own segment keeps what lies before it.
            let io = |op| StorageError::io(op, &path);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io("open segment"))?;
            let len = file.metadata().map_err(io("stat segment"))?.len();
            let mut tail = vec![0u8; (len - problem.position) as usize];
            file.read_exact_at(&mut tail, problem.position)
                .map_err(io("read segment"))?;
            let target = aside.join(format!(
                "{}.from-byte-{}",
                name.to_string_lossy(),
                problem.position
            ));
            write_durably(&target, &tail)?;
            file.set_len(problem.position)
                .and_then(|()| file.sync_all())
                .map_err(io("cut segment"))?;
            moved_bytes += tail.len() as u64;
            moved.push(format!(
                "{} (bytes {}.. of {})",
                target.display(),
                problem.position,
                path.display()
            ));
        } else {
            let target = aside.join(&name);
            let len = std::fs::metadata(&path)
                .map_err(StorageError::io("stat segment", &path))?
                .len();
            std::fs::rename(&path, &target)
                .map_err(StorageError::io("move segment aside", &path))?;
            moved_bytes += len;
            moved_segments += 1;
            moved.push(format!(
                "{} (the whole segment {})",
                target.display(),
                path.display()
            ));
        }
    }
    let note = format!(
        "sagalog recover cut the log at offset {offset}.\n\
         Why: {problem}\n\
         The log now ends just before offset {offset}; what followed was moved here:\n  {moved}\n\
         Records after the damaged one are intact in these files (each frame is \
         length | crc32 | payload, see docs/storage.md) but could not stay: offsets are \
         positions in the log.\n",
        offset = problem.offset,
        moved = moved.join("\n  "),
    );
    write_durably(&aside.join("NOTE.txt"), note.as_bytes())?;
    sync_dir(dir)?;
    if let Some(parent) = aside.parent() {
        sync_dir(parent)?;
    }
    Ok(Some(LogCut {
        next_offset: problem.offset,
        aside: aside.to_path_buf(),
        moved_bytes,
        moved_segments,
        problem,
    }))
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(StorageError::io("create", path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(StorageError::io("write", path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}
