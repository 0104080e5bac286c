//! One upstream endpoint: its address, its connection pool, and the count of requests in
//! flight that the least-request balancer reads.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use super::{connector::Target, pool::Pool};
use crate::{
    body::{Place, Release},
    resilience::{health::Health, outlier::EndpointState, Breaker},
    tls::connect::Originator,
};

/// An upstream endpoint with its connection pool.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    in_flight: AtomicUsize,
    pool: Pool,
    outlier: Option<EndpointState>,
    health: Option<Health>,
}

impl Endpoint {
    /// An endpoint at `addr`; connections are opened on demand.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        addr: SocketAddr,
        connect_timeout: Duration,
        idle_timeout: Duration,
        breaker: Option<Arc<Breaker>>,
        outlier: Option<EndpointState>,
        health: Option<Health>,
        tls: Option<Arc<Originator>>,
        negotiate: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            addr,
            outlier,
            health,
            in_flight: AtomicUsize::new(0),
            pool: Pool::new(
                Target::Addr(addr),
                connect_timeout,
                idle_timeout,
                breaker,
                tls,
                negotiate,
            ),
        })
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests in flight (from send until the response body ends).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the returned place is dropped.
    pub fn start(self: &Arc<Self>) -> Place {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Place::new(self.clone())
    }

    /// Whether active health checks (if any) let the endpoint take traffic.
    pub fn is_healthy(&self) -> bool {
        self.health.as_ref().is_none_or(Health::is_healthy)
    }

    /// Health check state, when the service has checks.
    pub fn health(&self) -> Option<&Health> {
        self.health.as_ref()
    }

    /// Outlier detection state, when the service has it on.
    pub fn outlier(&self) -> Option<&EndpointState> {
        self.outlier.as_ref()
    }

    /// The endpoint's connection pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl crate::balance::Member for Endpoint {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn in_flight(&self) -> usize {
        Endpoint::in_flight(self)
    }
}

/// A request in flight on this endpoint ends.
impl Release for Endpoint {
    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
