//! Consistent hashing (a Ketama-style ring): each endpoint owns many points on a 64-bit ring,
//! and a key goes to the first point at or after its hash. Adding or removing one endpoint
//! moves only about 1/N of the keys.

use std::sync::Arc;

use super::Member;

/// Points per endpoint: enough for an even spread over a few endpoints, small enough to
/// rebuild quickly when endpoints change.
const POINTS_PER_ENDPOINT: usize = 160;

/// A sorted ring of `(hash, endpoint index)`.
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// Builds the ring; points depend only on endpoint addresses, so every sidecar with the
    /// same endpoints sends the same key to the same endpoint.
    pub fn new<E: Member>(endpoints: &[Arc<E>]) -> Self {
        let mut points = Vec::with_capacity(endpoints.len() * POINTS_PER_ENDPOINT);
        for (i, ep) in endpoints.iter().enumerate() {
            let addr = ep.addr().to_string();
            for p in 0..POINTS_PER_ENDPOINT {
                points.push((hash(format!("{addr}-{p}").as_bytes()), i));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The first endpoint at or after `key`'s point that `ok` accepts (walking the ring, so
    /// a skipped endpoint's keys spread over the others).
    pub fn lookup_where(&self, key: &[u8], ok: impl Fn(usize) -> bool) -> usize {
        let h = hash(key);
        let at = self.points.partition_point(|(p, _)| *p < h);
        let n = self.points.len();
        (0..n)
            .map(|k| self.points[(at + k) % n].1)
            .find(|i| ok(*i))
            .unwrap_or_else(|| self.lookup(key))
    }

    /// The index of the endpoint that owns `key`.
    pub fn lookup(&self, key: &[u8]) -> usize {
        let h = hash(key);
        let at = self.points.partition_point(|(p, _)| *p < h);
        self.points
            .get(at)
            .or(self.points.first())
            .map_or(0, |(_, i)| *i)
    }
}

/// FNV-1a followed by a 64-bit finalizer (splitmix64) so that similar keys spread well.
/// Stable across processes and versions, unlike `std`'s hasher.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
