//! The disk watch of `serve`: every second it reads the data directory's free space,
//! exports it, and decides whether writes are taken.
//!
//! - The watermark: writes are refused (`503`, `/readyz` fails) while the filesystem has
//!   less free space than the smaller of `--min-free-bytes` and `--min-free-percent` of
//!   its size, and taken again once it has more.
//! - A disk so full that the log's writes fail (the watermark off, or below what a
//!   write needs) makes `/readyz` fail until it has room again — whether or not a
//!   write has succeeded since.
//! - The reserve (`--reserve-bytes`, see `sagalog_storage::reserve`): kept whenever
//!   there is room for it. When the engine had to release it to open on a full disk,
//!   writes are refused until it can be kept again, so a server that starts on a full
//!   disk serves reads and says why it takes no writes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sagalog_engine::{Partitions, Shutdown};
use sagalog_http::{Metrics, Readiness};
use sagalog_storage::Reserve;

use crate::options::Serve;

/// The reserve of each of `partitions` on the filesystem of `dir`: `configured` bytes
/// together, at most 1% of the filesystem (a small volume keeps a small one), but never
/// below [`MIN_RESERVE_BYTES`] each, what opening an index store needs (0 keeps none).
pub fn reserve_bytes(dir: &Path, configured: u64, partitions: u32) -> u64 {
    let total = match sagalog_storage::disk_space(dir) {
        Ok((_, total)) => configured.min((total / 100).max(MIN_RESERVE_BYTES)),
        Err(_) => configured,
    };
    if total == 0 {
        return 0;
    }
    (total / u64::from(partitions.max(1))).max(MIN_RESERVE_BYTES)
}

/// The least reserve that lets the index store open (sled writes a log segment of
/// 512 KiB and a snapshot as it opens).
const MIN_RESERVE_BYTES: u64 = 2 << 20;

pub struct DiskWatch {
    dir: PathBuf,
    min_free_bytes: u64,
    min_free_percent: u8,
    /// One in each partition's directory.
    reserves: Vec<Reserve>,
    /// An engine released its reserve to open, and they are not all kept again yet.
    reserve_released: AtomicBool,
}

impl DiskWatch {
    const EVERY: Duration = Duration::from_secs(1);
    /// Free bytes below which a disk whose log writes failed for want of space still
    /// counts as full (one batch of the writer's, at most); also the room the reserve
    /// leaves when it is written.
    const FULL_BYTES: u64 = 8 << 20;

    pub fn new(serve: &Serve, partitions: &Partitions) -> DiskWatch {
        let count = partitions.count();
        let local = partitions.local().count() as u32;
        let bytes = reserve_bytes(&serve.data_dir, serve.reserve_bytes, local);
        let dir = |p| sagalog_engine::partitions::partition_dir(&serve.data_dir, count, p);
        DiskWatch {
            dir: serve.data_dir.clone(),
            min_free_bytes: serve.min_free_bytes,
            min_free_percent: serve.min_free_percent,
            reserves: partitions
                .local()
                .map(|(p, _)| Reserve::new(&dir(p), bytes))
                .collect(),
            reserve_released: AtomicBool::new(
                partitions
                    .local()
                    .any(|(_, engine)| engine.reserve_released_at_open()),
            ),
        }
    }

    pub fn check(&self, partitions: &Partitions, metrics: &Metrics, readiness: &Readiness) {
        let (free, total) = match sagalog_storage::disk_space(&self.dir) {
            Ok(space) => space,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the data directory's free space");
                return;
            }
        };
        let watermark = self
            .min_free_bytes
            .min(total / 100 * u64::from(self.min_free_percent));
        metrics
            .disk_free
            .set(i64::try_from(free).unwrap_or(i64::MAX));
        metrics
            .disk_watermark
            .set(i64::try_from(watermark).unwrap_or(i64::MAX));
        let refusing = if free < watermark {
            Some(format!(
                "the filesystem of {} has {free} bytes free, below the watermark of {watermark} \
                 (--min-free-bytes, --min-free-percent): free some space",
                self.dir.display()
            ))
        } else {
            self.reserve_missing(free)
        };
        for (_, engine) in partitions.local() {
            engine.set_refusing(refusing.clone());
        }
        let full = partitions
            .local()
            .find_map(|(_, engine)| engine.log_health().write_failure)
            .filter(|failure| failure.disk_full && free < Self::FULL_BYTES)
            .map(|failure| {
                format!(
                    "the disk is full: {} ({free} bytes free); free some space",
                    failure.reason
                )
            });
        readiness.set("disk", full);
    }

    /// Keeps the reserve when there is room; why writes are refused while it was
    /// released at open and cannot be kept yet.
    fn reserve_missing(&self, free: u64) -> Option<String> {
        let mut kept = true;
        for reserve in &self.reserves {
            kept &= match reserve.keep(Self::FULL_BYTES) {
                Ok(kept) => kept,
                Err(e) => {
                    tracing::warn!(error = %e, "could not write the data directory's reserve");
                    false
                }
            };
        }
        if kept {
            if self.reserve_released.swap(false, Ordering::AcqRel) {
                tracing::info!("the data directory's reserve is kept again: writes are taken");
            }
            return None;
        }
        self.reserve_released.load(Ordering::Acquire).then(|| {
            format!(
                "the disk was full when the server started and has {free} bytes free, too \
                 few to keep the reserve of {} bytes (--reserve-bytes) with room to spare: \
                 free some space",
                self.reserves.first().map_or(0, Reserve::bytes)
            )
        })
    }

    pub async fn run(
        self: Arc<Self>,
        partitions: Arc<Partitions>,
        metrics: Arc<Metrics>,
        readiness: Readiness,
        mut stopping: Shutdown,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Self::EVERY) => {}
                () = stopping.wait() => return,
            }
            // Writing the reserve takes a moment: off the runtime.
            let (watch, partitions, metrics, readiness) = (
                self.clone(),
                partitions.clone(),
                metrics.clone(),
                readiness.clone(),
            );
            let _ =
                tokio::task::spawn_blocking(move || watch.check(&partitions, &metrics, &readiness))
                    .await;
        }
    }
}
