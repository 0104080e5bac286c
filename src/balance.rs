//! Endpoint selection for a service: least-request (power of two choices), round robin,
//! random, and consistent hashing on a request header. Lock-free: a pick reads the current
//! endpoint set and at most one atomic counter.

mod ring_hash;

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use http::{header::HeaderName, HeaderMap};

pub use ring_hash::Ring;

use crate::upstream::Endpoint;

/// How a service picks an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Two random endpoints; the one with fewer requests in flight wins (P2C).
    LeastRequest,
    /// Each endpoint in turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// Consistent hash of this header's value; requests without it are spread at random.
    RingHash(HeaderName),
}

/// A policy with its state.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    next: AtomicUsize,
}

/// The endpoints a balancer chooses from, with the hash ring when the policy needs one.
#[derive(Debug, Default)]
pub struct EndpointSet {
    /// Endpoints in a stable order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Hash ring over `endpoints` (ring-hash policy only).
    pub ring: Option<Ring>,
}

impl EndpointSet {
    /// Builds the set, with a ring when `policy` hashes.
    pub fn new(endpoints: Vec<Arc<Endpoint>>, policy: &Policy) -> Self {
        let ring = matches!(policy, Policy::RingHash(_)).then(|| Ring::new(&endpoints));
        Self { endpoints, ring }
    }
}

impl Balancer {
    /// A balancer for `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            next: AtomicUsize::new(0),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Picks an endpoint from `set`; `None` when the set is empty.
    pub fn pick<'a>(&self, set: &'a EndpointSet, headers: &HeaderMap) -> Option<&'a Arc<Endpoint>> {
        let eps = &set.endpoints;
        let n = eps.len();
        if n <= 1 {
            return eps.first();
        }
        let i = match &self.policy {
            Policy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Policy::Random => fastrand::usize(0..n),
            Policy::LeastRequest => {
                let a = fastrand::usize(0..n);
                // A second, distinct choice.
                let b = (a + 1 + fastrand::usize(0..n - 1)) % n;
                if eps[b].in_flight() < eps[a].in_flight() {
                    b
                } else {
                    a
                }
            }
            Policy::RingHash(header) => match (headers.get(header), &set.ring) {
                (Some(value), Some(ring)) => ring.lookup(value.as_bytes()),
                _ => fastrand::usize(0..n),
            },
        };
        eps.get(i)
    }

    /// Picks an endpoint among those `eligible` accepts (healthy, not ejected, not tried yet),
    /// with the same policy; `None` when none is. Only used while some endpoint is out or a
    /// retry avoids one, so its allocation stays off the common path.
    pub fn pick_where<'a>(
        &self,
        set: &'a EndpointSet,
        headers: &HeaderMap,
        eligible: impl Fn(&Endpoint) -> bool,
    ) -> Option<&'a Arc<Endpoint>> {
        let ok: Vec<usize> = (0..set.endpoints.len())
            .filter(|i| eligible(&set.endpoints[*i]))
            .collect();
        if ok.is_empty() {
            return None;
        }
        let eps = &set.endpoints;
        let n = ok.len();
        let i = match &self.policy {
            Policy::RoundRobin => ok[self.next.fetch_add(1, Ordering::Relaxed) % n],
            Policy::Random => ok[fastrand::usize(0..n)],
            Policy::LeastRequest if n == 1 => ok[0],
            Policy::LeastRequest => {
                let ja = fastrand::usize(0..n);
                let jb = (ja + 1 + fastrand::usize(0..n - 1)) % n;
                let (a, b) = (ok[ja], ok[jb]);
                if eps[b].in_flight() < eps[a].in_flight() {
                    b
                } else {
                    a
                }
            }
            Policy::RingHash(header) => match (headers.get(header), &set.ring) {
                (Some(value), Some(ring)) => {
                    ring.lookup_where(value.as_bytes(), |i| ok.contains(&i))
                }
                _ => ok[fastrand::usize(0..n)],
            },
        };
        eps.get(i)
    }
}
