//! The upstream side: services (named sets of endpoints with a balancer), their discovery
//! (static or DNS), and each endpoint's connection pool.

mod connector;
mod dns;
mod endpoint;
pub mod passthrough;
mod pool;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use http::HeaderMap;

pub use connector::{connect, ConnectError, Target};
pub use endpoint::{Endpoint, InFlight};
pub use passthrough::Passthrough;
pub use pool::{Lease, Pool, PoolError};

use crate::{
    balance::{Balancer, EndpointSet, Policy},
    config::file::Protocol,
    metrics::{Metrics, UpstreamMetrics},
    resilience::{
        breaker,
        outlier::{self, Detector},
        retry::Budget,
        Breaker,
    },
};

/// A service's definition, compiled from the control file. Two equal specs describe the same
/// service, so its live state can be kept across reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Where the endpoints come from.
    pub discovery: Discovery,
    /// Upstream protocol.
    pub protocol: Protocol,
    /// Endpoint selection.
    pub policy: Policy,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Pooled connection idle timeout.
    pub idle_timeout: Duration,
    /// Circuit breaker limits.
    pub breaker: breaker::Limits,
    /// Outlier detection, when on.
    pub outlier: Option<outlier::Policy>,
    /// Retry budget: share of requests in per-mille, and the floor per second.
    pub retry_budget: (u32, u32),
}

/// Where a service's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// A fixed list.
    Static(Vec<SocketAddr>),
    /// A DNS name re-resolved periodically.
    Dns {
        /// Host name.
        host: String,
        /// Port for every resolved address.
        port: u16,
        /// Re-resolution period.
        refresh: Duration,
    },
}

/// A live service: its current endpoints and balancer.
#[derive(Debug)]
pub struct Service {
    name: Arc<str>,
    spec: ServiceSpec,
    endpoints: ArcSwap<EndpointSet>,
    balancer: Balancer,
    metrics: UpstreamMetrics,
    breaker: Arc<Breaker>,
    outlier: Option<Detector>,
    budget: Budget,
    budget_exhausted: prometheus::IntCounter,
    /// Per-endpoint ejection gauges, when outlier detection is on.
    ejected_gauges: Option<prometheus::IntGaugeVec>,
}

impl Service {
    /// Creates the service; a DNS service starts resolving in the background (so this must
    /// run inside the tokio runtime).
    pub fn new(name: &str, spec: ServiceSpec, metrics: &Metrics) -> Arc<Self> {
        let svc = Arc::new(Self {
            name: Arc::from(name),
            metrics: metrics.upstream(name),
            breaker: Breaker::new(spec.breaker, metrics.breaker(name)),
            outlier: spec
                .outlier
                .map(|p| Detector::new(p, metrics.outlier_ejections(name))),
            ejected_gauges: spec.outlier.map(|_| metrics.endpoint_ejected()),
            budget: Budget::new(f64::from(spec.retry_budget.0) / 1000.0, spec.retry_budget.1),
            budget_exhausted: metrics.budget_exhausted(name),
            balancer: Balancer::new(spec.policy.clone()),
            endpoints: ArcSwap::from_pointee(EndpointSet::default()),
            spec,
        });
        match &svc.spec.discovery {
            Discovery::Static(addrs) => svc.set_endpoints(addrs),
            Discovery::Dns {
                host,
                port,
                refresh,
            } => dns::spawn(&svc, host.clone(), *port, *refresh),
        }
        svc
    }

    /// The service's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The service's circuit breaker.
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// Upstream attempt counters.
    pub fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    /// The definition it was built from.
    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    /// Current endpoint addresses.
    pub fn endpoint_addrs(&self) -> Vec<SocketAddr> {
        self.endpoints
            .load()
            .endpoints
            .iter()
            .map(|e| e.addr())
            .collect()
    }

    /// Picks an endpoint for a request with these headers; `None` when there is none.
    pub fn pick(&self, headers: &HeaderMap) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        match &self.outlier {
            Some(d) if d.any_ejected() => self
                .balancer
                .pick_where(&set, headers, |ep| {
                    !ep.outlier().is_some_and(|s| d.is_ejected(s))
                })
                .cloned(),
            _ => self.balancer.pick(&set, headers).cloned(),
        }
    }

    /// Picks an endpoint other than those in `avoid` (a retry's earlier tries) when there is
    /// one.
    pub fn pick_avoiding(
        &self,
        headers: &HeaderMap,
        avoid: &[SocketAddr],
    ) -> Option<Arc<Endpoint>> {
        if avoid.is_empty() {
            return self.pick(headers);
        }
        let set = self.endpoints.load();
        let d = self.outlier.as_ref();
        self.balancer
            .pick_where(&set, headers, |ep| {
                !avoid.contains(&ep.addr())
                    && !d.is_some_and(|d| ep.outlier().is_some_and(|s| d.is_ejected(s)))
            })
            .cloned()
    }

    /// The service's retry budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Counts a retry the budget refused.
    pub fn budget_exhausted(&self) {
        self.budget_exhausted.inc();
    }

    /// Records a response of `endpoint` for outlier detection.
    pub fn observe(&self, endpoint: &Endpoint, success: bool) {
        if let (Some(d), Some(state)) = (&self.outlier, endpoint.outlier()) {
            let n = self.endpoints.load().endpoints.len();
            d.observe(state, success, n);
        }
    }

    /// Replaces the endpoint set, keeping the pools of endpoints that remain.
    pub fn set_endpoints(&self, addrs: &[SocketAddr]) {
        let current = self.endpoints.load();
        if current.endpoints.len() == addrs.len()
            && current
                .endpoints
                .iter()
                .zip(addrs)
                .all(|(e, a)| e.addr() == *a)
        {
            return;
        }
        let eps = addrs
            .iter()
            .map(
                |a| match current.endpoints.iter().find(|e| e.addr() == *a) {
                    Some(e) => e.clone(),
                    None => Endpoint::new(
                        *a,
                        self.spec.connect_timeout,
                        self.spec.idle_timeout,
                        Some(self.breaker.clone()),
                        self.ejected_gauges.as_ref().map(|g| {
                            outlier::EndpointState::new(
                                g.with_label_values(&[self.name.as_ref(), &a.to_string()]),
                            )
                        }),
                    ),
                },
            )
            .collect();
        self.endpoints
            .store(Arc::new(EndpointSet::new(eps, self.balancer.policy())));
        tracing::debug!(service = %self.name, endpoints = ?addrs, "endpoints updated");
    }
}
