//! Where a data directory keeps its partitions: the count, fixed when the directory is
//! made and recorded in it (a different value later is refused), and each partition's
//! folder (the directory itself for one, `partitions/NNNN/` for more).

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};
use crate::model::placement::MAX_PARTITIONS;

/// Where a data directory of more than one partition records their count.
const COUNT_FILE: &str = "partitions/count";

/// How many partitions `dir` holds: `Some(1)` for a directory with a log of its own,
/// the recorded count for a partitioned one, `None` for a new (or empty) directory.
pub fn recorded(dir: &Path) -> Result<Option<u32>> {
    let count_file = dir.join(COUNT_FILE);
    match std::fs::read_to_string(&count_file) {
        Ok(text) => {
            let count = text
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PARTITIONS).contains(n))
                .ok_or_else(|| {
                    EngineError::Partitions(format!(
                        "{} holds {:?}, not a partition count in 1..={MAX_PARTITIONS}",
                        count_file.display(),
                        text.trim()
                    ))
                })?;
            Ok(Some(count))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(dir.join("log").is_dir().then_some(1))
        }
        Err(e) => Err(EngineError::Partitions(format!(
            "reading {}: {e}",
            count_file.display()
        ))),
    }
}

/// The partition count of `dir`: the recorded one (which `requested`, when given, must
/// equal), or for a new directory `requested` (default 1), recorded now.
pub fn settle(dir: &Path, requested: Option<u32>) -> Result<u32> {
    if let Some(n) = requested.filter(|n| !(1..=MAX_PARTITIONS).contains(n)) {
        return Err(EngineError::Partitions(format!(
            "--partitions {n}: the count must be in 1..={MAX_PARTITIONS}"
        )));
    }
    match (recorded(dir)?, requested) {
        (Some(recorded), Some(requested)) if recorded != requested => {
            Err(EngineError::Partitions(format!(
                "{} holds {recorded} partition{}, not {requested}: the partition count is \
                 fixed when a data directory is made (a saga's partition depends on it); \
                 leave --partitions out or give {recorded}",
                dir.display(),
                if recorded == 1 { "" } else { "s" },
            )))
        }
        (Some(recorded), _) => Ok(recorded),
        (None, requested) => {
            let count = requested.unwrap_or(1);
            if count > 1 {
                write_count(dir, count)?;
            }
            Ok(count)
        }
    }
}

/// Records `count` in `dir/partitions/count`, durably (written aside, then renamed).
fn write_count(dir: &Path, count: u32) -> Result<()> {
    let failed = |what: &str, e: std::io::Error| {
        EngineError::Partitions(format!("{what} {}: {e}", dir.join(COUNT_FILE).display()))
    };
    let parent = dir.join("partitions");
    std::fs::create_dir_all(&parent).map_err(|e| failed("creating the folder of", e))?;
    let aside = parent.join("count.new");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&aside)?;
        writeln!(file, "{count}")?;
        file.sync_all()?;
        std::fs::rename(&aside, dir.join(COUNT_FILE))?;
        std::fs::File::open(&parent)?.sync_all()
    };
    write().map_err(|e| failed("writing", e))
}

/// The directory of partition `p` of `count` under the data directory `dir`.
pub fn partition_dir(dir: &Path, count: u32, p: u32) -> PathBuf {
    if count == 1 {
        dir.to_path_buf()
    } else {
        dir.join("partitions").join(format!("{p:04}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_recorded_once_and_a_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh");
        assert_eq!(recorded(&fresh).unwrap(), None);
        assert_eq!(settle(&fresh, Some(4)).unwrap(), 4);
        assert_eq!(recorded(&fresh).unwrap(), Some(4));
        assert_eq!(settle(&fresh, None).unwrap(), 4);
        assert_eq!(settle(&fresh, Some(4)).unwrap(), 4);
        let e = settle(&fresh, Some(2)).unwrap_err().to_string();
        assert!(e.contains("holds 4 partitions, not 2"), "{e}");
        // A directory with a log of its own is one partition, the layout from before.
        let single = dir.path().join("single");
        std::fs::create_dir_all(single.join("log")).unwrap();
        assert_eq!(settle(&single, None).unwrap(), 1);
        let e = settle(&single, Some(3)).unwrap_err().to_string();
        assert!(e.contains("holds 1 partition, not 3"), "{e}");
        assert_eq!(partition_dir(&single, 1, 0), single);
        assert_eq!(
            partition_dir(&fresh, 4, 3),
            fresh.join("partitions").join("0003")
        );
        for bad in [0, MAX_PARTITIONS + 1] {
            let e = settle(&dir.path().join("bad"), Some(bad)).unwrap_err();
            assert!(e.to_string().contains("must be in 1..=1024"), "{e}");
        }
        std::fs::write(fresh.join(COUNT_FILE), "many\n").unwrap();
        let e = recorded(&fresh).unwrap_err();
        assert!(e.to_string().contains("not a partition count"), "{e}");
    }
}
