//! The upstream side: services (named sets of endpoints with a balancer), their discovery
//! (static or DNS), and each endpoint's connection pool.

pub mod client;
mod connector;
mod dns;
mod endpoint;
pub mod passthrough;
mod pool;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use http::HeaderMap;

pub use client::Balance;
pub use connector::{connect, ConnectError, Stream, Target};
pub use endpoint::Endpoint;
pub use passthrough::{Passthrough, PassthroughClient};
pub use pool::{Pool, PoolError};

use crate::{
    balance::{Balancer, EndpointSet, Policy},
    metrics::{Metrics, UpstreamMetrics},
    resilience::{
        breaker, health,
        outlier::{self, Detector},
        retry::{Budget, BudgetSpec},
        Breaker,
    },
    tls::{connect::Originator, SpiffeId, TlsContext},
};

/// The HTTP version a service is called with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (or ALPN `h2` over mTLS).
    Http2,
    /// The version the caller used.
    #[default]
    Auto,
}

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
    /// Retry budget.
    pub retry_budget: BudgetSpec,
    /// Active health checks, when on.
    pub health: Option<health::Check>,
    /// The SPIFFE ID to require of endpoints, called over mTLS; `None`: plaintext.
    pub tls: Option<SpiffeId>,
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
    endpoints: ArcSwap<EndpointSet<Endpoint>>,
    balancer: Balancer,
    metrics: UpstreamMetrics,
    breaker: Arc<Breaker>,
    outlier: Option<Detector>,
    budget: Arc<Budget>,
    /// Endpoints failing their health checks (the balancers' fast path).
    unhealthy: Arc<AtomicUsize>,
    /// Per-endpoint health gauges, when health checks are on.
    healthy_gauges: Option<prometheus::IntGaugeVec>,
    /// Per-endpoint ejection gauges, when outlier detection is on.
    ejected_gauges: Option<prometheus::IntGaugeVec>,
    /// mTLS origination, when the service has `tls`.
    tls: Option<Arc<Originator>>,
}

impl Service {
    /// Creates the service; a DNS service starts resolving in the background (so this must
    /// run inside the tokio runtime).
    pub fn new(
        name: &str,
        spec: ServiceSpec,
        metrics: &Metrics,
        tls: &Arc<TlsContext>,
    ) -> Arc<Self> {
        let svc = Arc::new(Self {
            tls: spec.tls.clone().map(|id| Originator::new(id, tls.clone())),
            name: Arc::from(name),
            metrics: metrics.upstream(name),
            breaker: Breaker::new(spec.breaker, metrics.breaker(name)),
            outlier: spec
                .outlier
                .map(|p| Detector::new(p, metrics.outlier_ejections(name))),
            ejected_gauges: spec.outlier.map(|_| metrics.endpoint_ejected()),
            budget: Arc::new(
                Budget::for_spec(spec.retry_budget).counting(metrics.budget_exhausted(name)),
            ),
            unhealthy: Arc::new(AtomicUsize::new(0)),
            healthy_gauges: spec.health.as_ref().map(|_| metrics.endpoint_healthy()),
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
        self.pick_avoiding(headers, &[])
    }

    /// Picks a healthy endpoint, preferring one that is not ejected and not in `avoid` (a
    /// retry's earlier tries); `None` when no endpoint is healthy (503
    /// `no-healthy-endpoints`). While every endpoint is in and nothing is avoided, this is
    /// the balancer's plain pick.
    pub fn pick_avoiding(
        &self,
        headers: &HeaderMap,
        avoid: &[SocketAddr],
    ) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        let ejecting = self.outlier.as_ref().filter(|d| d.any_ejected());
        let some_unhealthy = self.unhealthy.load(Ordering::Acquire) > 0;
        if avoid.is_empty() && ejecting.is_none() && !some_unhealthy {
            return self.balancer.pick(&set, headers).cloned();
        }
        let in_rotation = |ep: &Endpoint| {
            !ejecting.is_some_and(|d| ep.outlier().is_some_and(|s| d.is_ejected(s)))
        };
        self.balancer
            .pick_where(&set, headers, |ep| {
                ep.is_healthy() && in_rotation(ep) && !avoid.contains(&ep.addr())
            })
            .or_else(|| {
                self.balancer
                    .pick_where(&set, headers, |ep| ep.is_healthy() && in_rotation(ep))
            })
            // Outlier detection never empties a service: ejected but healthy beats nothing.
            .or_else(|| {
                self.balancer
                    .pick_where(&set, headers, Endpoint::is_healthy)
            })
            .cloned()
    }

    /// The mTLS originator, when the service is called over mTLS (`tls.identity`).
    pub fn originator(&self) -> Option<&Arc<Originator>> {
        self.tls.as_ref()
    }

    /// The service's retry budget.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
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
                    None => {
                        let labels = [self.name.as_ref(), &a.to_string()];
                        let ep = Endpoint::new(
                            *a,
                            self.spec.connect_timeout,
                            self.spec.idle_timeout,
                            Some(self.breaker.clone()),
                            self.ejected_gauges
                                .as_ref()
                                .map(|g| outlier::EndpointState::new(g.with_label_values(&labels))),
                            self.healthy_gauges.as_ref().map(|g| {
                                health::Health::new(
                                    g.with_label_values(&labels),
                                    self.unhealthy.clone(),
                                )
                            }),
                            self.tls.clone(),
                            self.spec.protocol == Protocol::Auto,
                        );
                        if let Some(check) = &self.spec.health {
                            tokio::spawn(check_health(
                                Arc::downgrade(&ep),
                                check.clone(),
                                self.name.clone(),
                                self.spec.protocol,
                            ));
                        }
                        ep
                    }
                },
            )
            .collect();
        self.endpoints
            .store(Arc::new(EndpointSet::new(eps, self.balancer.policy())));
        tracing::debug!(service = %self.name, endpoints = ?addrs, "endpoints updated");
    }
}

/// Checks `endpoint` every `check.interval` (plus jitter) until it is dropped.
///
/// Over HTTP/2 for `http2` services (which may speak nothing else), HTTP/1.1 otherwise.
async fn check_health(
    endpoint: Weak<Endpoint>,
    check: health::Check,
    service: Arc<str>,
    protocol: Protocol,
) {
    use http_body_util::BodyExt;
    loop {
        let jitter = check.interval.mul_f64(fastrand::f64() * 0.1);
        tokio::time::sleep(check.interval + jitter).await;
        let Some(ep) = endpoint.upgrade() else { return };
        let Some(state) = ep.health() else { return };
        let req = if protocol == Protocol::Http2 {
            http::Request::get(format!("http://{service}{}", check.path))
                .version(http::Version::HTTP_2)
                .header(http::header::USER_AGENT, "remora-health-check")
                .body(crate::body::ProxyBody::empty())
        } else {
            http::Request::get(check.path.as_str())
                .header(http::header::HOST, service.as_ref())
                .header(http::header::USER_AGENT, "remora-health-check")
                .body(crate::body::ProxyBody::empty())
        };
        let passed = match req {
            Ok(req) => {
                let exchange = async {
                    let (resp, lease) = ep.pool().send(req, None, &mut None).await.ok()?;
                    let ok = resp.status().is_success();
                    // Read the body so the connection goes back to the pool.
                    let body = crate::body::ProxyBody::upstream(resp.into_body(), lease);
                    body.collect().await.ok()?;
                    Some(ok)
                };
                matches!(
                    tokio::time::timeout(check.timeout, exchange).await,
                    Ok(Some(true))
                )
            }
            Err(_) => false,
        };
        match state.record(passed, &check) {
            Some(true) => {
                tracing::info!(service = %service, endpoint = %ep.addr(), "health checks pass; endpoint back in rotation")
            }
            Some(false) => {
                tracing::warn!(service = %service, endpoint = %ep.addr(), path = %check.path, "health checks fail; endpoint out of rotation")
            }
            None if !passed => {
                tracing::debug!(service = %service, endpoint = %ep.addr(), "health check failed")
            }
            None => {}
        }
    }
}
