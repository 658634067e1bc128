//! Partitions: a deployment's sagas split into `P` partitions, each a whole [`Engine`]
//! over its own directory (log, indexes, snapshots, relay position), so that a partition
//! can be served, copied and later moved as one unit. Which partition a saga belongs to
//! and which pod holds it is the [`Placement`]'s to say.
//!
//! - [`layout`]: `P` is fixed when the data directory is made and recorded in it
//!   ([`settle`]); a different value later is refused. One partition lives in the data
//!   directory itself (the layout from before partitions, which therefore opens as
//!   partition 0 of 1); with more, partition `p` lives in `partitions/NNNN/` and the
//!   count in `partitions/count`.
//! - [`merge`]: list pages of several partitions (or pods) merged into one.
//! - [`Partitions`] (here) holds the engines of the partitions one process owns, routes a saga's
//!   calls to its partition's engine, and answers the calls that span partitions (lists
//!   merged newest first, definitions registered in every partition, figures summed).

mod layout;
mod merge;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sagalog_storage::SnapshotInfo;

use crate::api::{EngineStats, ListPage, ListQuery, StartAnswer, StartRequest};
use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::model::definition::{Definition, Registered};
use crate::model::placement::Placement;
use crate::service::dead_letters::{DeadLetter, DeadLetterCounts};
use crate::service::delivery::DeliveryChange;
use crate::service::engine::Engine;
use crate::service::projection::Counters;

pub use layout::{partition_dir, recorded, settle};
pub use merge::{merge_by, merge_pages};

/// The engines of the partitions one process owns, by partition.
pub struct Partitions {
    placement: Placement,
    /// Indexed by partition; `None` for another process's.
    engines: Vec<Option<Arc<Engine>>>,
    /// The partitions held here, ascending.
    local: Vec<u32>,
    /// Which local partition the next saga without an id goes to.
    next_fresh: AtomicUsize,
}

impl Partitions {
    /// Opens the partitions of `dir` that `placement` puts on this pod (its partition
    /// count is the directory's, see [`settle`]), each with the configuration `config`
    /// gives it, at once on as many threads.
    pub fn open(
        dir: &Path,
        placement: Placement,
        config: impl Fn(u32) -> EngineConfig,
    ) -> Result<Partitions> {
        let count = placement.partitions();
        let local: Vec<u32> = placement.local().collect();
        let configs: Vec<(u32, EngineConfig)> = local
            .iter()
            .map(|&p| {
                let mut c = config(p);
                c.partition = placement.identity(p);
                (p, c)
            })
            .collect();
        let opened: Vec<(u32, Result<Engine>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = configs
                .into_iter()
                .map(|(p, config)| {
                    let path = partition_dir(dir, count, p);
                    scope.spawn(move || (p, Engine::open(&path, config)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("opening a partition does not panic"))
                .collect()
        });
        let mut engines: Vec<Option<Arc<Engine>>> = (0..count).map(|_| None).collect();
        for (p, engine) in opened {
            let engine = engine.map_err(|e| match count {
                1 => e,
                _ => EngineError::Partitions(format!(
                    "partition {p} ({}): {e}",
                    partition_dir(dir, count, p).display()
                )),
            })?;
            engines[p as usize] = Some(Arc::new(engine));
        }
        Ok(Partitions {
            placement,
            engines,
            local,
            next_fresh: AtomicUsize::new(0),
        })
    }

    /// One engine as the only partition (tests, tools).
    pub fn single(engine: Arc<Engine>) -> Partitions {
        Partitions {
            placement: Placement::single(1),
            engines: vec![Some(engine)],
            local: vec![0],
            next_fresh: AtomicUsize::new(0),
        }
    }

    /// Where the deployment's sagas live, seen from this process.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// `P`: the partitions of the deployment, local or not.
    pub fn count(&self) -> u32 {
        self.placement.partitions()
    }

    /// The partition `saga_id` belongs to.
    pub fn of(&self, saga_id: &str) -> u32 {
        self.placement.partition_of(saga_id)
    }

    /// The engine of partition `p`, when this process holds it.
    pub fn get(&self, p: u32) -> Option<&Arc<Engine>> {
        self.engines.get(p as usize).and_then(Option::as_ref)
    }

    /// The engine of `saga_id`'s partition, or the partition when another process holds it.
    pub fn owner(&self, saga_id: &str) -> std::result::Result<&Arc<Engine>, u32> {
        let p = self.of(saga_id);
        self.get(p).ok_or(p)
    }

    /// The partitions held here with their engines, ascending.
    pub fn local(&self) -> impl Iterator<Item = (u32, &Arc<Engine>)> + '_ {
        self.local
            .iter()
            .map(|&p| (p, self.get(p).expect("a local partition has its engine")))
    }

    /// The lowest partition held here: what every partition has alike (definitions,
    /// the delivery pause) is read from it.
    pub fn first(&self) -> &Arc<Engine> {
        self.get(self.local[0])
            .expect("a process holds a partition")
    }

    /// The local partition a saga started without an id goes to: each in turn.
    pub fn for_fresh(&self) -> &Arc<Engine> {
        let i = self.next_fresh.fetch_add(1, Ordering::Relaxed) % self.local.len();
        self.get(self.local[i])
            .expect("a local partition has its engine")
    }

    /// Starts a saga in its partition (with an id), or in one of the local partitions
    /// (without: it gets an id of that partition). `Err(Some(p))`: partition `p` of the
    /// id is held elsewhere.
    pub async fn start(&self, request: StartRequest) -> Result<StartAnswer, Routed> {
        let engine = match &request.saga_id {
            Some(id) => self.owner(id).map_err(Routed::Elsewhere)?,
            None => self.for_fresh(),
        };
        engine.start(request).await.map_err(Routed::Engine)
    }

    /// Registers `definition` in every local partition's log (each is idempotent, so a
    /// registration that failed half-way is finished by repeating it): `New` when any
    /// partition lacked it.
    pub async fn register_definition(&self, definition: Definition) -> Result<Registered> {
        let mut registered = Registered::Unchanged;
        for (_, engine) in self.local() {
            if let Registered::New = engine.register_definition(definition.clone()).await? {
                registered = Registered::New;
            }
        }
        Ok(registered)
    }

    /// Registers in every local partition the definitions another one has (a
    /// registration a crash cut short): run at open, before serving.
    pub async fn align_definitions(&self) -> Result<usize> {
        // By name and version (the order each partition's registry took them in); two
        // partitions with different contents under one version both stay, and the
        // registration of the second is refused as it would be anywhere.
        type Key = (String, u32);
        let key = |d: &Definition| (d.name.clone(), d.version);
        let mut seen: std::collections::BTreeMap<Key, Vec<Arc<Definition>>> = Default::default();
        for (_, engine) in self.local() {
            for definition in engine.definitions() {
                let versions = seen.entry(key(&definition)).or_default();
                if !versions.contains(&definition) {
                    versions.push(definition);
                }
            }
        }
        let mut added = 0;
        for (_, engine) in self.local() {
            let have: std::collections::BTreeMap<Key, Arc<Definition>> = engine
                .definitions()
                .into_iter()
                .map(|d| (key(&d), d))
                .collect();
            for (k, versions) in &seen {
                for definition in versions {
                    if have.get(k) != Some(definition) {
                        engine.register_definition((**definition).clone()).await?;
                        added += 1;
                    }
                }
            }
        }
        Ok(added)
    }

    /// The most bytes of sagas one list page holds (`EngineConfig::max_list_bytes`).
    pub fn max_list_bytes(&self) -> usize {
        max_list_bytes(self.first())
    }

    /// The definitions (alike in every partition).
    pub fn definitions(&self) -> Vec<Arc<Definition>> {
        self.first().definitions()
    }

    /// A page of sagas of every local partition, newest first (see [`merge_pages`]).
    pub async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        if self.local.len() == 1 {
            return self.first().list(query).await;
        }
        let mut pages = Vec::with_capacity(self.local.len());
        for (_, engine) in self.local() {
            pages.push(engine.list(query).await?);
        }
        merge_pages(pages, query.limit, max_list_bytes(self.first()))
    }

    /// The sagas' counters, every local partition together.
    pub fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for (_, engine) in self.local() {
            add_counters(&mut total, &engine.counters());
        }
        total
    }

    /// The figures of every local partition together: counts summed, the oldest saga
    /// the oldest of all, offsets summed (a figure per partition is in
    /// [`Engine::stats`]).
    pub fn stats(&self) -> EngineStats {
        let mut partitions = self.local().map(|(_, e)| e.stats());
        let mut total = partitions.next().expect("a process holds a partition");
        for stats in partitions {
            add_counters(&mut total.counters, &stats.counters);
            for i in 0..6 {
                total.active_by_status[i] += stats.active_by_status[i];
                total.oldest_updated_ms[i] =
                    match (total.oldest_updated_ms[i], stats.oldest_updated_ms[i]) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
            }
            if let Some(oldest) = stats.oldest_active {
                let older = total
                    .oldest_active
                    .as_ref()
                    .is_none_or(|o| oldest.updated_at_ms < o.updated_at_ms);
                if older {
                    total.oldest_active = Some(oldest);
                }
            }
            total.log_next_offset += stats.log_next_offset;
            total.index_watermark += stats.index_watermark;
            total.snapshot_offset += stats.snapshot_offset;
            total.snapshot_at_ms = total.snapshot_at_ms.min(stats.snapshot_at_ms);
            total.replayed_records += stats.replayed_records;
        }
        total
    }
}

impl Partitions {
    /// Pauses delivery in every local partition (each records it in its log; a pause
    /// cut short is finished by repeating it): the first partition's change.
    pub async fn pause_delivery(
        &self,
        topics: Vec<String>,
        reason: String,
    ) -> Result<DeliveryChange> {
        let mut first = None;
        for (_, engine) in self.local() {
            let change = engine
                .pause_delivery(topics.clone(), reason.clone())
                .await?;
            first.get_or_insert(change);
        }
        Ok(first.expect("a process holds a partition"))
    }

    /// Resumes delivery in every local partition, as [`Partitions::pause_delivery`].
    pub async fn resume_delivery(&self, topics: Vec<String>) -> Result<DeliveryChange> {
        let mut first = None;
        for (_, engine) in self.local() {
            let change = engine.resume_delivery(topics.clone()).await?;
            first.get_or_insert(change);
        }
        Ok(first.expect("a process holds a partition"))
    }

    /// A snapshot of every local partition, one after the other.
    pub async fn snapshot(&self) -> Result<Vec<(u32, SnapshotInfo)>> {
        let mut taken = Vec::with_capacity(self.local.len());
        for (p, engine) in self.local() {
            taken.push((p, engine.snapshot().await?));
        }
        Ok(taken)
    }

    /// Dead letters by partition, then offset: at most `limit` after `after` (a
    /// partition and an offset in it).
    pub fn dead_letters(
        &self,
        after: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<Vec<(u32, DeadLetter)>> {
        let mut out = Vec::new();
        for (p, engine) in self.local() {
            if out.len() == limit {
                break;
            }
            let from = match after {
                Some((after_p, _)) if p < after_p => continue,
                Some((after_p, offset)) if p == after_p => Some(offset),
                _ => None,
            };
            for letter in engine.dead_letters(from, limit - out.len())? {
                out.push((p, letter));
            }
        }
        Ok(out)
    }

    /// Dead letters counted in every local partition, each reading at most `bound`
    /// index entries.
    pub fn dead_letter_counts(&self, bound: usize) -> Result<DeadLetterCounts> {
        let mut total = DeadLetterCounts::default();
        for (_, engine) in self.local() {
            let counts = engine.dead_letter_counts(bound)?;
            total.total += counts.total;
            total.waiting += counts.waiting;
            total.more |= counts.more;
        }
        Ok(total)
    }

    /// The log's bounds of every local partition together: their first offsets and
    /// heads summed (the records they hold, when none was removed).
    pub fn log_bounds(&self) -> (u64, u64) {
        self.local().fold((0, 0), |(first, head), (_, engine)| {
            let (f, h) = engine.log_bounds();
            (first + f, head + h)
        })
    }
}

/// Why a call for a saga did not get an engine's answer.
#[derive(Debug)]
pub enum Routed {
    /// The saga's partition is held by another process.
    Elsewhere(u32),
    Engine(EngineError),
}

impl std::fmt::Display for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Routed::Elsewhere(p) => write!(f, "partition {p} is held by another server"),
            Routed::Engine(e) => e.fmt(f),
        }
    }
}

impl From<EngineError> for Routed {
    fn from(e: EngineError) -> Routed {
        Routed::Engine(e)
    }
}

fn max_list_bytes(engine: &Engine) -> usize {
    engine.inner.config.max_list_bytes
}

fn add_counters(total: &mut Counters, more: &Counters) {
    for i in 0..6 {
        total.status_counts[i] += more.status_counts[i];
    }
    for (saga_type, counters) in &more.by_type {
        let into = total.by_type.entry(saga_type.clone()).or_default();
        for i in 0..6 {
            into.entered[i] += counters.entered[i];
        }
    }
    total.last_failed_at_ms = total.last_failed_at_ms.max(more.last_failed_at_ms);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registration_that_reached_one_partition_is_finished_in_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let count = settle(dir.path(), Some(3)).unwrap();
        let partitions = Partitions::open(dir.path(), Placement::single(count), |_| {
            EngineConfig::default()
        })
        .unwrap();
        let mut definition = crate::model::definition::builtin_order();
        definition.name = "half".into();
        for version in [1, 2] {
            definition.version = version;
            partitions
                .get(1)
                .unwrap()
                .register_definition(definition.clone())
                .await
                .unwrap();
        }
        let lacking = |p: u32| {
            !partitions
                .get(p)
                .unwrap()
                .definitions()
                .iter()
                .any(|d| d.name == "half" && d.version == 2)
        };
        assert!(lacking(0) && lacking(2) && !lacking(1));
        assert_eq!(partitions.align_definitions().await.unwrap(), 4);
        assert!((0..3).all(|p| !lacking(p)));
        assert_eq!(
            partitions.align_definitions().await.unwrap(),
            0,
            "nothing left to add"
        );
    }
}
