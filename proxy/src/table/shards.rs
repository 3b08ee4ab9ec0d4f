//! A hash map that a new table shares with the one before it: the entries are spread over
//! [`SHARDS`] small maps, each behind its own `Arc`, and changing an entry copies only its
//! shard. A table of 10,000 services changed in one service copies about 40 entries per index
//! instead of 10,000, and the tables in force and being built share every other shard.
//!
//! Lookups hash the key twice (once for the shard, once inside it) with foldhash, seeded per
//! process. Keys are the control plane's or the table file's (authorities, addresses, names);
//! a request only looks them up.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::{BuildHasher, Hash},
    sync::{Arc, LazyLock},
};

use foldhash::fast::RandomState;

/// Enough that a shard of a 10,000-service table holds about 40 entries.
pub const SHARDS: usize = 256;

/// The hasher that chooses a key's shard: one per process, so every map agrees.
static SHARD_HASH: LazyLock<RandomState> = LazyLock::new(RandomState::default);

type Shard<K, V> = HashMap<K, V, RandomState>;

pub struct ShardMap<K, V> {
    shards: Arc<[Arc<Shard<K, V>>]>,
}

impl<K, V> Clone for ShardMap<K, V> {
    fn clone(&self) -> Self {
        ShardMap {
            shards: self.shards.clone(),
        }
    }
}

impl<K, V> Default for ShardMap<K, V> {
    fn default() -> Self {
        ShardMap {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::default())).collect(),
        }
    }
}

impl<K: std::fmt::Debug, V> std::fmt::Debug for ShardMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardMap").finish_non_exhaustive()
    }
}

fn shard_of<Q: Hash + ?Sized>(k: &Q) -> usize {
    (SHARD_HASH.hash_one(k) >> 32) as usize % SHARDS
}

impl<K: Hash + Eq + Clone, V: Clone> ShardMap<K, V> {
    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(k)].get(k)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// The shard `k` belongs in, copied first if another map shares it.
    fn shard_mut<Q: Hash + ?Sized>(&mut self, k: &Q) -> &mut Shard<K, V> {
        let i = shard_of(k);
        if Arc::get_mut(&mut self.shards).is_none() {
            self.shards = self.shards.iter().cloned().collect();
        }
        let shards = Arc::get_mut(&mut self.shards).expect("just made unique");
        Arc::make_mut(&mut shards[i])
    }

    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.shard_mut(&k).insert(k, v)
    }

    pub fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // Nothing to copy for a key that is not there.
        self.get(k)?;
        self.shard_mut(k).remove(k)
    }

    /// Sets `k` to `f(old)`; `None` removes it.
    pub fn update(&mut self, k: K, f: impl FnOnce(Option<&V>) -> Option<V>) {
        match f(self.get(&k)) {
            Some(v) => {
                self.insert(k, v);
            }
            None => {
                self.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_copies_one_shard_and_shares_the_rest() {
        let mut a: ShardMap<u32, u32> = ShardMap::default();
        for i in 0..10_000 {
            a.insert(i, i);
        }
        let mut b = a.clone();
        b.insert(7, 70);
        b.remove(&8);
        b.remove(&123_456);
        assert_eq!((a.get(&7), b.get(&7)), (Some(&7), Some(&70)));
        assert_eq!((a.get(&8), b.get(&8)), (Some(&8), None));
        assert_eq!((a.iter().count(), b.iter().count()), (10_000, 9_999));
        let shared = a
            .shards
            .iter()
            .zip(b.shards.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        // 7 and 8 are in at most two shards.
        assert!(shared >= SHARDS - 2, "{shared} shards shared");
        assert_eq!(b.iter().count(), 9_999);
    }
}
