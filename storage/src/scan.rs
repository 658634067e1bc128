//! Reading one segment file without changing a byte: its header, where its records are
//! and where and why its data ends. Opening the log, healing it and `sagalog verify` all
//! decide from this one scan, so they never disagree about what a file holds.

use std::fs::File;
use std::io;

use crate::format::{
    inspect_rest, read_segment_header, Frame, FrameReader, HeaderProblem, SEGMENT_HEADER_BYTES,
};
use crate::LogConfig;

/// Bytes after the last whole record that are not the clean zero end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// Where the scan stopped (0 for a damaged header).
    pub position: u64,
    /// One past the last non-zero byte.
    pub dirty_end: u64,
    pub reason: String,
    /// A whole, valid frame after the damage: records follow it, so it is not a tail.
    pub valid_frame_at: Option<u64>,
}

#[derive(Debug, Clone)]
pub(crate) struct SegmentScan {
    pub file_len: u64,
    /// Whether the header is usable (the records below are counted only then).
    pub header: Result<(), HeaderProblem>,
    pub records: u64,
    /// Byte position just past the last whole record.
    pub end_pos: u64,
    /// `index[k]` is the byte position of record `k * index_interval_records`.
    pub index: Vec<u64>,
    pub damage: Option<Damage>,
}

impl SegmentScan {
    /// Whether the file holds anything that may have been acknowledged: a record, or a
    /// valid frame after damage. A file that holds nothing is at most a torn roll.
    pub fn holds_records(&self) -> bool {
        self.records > 0
            || self
                .damage
                .as_ref()
                .is_some_and(|d| d.valid_frame_at.is_some())
            || matches!(self.header, Err(HeaderProblem::UnsupportedVersion(_)))
    }
}

/// Scans the segment in `file` whose name says it starts at `base`.
pub(crate) fn scan_segment(file: &File, base: u64, config: &LogConfig) -> io::Result<SegmentScan> {
    let file_len = file.metadata()?.len();
    let max = config.max_record_bytes;
    let header = read_segment_header(file, file_len, base)?;
    let header_bytes = SEGMENT_HEADER_BYTES as u64;
    // An unusable header: no record is counted (a damaged one is damage from byte 0).
    let headless = |damage: Option<Damage>| SegmentScan {
        file_len,
        header: header.clone(),
        records: 0,
        end_pos: header_bytes,
        index: Vec::new(),
        damage,
    };
    match &header {
        Ok(()) => {}
        Err(HeaderProblem::UnsupportedVersion(_)) => return Ok(headless(None)),
        Err(HeaderProblem::Damaged(reason)) => {
            let rest = inspect_rest(file, 0, file_len, max)?;
            return Ok(headless(Some(Damage {
                position: 0,
                dirty_end: rest.dirty_end,
                reason: reason.clone(),
                valid_frame_at: rest.valid_frame_at,
            })));
        }
    }
    let interval = u64::from(config.index_interval_records);
    let mut reader = FrameReader::new(file, header_bytes, file_len, max);
    let mut index = Vec::new();
    let mut records = 0u64;
    let stop = loop {
        let pos = reader.position();
        match reader.next_frame()? {
            Frame::Record(_) => {
                if records.is_multiple_of(interval) {
                    index.push(pos);
                }
                records += 1;
            }
            Frame::End => break None,
            Frame::Zero => break Some((pos, None)),
            Frame::Invalid(reason) => break Some((pos, Some(reason))),
        }
    };
    let end_pos = reader.position();
    let mut damage = None;
    if let Some((pos, reason)) = stop {
        let rest = inspect_rest(file, pos, file_len, max)?;
        if reason.is_some() || rest.dirty_end != pos {
            damage = Some(Damage {
                position: pos,
                dirty_end: rest.dirty_end,
                reason: reason
                    .unwrap_or_else(|| "zero frame header followed by non-zero bytes".into()),
                valid_frame_at: rest.valid_frame_at,
            });
        }
    }
    Ok(SegmentScan {
        file_len,
        header,
        records,
        end_pos,
        index,
        damage,
    })
}

/// Whether a segment starting at `base`, after a kept segment starting at `prev_base`
/// whose records end at `expected`, is the leftover of a roll that failed: it holds
/// nothing and starts inside that segment's range. (A roll is made at the head once
/// everything before it is durable; when it fails the writer goes on in the previous
/// segment, so the leftover's base lies inside that one's records. An empty segment past
/// `expected` is no leftover: a segment between them is missing.)
pub(crate) fn is_leftover(scan: &SegmentScan, base: u64, prev_base: u64, expected: u64) -> bool {
    !scan.holds_records() && base > prev_base && base < expected
}
