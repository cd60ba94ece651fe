//! Record → partition, exactly as the Java client's built-in partitioner does it.
//!
//! A keyed record goes to `toPositive(murmur2(key)) % partitions`, so that records
//! with the same key land on the same partition whether they were produced by us,
//! the Java client, or librdkafka's `murmur2_random`. Keyless records stick to one
//! partition until a batch worth of bytes went there, then move on (KIP-480/794's
//! "uniform sticky" idea): big batches, yet an even spread over time.

use std::collections::HashMap;

use parking_lot::Mutex;

/// Kafka's `Utils.murmur2`: `MurmurHash2`, 32-bit, seed `0x9747b28c`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);

    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client picks for `key` among `partitions` partitions.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Chooses partitions for keyless records: sticky per topic, rotating after
/// `switch_bytes` bytes.
#[derive(Debug)]
pub(crate) struct StickyPartitioner {
    switch_bytes: usize,
    topics: Mutex<HashMap<String, Sticky>>,
}

#[derive(Debug, Clone, Copy)]
struct Sticky {
    partition: i32,
    bytes: usize,
}

impl StickyPartitioner {
    pub(crate) fn new(switch_bytes: usize) -> Self {
        Self {
            switch_bytes: switch_bytes.max(1),
            topics: Mutex::new(HashMap::new()),
        }
    }

    /// The partition for a keyless record of `size` bytes.
    pub(crate) fn partition(&self, topic: &str, partitions: i32, size: usize) -> i32 {
        let mut topics = self.topics.lock();
        let state = if let Some(s) = topics.get_mut(topic) {
            s
        } else {
            // Start each topic somewhere different so that many producers do not
            // all pile onto partition 0 first.
            let start = (uuid::Uuid::new_v4().as_u64_pair().0 % partitions as u64) as i32;
            topics.entry(topic.to_owned()).or_insert(Sticky {
                partition: start,
                bytes: 0,
            })
        };
        if state.partition >= partitions {
            state.partition %= partitions;
        }
        if state.bytes >= self.switch_bytes {
            state.partition = (state.partition + 1) % partitions;
            state.bytes = 0;
        }
        state.bytes += size;
        state.partition
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `org.apache.kafka.common.utils.UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_the_java_client() {
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
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key),
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn keyed_partition_is_positive_and_stable() {
        // toPositive(-973932308) % 6 = 1173551340 % 6 = 0
        assert_eq!(partition_for_key(b"21", 6), 1_173_551_340 % 6);
        for p in 1..50 {
            let got = partition_for_key(b"foobar", p);
            assert!((0..p).contains(&got));
            assert_eq!(got, partition_for_key(b"foobar", p));
        }
    }

    #[test]
    fn sticky_rotates_after_switch_bytes() {
        let sticky = StickyPartitioner::new(100);
        let first = sticky.partition("t", 3, 60);
        assert_eq!(sticky.partition("t", 3, 60), first, "still under 100 bytes");
        let second = sticky.partition("t", 3, 60);
        assert_eq!(second, (first + 1) % 3);
        // Over many records every partition gets its share.
        let mut seen = [0usize; 3];
        for _ in 0..300 {
            seen[sticky.partition("t", 3, 50) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n >= 90), "uneven spread: {seen:?}");
    }

    #[test]
    fn sticky_follows_a_shrinking_partition_count() {
        let sticky = StickyPartitioner::new(1_000);
        sticky.partition("t", 8, 1);
        assert!(sticky.partition("t", 2, 1) < 2);
    }
}
