//! The on-disk format of a log segment: a fixed header, then framed records.
//!
//! ```text
//! segment header (24 bytes): magic "SGLGSEG\0" | format version u32 LE | base offset u64 LE | crc32 u32 LE
//! frame:                     payload length u32 LE | crc32 u32 LE | payload
//! ```
//!
//! The header CRC covers the 20 bytes before it; a frame's CRC covers its four length bytes
//! and then the payload, so a flipped length is caught as surely as a flipped payload byte.
//! A frame header of eight zero bytes marks the clean end of a segment: segments are
//! pre-written with zeros (see `alloc`), and an empty payload is refused at append, so a
//! real frame never starts with a zero length.
//!
//! This module also holds [`FrameReader`], the one buffered, positioned reader that the
//! open-time scan, offset reads and tail subscriptions all use.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const SEGMENT_MAGIC: [u8; 8] = *b"SGLGSEG\0";
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 24;
pub const FRAME_HEADER_BYTES: usize = 8;

/// How many bytes a reader pulls from the file at once.
const READ_CHUNK_BYTES: usize = 256 * 1024;

pub fn encode_segment_header(base_offset: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&base_offset.to_le_bytes());
    let crc = crc32fast::hash(&header[0..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Why a segment header cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Torn or never written: short, all zeros, wrong magic or checksum.
    Damaged(String),
    /// Intact, but of a format this build cannot read. Never cut: it is not damage.
    UnsupportedVersion(u32),
}

pub fn decode_segment_header(bytes: &[u8], expected_base: u64) -> Result<(), HeaderProblem> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(HeaderProblem::Damaged(format!(
            "segment header is {} bytes, expected {SEGMENT_HEADER_BYTES}",
            bytes.len()
        )));
    }
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err(HeaderProblem::Damaged("bad segment magic".into()));
    }
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[0..20]) != crc {
        return Err(HeaderProblem::Damaged(
            "segment header checksum mismatch".into(),
        ));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != SEGMENT_FORMAT_VERSION {
        return Err(HeaderProblem::UnsupportedVersion(version));
    }
    let base = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    if base != expected_base {
        return Err(HeaderProblem::Damaged(format!(
            "header says base offset {base}, file name says {expected_base}"
        )));
    }
    Ok(())
}

fn frame_crc(len_bytes: &[u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len_bytes);
    hasher.update(payload);
    hasher.finalize()
}

/// Appends one framed record to `buf`.
pub fn encode_frame(buf: &mut Vec<u8>, payload: &[u8]) {
    debug_assert!(!payload.is_empty(), "empty payloads are refused at append");
    let len_bytes = u32::try_from(payload.len())
        .expect("record length checked against max_record_bytes")
        .to_le_bytes();
    buf.extend_from_slice(&len_bytes);
    buf.extend_from_slice(&frame_crc(&len_bytes, payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Frame length (header included) of a payload of `payload_len` bytes.
pub fn frame_bytes(payload_len: usize) -> usize {
    FRAME_HEADER_BYTES + payload_len
}

/// What stands at a frame position.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A whole record whose checksum matches.
    Record(&'a [u8]),
    /// The reader's end position: nothing more to read.
    End,
    /// A zero frame header (or only zero bytes up to the end): the clean end of the data,
    /// if everything after it is zero too.
    Zero,
    /// Not a whole, valid record; the reason says what is wrong.
    Invalid(String),
}

/// Checks the frame that starts at `bytes[0]`, with `bytes` running to the end of the data.
pub fn check_frame(bytes: &[u8], max_record_bytes: u32) -> Frame<'_> {
    if bytes.is_empty() {
        return Frame::End;
    }
    if bytes.len() < FRAME_HEADER_BYTES {
        return if bytes.iter().all(|b| *b == 0) {
            Frame::Zero
        } else {
            Frame::Invalid(format!("partial frame header of {} bytes", bytes.len()))
        };
    }
    let len_bytes: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes);
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if len == 0 {
        return if crc == 0 {
            Frame::Zero
        } else {
            Frame::Invalid("zero-length frame with a checksum".into())
        };
    }
    if len > max_record_bytes {
        return Frame::Invalid(format!(
            "frame length {len} exceeds max_record_bytes {max_record_bytes}"
        ));
    }
    let end = FRAME_HEADER_BYTES + len as usize;
    if bytes.len() < end {
        return Frame::Invalid(format!(
            "frame of {len} bytes runs past the end of the data ({} bytes left)",
            bytes.len() - FRAME_HEADER_BYTES
        ));
    }
    let payload = &bytes[FRAME_HEADER_BYTES..end];
    if frame_crc(&len_bytes, payload) != crc {
        return Frame::Invalid("frame checksum mismatch".into());
    }
    Frame::Record(payload)
}

/// What lies after the point where a scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestOfSegment {
    /// Position of the first whole, valid frame after the stop, if any.
    pub valid_frame_at: Option<u64>,
    /// One past the last non-zero byte (equal to the stop position when all is zero).
    pub dirty_end: u64,
}

/// Looks at `[from, end)` of a segment after a scan stopped at `from`: is there a valid
/// frame anywhere after it (corruption in the middle), or only garbage and zeros (a torn
/// tail)? A clean end followed by zeros (the normal case for a pre-written segment) costs
/// one streaming read in bounded chunks; only when non-zero bytes follow is the dirty
/// range (plus room for one whole frame) read into memory and searched for a frame.
pub fn inspect_rest(
    file: &File,
    from: u64,
    end: u64,
    max_record_bytes: u32,
) -> io::Result<RestOfSegment> {
    let dirty_end = dirty_end(file, from, end)?;
    if dirty_end == from {
        return Ok(RestOfSegment {
            valid_frame_at: None,
            dirty_end,
        });
    }
    // A frame starting before `dirty_end` may end in zeros after it.
    let search_end = end.min(dirty_end + (FRAME_HEADER_BYTES as u64) + u64::from(max_record_bytes));
    let len = usize::try_from(search_end - from).expect("segment fits in memory");
    let mut rest = vec![0u8; len];
    file.read_exact_at(&mut rest, from)?;
    let starts = usize::try_from(dirty_end - from).expect("segment fits in memory");
    let valid_frame_at = (1..starts)
        .find(|&i| matches!(check_frame(&rest[i..], max_record_bytes), Frame::Record(_)))
        .map(|i| from + i as u64);
    Ok(RestOfSegment {
        valid_frame_at,
        dirty_end,
    })
}

/// One past the last non-zero byte of `[from, end)` (`from` when all of it is zero),
/// read in bounded chunks.
pub fn dirty_end(file: &File, from: u64, end: u64) -> io::Result<u64> {
    const CHUNK: u64 = 1 << 20;
    let mut chunk = vec![0u8; CHUNK.min(end.saturating_sub(from)) as usize];
    let mut dirty_end = from;
    let mut pos = from;
    while pos < end {
        let n = (end - pos).min(CHUNK) as usize;
        file.read_exact_at(&mut chunk[..n], pos)?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b != 0) {
            dirty_end = pos + i as u64 + 1;
        }
        pos += n as u64;
    }
    Ok(dirty_end)
}

/// A buffered reader of consecutive frames between two positions of a segment file,
/// using positioned reads so many readers can share one `File`.
pub struct FrameReader<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    buf_pos: u64,
    max_record_bytes: u32,
    chunk_bytes: usize,
}

impl<'f> FrameReader<'f> {
    pub fn new(file: &'f File, pos: u64, end: u64, max_record_bytes: u32) -> Self {
        debug_assert!(pos <= end);
        FrameReader {
            file,
            pos,
            end,
            buf: Vec::new(),
            buf_pos: pos,
            max_record_bytes,
            chunk_bytes: READ_CHUNK_BYTES,
        }
    }

    /// Reads ahead at least `chunk_bytes` at a time (a small value for point reads).
    pub fn with_chunk_bytes(mut self, chunk_bytes: usize) -> Self {
        self.chunk_bytes = chunk_bytes.max(FRAME_HEADER_BYTES);
        self
    }

    /// File position of the next frame.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Reads the next frame; on `Frame::Record` the reader moves past it, otherwise it
    /// stays at the frame it could not read.
    pub fn next_frame(&mut self) -> io::Result<Frame<'_>> {
        if self.pos >= self.end {
            return Ok(Frame::End);
        }
        self.fill(FRAME_HEADER_BYTES)?;
        let want = match self.buffered().get(0..4) {
            Some(len) => {
                let len = u32::from_le_bytes(len.try_into().expect("4 bytes"));
                frame_bytes(len.min(self.max_record_bytes) as usize)
            }
            None => FRAME_HEADER_BYTES,
        };
        self.fill(want)?;
        let start = (self.pos - self.buf_pos) as usize;
        let payload_len = match check_frame(&self.buf[start..], self.max_record_bytes) {
            Frame::Record(payload) => payload.len(),
            Frame::End => return Ok(Frame::End),
            Frame::Zero => return Ok(Frame::Zero),
            Frame::Invalid(reason) => return Ok(Frame::Invalid(reason)),
        };
        self.pos += frame_bytes(payload_len) as u64;
        let body = start + FRAME_HEADER_BYTES;
        Ok(Frame::Record(&self.buf[body..body + payload_len]))
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[(self.pos - self.buf_pos) as usize..]
    }

    /// Makes at least `want` bytes from `pos` available, or all that remain before `end`.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        if self.buffered().len() >= want {
            return Ok(());
        }
        let consumed = (self.pos - self.buf_pos) as usize;
        self.buf.drain(..consumed);
        self.buf_pos = self.pos;
        let remaining = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let target = want.max(self.chunk_bytes).min(remaining);
        if target > self.buf.len() {
            let old = self.buf.len();
            self.buf.resize(target, 0);
            self.file
                .read_exact_at(&mut self.buf[old..], self.buf_pos + old as u64)?;
        }
        Ok(())
    }
}

/// Reads and checks the header of a segment file of `file_len` bytes whose name says it
/// starts at `base` (a file shorter than a header is checked as far as it goes).
pub fn read_segment_header(
    file: &File,
    file_len: u64,
    base: u64,
) -> io::Result<Result<(), HeaderProblem>> {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    let header_len = (file_len as usize).min(SEGMENT_HEADER_BYTES);
    file.read_exact_at(&mut header[..header_len], 0)?;
    Ok(decode_segment_header(&header[..header_len], base))
}

/// The whole frames at the start of a segment's bytes (after its header): how many,
/// and the byte position where the last ends.
pub fn whole_frames(segment: &[u8], max_record_bytes: u32) -> (u64, usize) {
    let mut pos = SEGMENT_HEADER_BYTES.min(segment.len());
    let mut records = 0;
    while let Frame::Record(payload) = check_frame(&segment[pos..], max_record_bytes) {
        pos += frame_bytes(payload.len());
        records += 1;
    }
    (records, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_frame(&mut buf, payload);
        buf
    }

    #[test]
    fn frame_round_trips_and_rejects_any_single_flipped_byte() {
        let bytes = framed(b"hello saga");
        assert!(matches!(check_frame(&bytes, 1024), Frame::Record(p) if p == b"hello saga"));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    !matches!(check_frame(&bad, 1024), Frame::Record(_)),
                    "flipping bit {bit} of byte {i} was not detected"
                );
            }
        }
    }

    #[test]
    fn zero_bytes_are_the_clean_end_and_a_partial_frame_is_invalid() {
        assert!(matches!(check_frame(&[0; 8], 1024), Frame::Zero));
        assert!(matches!(check_frame(&[0; 3], 1024), Frame::Zero));
        let bytes = framed(b"abc");
        assert!(matches!(
            check_frame(&bytes[..bytes.len() - 1], 1024),
            Frame::Invalid(_)
        ));
        assert!(matches!(check_frame(&bytes[..5], 1024), Frame::Invalid(_)));
        assert!(matches!(check_frame(&bytes, 2), Frame::Invalid(m) if m.contains("exceeds")));
    }

    #[test]
    fn segment_header_checks_magic_crc_version_and_base() {
        let header = encode_segment_header(42);
        assert_eq!(decode_segment_header(&header, 42), Ok(()));
        assert!(matches!(
            decode_segment_header(&header, 41),
            Err(HeaderProblem::Damaged(_))
        ));
        assert!(matches!(
            decode_segment_header(&header[..10], 42),
            Err(HeaderProblem::Damaged(_))
        ));
        let mut flipped = header;
        flipped[13] ^= 0xff;
        assert!(matches!(
            decode_segment_header(&flipped, 42),
            Err(HeaderProblem::Damaged(_))
        ));
        let mut future = header;
        future[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&future[0..20]);
        future[20..24].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_segment_header(&future, 42),
            Err(HeaderProblem::UnsupportedVersion(2))
        );
    }

    #[test]
    fn inspect_rest_tells_a_torn_tail_from_a_valid_frame_after_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let max = 1024;
        // Garbage, then a valid frame whose payload ends in zeros, then more zeros: the
        // frame lies partly past the last non-zero byte and must still be found.
        let mut bytes = vec![0xff, 0x13, 0x00, 0x07];
        let frame_at = bytes.len() as u64;
        bytes.extend(framed(&[1, 2, 3, 0, 0, 0, 0, 0]));
        bytes.resize(bytes.len() + (3 << 20), 0);
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let rest = inspect_rest(&file, 0, bytes.len() as u64, max).unwrap();
        assert_eq!(rest.valid_frame_at, Some(frame_at));
        assert_eq!(rest.dirty_end, frame_at + 8 + 3);

        // Only garbage and zeros: a torn tail, with its extent.
        let rest = inspect_rest(&file, 0, frame_at + 6, max).unwrap();
        assert_eq!(
            rest,
            RestOfSegment {
                valid_frame_at: None,
                dirty_end: frame_at + 6
            }
        );

        // All zeros over several chunks: clean.
        let rest = inspect_rest(&file, frame_at + 16, bytes.len() as u64, max).unwrap();
        assert_eq!(
            rest,
            RestOfSegment {
                valid_frame_at: None,
                dirty_end: frame_at + 16
            }
        );
    }
}
