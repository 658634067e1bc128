//! Where a saga lives: the one answer to "which partition, which pod, is it mine".
//!
//! - A saga belongs to partition `murmur2(saga_id) % P` ([`partition_of`]), Kafka's
//!   default partitioner as the Java client computes it: a reply produced with key =
//!   saga id lands on the matching partition of a reply topic with `P` partitions.
//! - [`PartitionOf`] is one partition's identity (which of how many), as its engine
//!   checks the ids it is handed and makes fresh ones.
//! - [`Placement`] is the deployment seen from one pod: `P` partitions over `R` pods,
//!   partition `p` on pod `p % R`. Every adapter (the HTTP forwarding, the reply
//!   consumer, the start-up, the load generator) asks it rather than working the rule
//!   out itself, so that ownership can change behind it in one place.

use crate::error::{EngineError, Result};

/// Most partitions a deployment may have (their directories are named by 4 digits).
pub const MAX_PARTITIONS: u32 = 1024;
/// Most pods a deployment may have.
pub const MAX_NODES: u32 = 1024;
/// Most ids tried for a fresh saga of one partition: each lands in it with chance
/// `1/P`, so missing `64 × P` times in a row does not happen.
const FRESH_ID_TRIES_PER_PARTITION: u32 = 64;

/// Kafka's default partition of `key` among `count` (`(murmur2 & 0x7fffffff) % count`,
/// over the UTF-8 bytes); a count of 0 counts as 1.
pub fn kafka_partition(key: &str, count: u32) -> u32 {
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % count.max(1)
}

/// The partition of `saga_id` among `count`.
pub fn partition_of(saga_id: &str, count: u32) -> u32 {
    kafka_partition(saga_id, count)
}

/// MurmurHash2 as Kafka's clients compute it (seed `0x9747b28c`), as an unsigned word.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, &b) in rest.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// Which partition of how many an engine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOf {
    pub index: u32,
    pub count: u32,
}

impl PartitionOf {
    /// The only partition of a deployment that has one.
    pub const SOLE: PartitionOf = PartitionOf { index: 0, count: 1 };

    /// Whether it is a partition that can exist (`index < count <= MAX_PARTITIONS`).
    pub fn is_valid(&self) -> bool {
        (1..=MAX_PARTITIONS).contains(&self.count) && self.index < self.count
    }

    /// Refuses an id of another partition (a routing mistake must not split a saga).
    pub fn check(&self, saga_id: &str) -> Result<()> {
        let belongs = partition_of(saga_id, self.count);
        if belongs == self.index {
            return Ok(());
        }
        Err(EngineError::WrongPartition {
            saga_id: saga_id.to_string(),
            belongs,
            partition: self.index,
            count: self.count,
        })
    }

    /// A new random id that belongs to this partition.
    pub fn fresh_id(&self, mut random: impl FnMut() -> uuid::Uuid) -> String {
        let tries = FRESH_ID_TRIES_PER_PARTITION * self.count;
        for _ in 0..tries {
            let id = random().to_string();
            if partition_of(&id, self.count) == self.index {
                return id;
            }
        }
        // Past any real chance; still an id of this partition, and still unique.
        let mut n = 0u64;
        loop {
            let id = format!("{}-{n}", random());
            if partition_of(&id, self.count) == self.index {
                return id;
            }
            n += 1;
        }
    }
}

/// A deployment's partitions over its pods, seen from one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    partitions: u32,
    nodes: u32,
    node: u32,
}

impl Placement {
    /// `partitions` over `nodes` pods, seen from pod `node`; refused unless every pod
    /// holds a partition.
    pub fn new(partitions: u32, nodes: u32, node: u32) -> Result<Placement> {
        let refuse = |why: String| Err(EngineError::Partitions(why));
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return refuse(format!(
                "{partitions} partitions: the count must be in 1..={MAX_PARTITIONS}"
            ));
        }
        if !(1..=MAX_NODES).contains(&nodes) {
            return refuse(format!(
                "{nodes} nodes: the count must be in 1..={MAX_NODES}"
            ));
        }
        if node >= nodes {
            return refuse(format!(
                "node {node} is not a node of {nodes} (0 to {})",
                nodes - 1
            ));
        }
        if nodes > partitions {
            return refuse(format!(
                "{nodes} nodes are more than the {partitions} partitions: every node must hold one"
            ));
        }
        Ok(Placement {
            partitions,
            nodes,
            node,
        })
    }

    /// One pod holding every one of `partitions` (in 1..=[`MAX_PARTITIONS`]).
    pub fn single(partitions: u32) -> Placement {
        Placement::new(partitions, 1, 0).expect("a partition count in range")
    }

    /// `P`: the deployment's partitions, held here or not.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// `R`: the deployment's pods.
    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// This pod's ordinal.
    pub fn node(&self) -> u32 {
        self.node
    }

    /// The partition `saga_id` belongs to.
    pub fn partition_of(&self, saga_id: &str) -> u32 {
        partition_of(saga_id, self.partitions)
    }

    /// Partition `p`'s identity.
    pub fn identity(&self, p: u32) -> PartitionOf {
        debug_assert!(p < self.partitions);
        PartitionOf {
            index: p,
            count: self.partitions,
        }
    }

    /// The pod that holds partition `p`.
    pub fn node_of(&self, p: u32) -> u32 {
        p % self.nodes
    }

    /// The pod that holds `saga_id`.
    pub fn node_of_saga(&self, saga_id: &str) -> u32 {
        self.node_of(self.partition_of(saga_id))
    }

    /// Whether this pod holds partition `p`.
    pub fn holds(&self, p: u32) -> bool {
        self.node_of(p) == self.node
    }

    /// The partitions pod `node` holds, ascending.
    pub fn held_by(&self, node: u32) -> impl Iterator<Item = u32> {
        let nodes = self.nodes;
        (0..self.partitions).filter(move |p| p % nodes == node)
    }

    /// The partitions this pod holds, ascending.
    pub fn local(&self) -> impl Iterator<Item = u32> {
        self.held_by(self.node)
    }

    /// Every other pod, ascending.
    pub fn peers(&self) -> impl Iterator<Item = u32> {
        let node = self.node;
        (0..self.nodes).filter(move |&n| n != node)
    }

    /// Of a reply topic with `count` partitions, those this pod reads: a reply keyed by
    /// its saga id lands on the saga's partition number when the topic has `P`
    /// partitions, so each is read by the pod that holds that partition (with another
    /// count, by the same rule on the topic's numbers; a reply this pod does not hold
    /// is then forwarded).
    pub fn reply_partitions(&self, count: u32) -> impl Iterator<Item = u32> {
        let (nodes, node) = (self.nodes, self.node);
        (0..count).filter(move |k| k % nodes == node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_kafkas() {
        // The values Kafka's own clients compute (its `Utils.murmur2` test cases).
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (data, want) in cases {
            assert_eq!(
                murmur2(data) as i32,
                want,
                "{:?}",
                std::str::from_utf8(data)
            );
        }
    }

    #[test]
    fn partitions_follow_kafkas_murmur2_partitioner() {
        // What the Java client's `Utils.toPositive(Utils.murmur2(key)) % n` gives: its
        // murmur2 test values, made positive, modulo the partition count.
        let cases: [(&str, i32); 4] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("abc", 479_470_107),
        ];
        for (id, hash) in cases {
            for count in [1u32, 2, 3, 4, 6, 7, 12, 1024] {
                let want = ((hash & 0x7fff_ffff) as u32) % count;
                assert_eq!(partition_of(id, count), want, "{id} of {count}");
            }
        }
    }

    #[test]
    fn fresh_ids_land_in_their_partition_and_foreign_ids_are_refused() {
        let mut n = 0u128;
        let mut random = || {
            n += 1;
            uuid::Uuid::from_u128(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
        };
        for index in 0..6 {
            let partition = PartitionOf { index, count: 6 };
            for _ in 0..50 {
                let id = partition.fresh_id(&mut random);
                assert_eq!(partition_of(&id, 6), index);
                assert!(partition.check(&id).is_ok());
                let other = PartitionOf {
                    index: (index + 1) % 6,
                    count: 6,
                };
                assert!(matches!(
                    other.check(&id),
                    Err(EngineError::WrongPartition { belongs, .. }) if belongs == index
                ));
            }
        }
    }

    #[test]
    fn every_partition_has_one_pod_and_every_pod_a_partition() {
        for (partitions, nodes) in [(1, 1), (4, 1), (4, 3), (7, 7), (12, 5)] {
            let pods: Vec<Placement> = (0..nodes)
                .map(|n| Placement::new(partitions, nodes, n).unwrap())
                .collect();
            for p in 0..partitions {
                let holders: Vec<u32> = pods
                    .iter()
                    .filter(|pod| pod.holds(p))
                    .map(|pod| pod.node())
                    .collect();
                assert_eq!(
                    holders.len(),
                    1,
                    "partition {p} of {partitions} over {nodes}"
                );
                assert!(pods.iter().all(|pod| pod.node_of(p) == holders[0]));
            }
            for pod in &pods {
                let local: Vec<u32> = pod.local().collect();
                assert!(!local.is_empty(), "pod {} of {nodes}", pod.node());
                assert_eq!(local, pod.held_by(pod.node()).collect::<Vec<_>>());
                assert!(local.iter().all(|&p| pod.holds(p)));
                let peers: Vec<u32> = pod.peers().collect();
                assert_eq!(peers.len() as u32, nodes - 1);
                assert!(!peers.contains(&pod.node()));
            }
        }
    }

    #[test]
    fn a_saga_is_held_where_its_partition_is_and_its_replies_are_read_there() {
        let pods: Vec<Placement> = (0..3).map(|n| Placement::new(6, 3, n).unwrap()).collect();
        for i in 0..300 {
            let id = format!("order-{i}");
            let p = partition_of(&id, 6);
            assert!(pods.iter().all(|pod| pod.partition_of(&id) == p));
            let holder = pods[0].node_of_saga(&id);
            assert!(pods[holder as usize].holds(p));
            // A reply keyed by the id, on a reply topic of P partitions, lands on p.
            let readers: Vec<u32> = pods
                .iter()
                .filter(|pod| {
                    pod.reply_partitions(6)
                        .any(|k| k == kafka_partition(&id, 6))
                })
                .map(|pod| pod.node())
                .collect();
            assert_eq!(readers, [holder], "{id}");
        }
    }

    #[test]
    fn a_placement_that_cannot_exist_is_refused_saying_why() {
        let why = |p, r, n| Placement::new(p, r, n).unwrap_err().to_string();
        assert!(
            why(3, 4, 0).contains("every node must hold one"),
            "{}",
            why(3, 4, 0)
        );
        assert!(
            why(4, 2, 2).contains("node 2 is not a node of 2"),
            "{}",
            why(4, 2, 2)
        );
        assert!(why(0, 1, 0).contains("1..=1024"), "{}", why(0, 1, 0));
        assert!(why(2000, 1, 0).contains("1..=1024"), "{}", why(2000, 1, 0));
        assert!(why(4, 0, 0).contains("nodes"), "{}", why(4, 0, 0));
    }
}
