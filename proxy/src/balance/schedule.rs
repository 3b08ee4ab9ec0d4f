//! The orders and rings balancers pick from: smooth weighted round robin (nginx's, or
//! earliest-deadline-first for many endpoints), and the consistent-hash ring.

/// Up to this many endpoints the schedule is nginx's smooth weighted round robin (O(n) a
/// slot); beyond, earliest-deadline-first over a heap (O(log n) a slot).
use super::{RING_MAX_POINTS, RING_POINTS_PER_WEIGHT, SCHEDULE_MAX};

const SMOOTH_EXACT_MAX: usize = 64;

/// Smooth weighted round robin (as nginx's): the order in which each of `weights`' indexes
/// comes up, spread evenly, over one period of the weights' sum (weights scaled down to
/// [`SCHEDULE_MAX`] first, each keeping at least one slot). With more than
/// [`SMOOTH_EXACT_MAX`] endpoints each slot goes to the endpoint whose next turn is due first
/// (turn `k` of an endpoint of weight `w` is due at `(k + ½) / w` of the period), which spreads
/// them as evenly, in O(n log n).
pub(super) fn smooth_schedule(weights: &[u64]) -> Box<[u32]> {
    if weights.is_empty() {
        return Box::new([]);
    }
    let gcd = weights.iter().copied().fold(0, gcd);
    let mut w: Vec<u64> = weights.iter().map(|x| x / gcd.max(1)).collect();
    let total: u64 = w.iter().fold(0u64, |a, x| a.saturating_add(*x));
    // Room for every endpoint's share: four slots an endpoint, at least SCHEDULE_MAX.
    let cap = SCHEDULE_MAX.max(4 * w.len() as u64);
    if total > cap {
        for x in &mut w {
            *x = ((u128::from(*x) * u128::from(cap) / u128::from(total)) as u64).max(1);
        }
    }
    if w.len() > SMOOTH_EXACT_MAX {
        return earliest_deadline_first(&w);
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, x) in current.iter_mut().zip(&w) {
            *c += *x as i64;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .expect("not empty");
        current[best] -= total;
        out.push(best as u32);
    }
    out.into()
}

/// One period of turns, each to the endpoint whose next turn is due first (ties: the lower
/// index).
pub(super) fn earliest_deadline_first(w: &[u64]) -> Box<[u32]> {
    use std::{cmp::Reverse, collections::BinaryHeap};
    // Turn k of endpoint i is due at (2k + 1) / (2 w_i), compared exactly as fractions.
    #[derive(PartialEq, Eq)]
    struct Due {
        num: u64,
        den: u64,
        i: u32,
    }
    impl Ord for Due {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (u128::from(self.num) * u128::from(o.den))
                .cmp(&(u128::from(o.num) * u128::from(self.den)))
                .then(self.i.cmp(&o.i))
        }
    }
    impl PartialOrd for Due {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    let total: u64 = w.iter().sum();
    let mut heap: BinaryHeap<Reverse<Due>> = w
        .iter()
        .enumerate()
        .map(|(i, x)| {
            Reverse(Due {
                num: 1,
                den: 2 * x,
                i: i as u32,
            })
        })
        .collect();
    let mut out = Vec::with_capacity(total as usize);
    while let Some(Reverse(mut d)) = heap.pop() {
        out.push(d.i);
        if out.len() as u64 == total {
            break;
        }
        d.num += 2;
        if d.num < d.den {
            heap.push(Reverse(d));
        }
    }
    out.into()
}

pub(super) fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A 64-bit hash with good spread and no per-process seed: every proxy builds the same ring
/// and maps a key to the same point (FNV-1a, then MurmurHash3's finaliser).
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The ring: each endpoint gets points in proportion to its weight, at hashes of its key
/// (its address) and the point's number. [`RING_POINTS_PER_WEIGHT`] points per unit of the
/// smallest weight, scaled down so the ring holds at most [`RING_MAX_POINTS`] (as Envoy's
/// `maximum_ring_size`), every weighted endpoint keeping at least one; built in
/// O(points log points), whatever the weights.
pub(super) fn ring(weights: &[u64], keys: &[String]) -> Box<[(u64, u32)]> {
    let Some(min) = weights.iter().copied().filter(|w| *w > 0).min() else {
        return Box::new([]);
    };
    let units = weights
        .iter()
        .map(|w| w.div_ceil(min))
        .fold(0u64, u64::saturating_add);
    let size = units
        .saturating_mul(RING_POINTS_PER_WEIGHT)
        .min(RING_MAX_POINTS) as f64;
    let total: f64 = weights.iter().map(|w| *w as f64).sum();
    let mut ring = Vec::with_capacity(size as usize + weights.len());
    for (i, (w, key)) in weights.iter().zip(keys).enumerate() {
        let points = match *w {
            0 => 0,
            w => ((w as f64 / total * size) as u64).max(1),
        };
        for p in 0..points {
            ring.push((hash64(format!("{key}#{p}").as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring.into()
}

pub(super) fn ring_lookup(ring: &[(u64, u32)], h: u64) -> Option<usize> {
    if ring.is_empty() {
        return None;
    }
    let i = ring.partition_point(|(p, _)| *p < h);
    Some(ring[i % ring.len()].1 as usize)
}
