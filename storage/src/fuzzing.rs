//! What the `segment` fuzz target in `fuzz/` checks, kept here so that its corpus (and
//! every crash found, saved there) runs as an ordinary test on stable too
//! (`storage/tests/fuzz_corpus.rs`). It panics when an invariant breaks.

use std::path::Path;

use crate::check::{check_log, cut_log};
use crate::format::encode_segment_header;
use crate::LogConfig;

/// Writes `bytes` as the one segment of a log under `dir` (after a valid header when the
/// first byte is even, so most inputs reach the frames), then: the read-only check never
/// panics and counts no more records than the bytes can hold; a clean check ends at its
/// record count; and after `cut_log` (what `recover` does) the check finds nothing.
pub fn segment(dir: &Path, bytes: &[u8]) {
    let Some((&mode, body)) = bytes.split_first() else {
        return;
    };
    let log = dir.join("log");
    let aside = dir.join("aside");
    for path in [&log, &aside] {
        let _ = std::fs::remove_dir_all(path);
    }
    std::fs::create_dir_all(&log).expect("a scratch directory");
    let mut contents = Vec::with_capacity(body.len() + 24);
    if mode % 2 == 0 {
        contents.extend_from_slice(&encode_segment_header(0));
    }
    contents.extend_from_slice(body);
    std::fs::write(log.join(format!("{:020}.log", 0)), &contents).expect("a scratch file");
    let config = LogConfig {
        max_record_bytes: 1 << 16,
        ..LogConfig::default()
    };
    let check = check_log(&log, &config, &|_| {}).expect("a readable file");
    assert!(check.records <= contents.len() as u64 / 8, "{check:?}");
    if check.problems.is_empty() {
        assert_eq!(check.next_offset, check.records, "{check:?}");
        return;
    }
    let cut = cut_log(&log, &config, &aside, true).expect("a writable scratch directory");
    let after = check_log(&log, &config, &|_| {}).expect("a readable file");
    match cut {
        Some(cut) => {
            assert!(after.problems.is_empty(), "after the cut: {after:?}");
            assert_eq!(after.next_offset, cut.next_offset);
        }
        None => panic!("problems {:?} but nothing to cut", check.problems),
    }
}
