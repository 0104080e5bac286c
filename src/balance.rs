//! Endpoint selection for a service: least-request (power of two choices), round robin,
//! random, and consistent hashing on a request header. Lock-free: a pick reads the current
//! endpoint set and at most one atomic counter.

mod ring_hash;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use http::{header::HeaderName, HeaderMap};

pub use ring_hash::Ring;

/// What a balancer needs to know of an endpoint (the client side's `Endpoint`).
pub trait Member {
    /// Its address, which places it on the hash ring.
    fn addr(&self) -> SocketAddr;
    /// Requests in flight to it, which the least-request policy compares.
    fn in_flight(&self) -> usize;
}

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
#[derive(Debug)]
pub struct EndpointSet<E> {
    /// Endpoints in a stable order.
    pub endpoints: Vec<Arc<E>>,
    /// Hash ring over `endpoints` (ring-hash policy only).
    pub ring: Option<Ring>,
}

impl<E> Default for EndpointSet<E> {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            ring: None,
        }
    }
}

impl<E: Member> EndpointSet<E> {
    /// Builds the set, with a ring when `policy` hashes.
    pub fn new(endpoints: Vec<Arc<E>>, policy: &Policy) -> Self {
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
    pub fn pick<'a, E: Member>(
        &self,
        set: &'a EndpointSet<E>,
        headers: &HeaderMap,
    ) -> Option<&'a Arc<E>> {
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
    pub fn pick_where<'a, E: Member>(
        &self,
        set: &'a EndpointSet<E>,
        headers: &HeaderMap,
        eligible: impl Fn(&E) -> bool,
    ) -> Option<&'a Arc<E>> {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use http::HeaderValue;

    use super::*;

    /// An endpoint as the balancer sees it.
    #[derive(Debug)]
    struct Ep {
        addr: SocketAddr,
        in_flight: AtomicUsize,
    }

    impl Member for Ep {
        fn addr(&self) -> SocketAddr {
            self.addr
        }
        fn in_flight(&self) -> usize {
            self.in_flight.load(Ordering::Relaxed)
        }
    }

    fn set(n: u8, policy: &Policy) -> EndpointSet<Ep> {
        let eps = (1..=n)
            .map(|i| {
                Arc::new(Ep {
                    addr: SocketAddr::from(([10, 0, 0, i], 80)),
                    in_flight: AtomicUsize::new(0),
                })
            })
            .collect();
        EndpointSet::new(eps, policy)
    }

    fn tally(
        b: &Balancer,
        s: &EndpointSet<Ep>,
        h: &HeaderMap,
        n: usize,
    ) -> HashMap<SocketAddr, usize> {
        let mut t = HashMap::new();
        for _ in 0..n {
            *t.entry(b.pick(s, h).unwrap().addr()).or_default() += 1;
        }
        t
    }

    #[test]
    fn round_robin_takes_each_in_turn() {
        let b = Balancer::new(Policy::RoundRobin);
        let s = set(3, b.policy());
        let picks: Vec<_> = (0..6)
            .map(|_| b.pick(&s, &HeaderMap::new()).unwrap().addr())
            .collect();
        assert_eq!(picks[..3], picks[3..]);
        assert_eq!(
            tally(&b, &s, &HeaderMap::new(), 300)
                .values()
                .copied()
                .collect::<Vec<_>>(),
            [100; 3]
        );
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let b = Balancer::new(Policy::LeastRequest);
        let s = set(2, b.policy());
        let busy = s.endpoints[0].clone();
        busy.in_flight.store(5, Ordering::Relaxed);
        // With two endpoints both are always compared: the idle one wins every time.
        let t = tally(&b, &s, &HeaderMap::new(), 200);
        assert_eq!(t.get(&busy.addr()), None, "{t:?}");
    }

    #[test]
    fn ring_hash_keeps_a_key_on_one_endpoint_and_spreads_keys() {
        let policy = Policy::RingHash(HeaderName::from_static("x-user"));
        let b = Balancer::new(policy);
        let s = set(5, b.policy());
        let mut owners = HashMap::new();
        for user in 0..200 {
            let mut h = HeaderMap::new();
            h.insert("x-user", HeaderValue::from(user));
            let t = tally(&b, &s, &h, 10);
            assert_eq!(t.len(), 1, "user {user} always lands on one endpoint");
            *owners.entry(*t.keys().next().unwrap()).or_insert(0) += 1;
        }
        assert_eq!(
            owners.len(),
            5,
            "keys spread over every endpoint: {owners:?}"
        );
    }

    #[test]
    fn pick_where_honours_eligibility_under_every_policy() {
        for policy in [
            Policy::RoundRobin,
            Policy::Random,
            Policy::LeastRequest,
            Policy::RingHash(HeaderName::from_static("x-user")),
        ] {
            let b = Balancer::new(policy);
            let s = set(4, b.policy());
            let only = s.endpoints[2].addr();
            let mut h = HeaderMap::new();
            h.insert("x-user", HeaderValue::from_static("u1"));
            for _ in 0..50 {
                let got = b.pick_where(&s, &h, |e| e.addr() == only).unwrap().addr();
                assert_eq!(got, only, "{:?}", b.policy());
            }
            assert!(b.pick_where(&s, &h, |_| false).is_none());
        }
        let b = Balancer::new(Policy::Random);
        assert!(b
            .pick(&EndpointSet::<Ep>::default(), &HeaderMap::new())
            .is_none());
    }
}
