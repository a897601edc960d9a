//! FxHash, the multiply-rotate hasher rustc uses, for the job index's hash maps. Start-up inserts and
//! looks up hundreds of thousands of short keys (job ids, agent names, journal ids); SipHash's
//! DoS resistance buys nothing here because every key comes from our own state files.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let remainder = chunks.remainder();
        if !remainder.is_empty() {
            let mut word = [0u8; 8];
            word[..remainder.len()].copy_from_slice(remainder);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(crate) type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
pub(crate) type FxHashSet<T> = HashSet<T, BuildHasherDefault<FxHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_work_and_nearby_keys_spread() {
        let mut map: FxHashMap<String, usize> = FxHashMap::default();
        for n in 0..1000 {
            map.insert(format!("job-2025-01-01-{n:06}"), n);
        }
        assert_eq!(map.len(), 1000);
        assert_eq!(map["job-2025-01-01-000417"], 417);
        let top_bits: FxHashSet<u64> = (0..1000u64)
            .map(|n| {
                let mut hasher = FxHasher::default();
                hasher.write(format!("job-2025-01-01-{n:06}").as_bytes());
                hasher.finish() >> 57
            })
            .collect();
        assert!(
            top_bits.len() > 64,
            "control bytes must vary: {}",
            top_bits.len()
        );
    }
}
