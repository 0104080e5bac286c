//! The outbound listener's stack: the local app's requests to other services. `stack` builds
//! it when a config is loaded: observe (metrics, rescue, access log) → router → per route:
//! rate limit → faults → response edits → action (redirect, direct response, or the backend
//! split) → per backend: circuit breaker → mirror → the forwarding path (`forward::path`:
//! preparation → tries → balancer → pooled client). Unmatched requests are rejected or passed
//! through to their own authority through the same forwarding layers.

use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::context::DownstreamUpgrade;
use http::{header, Method, Response};
use tower::{Service, ServiceBuilder};

use super::{
    forward::{self, Forward, ResponseEdits, ResponseEditsLayer},
    hygiene::{self, Hygiene, HygieneLayer},
    observe::{Observe, ObserveLayer, Observing},
};
use crate::{
    body::ProxyBody,
    cache::layer::{Cache, CacheLayer},
    context::{stack_service, BoxFuture, ConnMeta, Ctx, Req},
    error::ProxyError,
    headers,
    metrics::{AttemptResult, Direction, Metrics, RequestMetrics, UpstreamMetrics},
    resilience::{
        breaker::{BreakerLayer, CircuitBreaker},
        fault::{FaultLayer, InjectFaults},
        mirror::{Limiter, Mirror, MirrorLayer, Shadow},
        rate_limit::{RateLimit, RateLimitLayer},
        retry::{Retry, RetryLayer},
    },
    routing::{
        host_without_port, table::pick_weighted, ActionSpec, RequestView, Route, RouteTable,
        Unmatched,
    },
    upstream::{self, passthrough, Passthrough, PassthroughClient, Protocol},
};

/// Timeout for passed-through (unmatched) requests, like a route's default.
const PASSTHROUGH_TIMEOUT: Duration = Duration::from_secs(15);

/// The outbound listener's whole stack.
pub type OutboundStack = Observe<Hygiene<Router>>;
/// One route's stack.
type RouteStack = RateLimit<InjectFaults<ResponseEdits<Cache<Action>>>>;
/// One backend's stack under a route.
type BackendStack = CircuitBreaker<Mirror<Forward, Forward>>;
/// The passthrough stack.
type PassthroughStack = forward::Prepare<Retry<PassthroughClient>>;

/// Assembles the outbound stack for `table`, top to bottom. A route `previous` (the stack
/// in force before a reload) holds unchanged keeps its stack.
pub fn stack(
    table: Arc<RouteTable>,
    metrics: &Metrics,
    pools: &Arc<Passthrough>,
    observing: Observing,
    hygiene: hygiene::Rules,
    previous: Option<&OutboundStack>,
) -> OutboundStack {
    let previous = previous.map(|p| p.get_ref().get_ref());
    let d = Direction::Outbound;
    let rate_limited = metrics.rate_limited(d);
    let built: HashMap<*const Route, &RouteStack> = previous
        .map(|p| {
            let p = &*p.0;
            p.table
                .routes
                .iter()
                .map(Arc::as_ptr)
                .zip(&p.routes)
                .collect()
        })
        .unwrap_or_default();
    let routes = table
        .routes
        .iter()
        .map(|route| match built.get(&Arc::as_ptr(route)) {
            Some(kept) => (*kept).clone(),
            None => ServiceBuilder::new()
                .layer(RateLimitLayer::new(
                    route.limiter.clone(),
                    rate_limited.clone(),
                ))
                .layer(FaultLayer::new(
                    route.spec.fault.clone(),
                    route.faults.clone(),
                ))
                .layer(ResponseEditsLayer::new(route.spec.response_headers.clone()))
                .layer(CacheLayer::new(route.cache.clone()))
                .service(Action::of(route)),
        })
        .collect();
    let passthrough = forward::path(
        Protocol::Auto,
        forward::Peer::Server,
        None,
        Default::default(),
        RetryLayer::once(PASSTHROUGH_TIMEOUT),
        PassthroughClient::new(pools.clone(), metrics.upstream("passthrough")),
    );
    let router = Router(Arc::new(RouterInner {
        routes,
        unmatched: table.unmatched,
        passthrough,
        passthrough_name: Arc::from("passthrough"),
        passthrough_metrics: previous.map_or_else(
            || metrics.request(d, "", "passthrough"),
            |p| p.0.passthrough_metrics.clone(),
        ),
        passthrough_upstream: metrics.upstream("passthrough"),
        pools: pools.clone(),
        table,
    }));
    ServiceBuilder::new()
        .layer(ObserveLayer::new(
            metrics.request(d, "", ""),
            None,
            observing,
        ))
        .layer(HygieneLayer::new(hygiene))
        .service(router)
}

/// One backend of `route`: its breaker, the route's mirror, and the forwarding path with the
/// route's rewrite, request edits and retry policy.
fn backend(
    route: &Route,
    target: &crate::routing::Target,
    mirror: &MirrorLayer<Forward>,
) -> BackendStack {
    let service = &target.service;
    let tries = RetryLayer::new(
        route.spec.retry.clone(),
        route.spec.timeout,
        service.budget().clone(),
        target.retries.clone(),
    );
    ServiceBuilder::new()
        .layer(BreakerLayer::new(service.breaker().clone()))
        .layer(mirror.clone())
        .service(forward::to_service(
            service,
            route.spec.rewrite.clone(),
            route.spec.request_headers.clone(),
            tries,
        ))
}

/// Where `route`'s copies go, through the shadow service's own forwarding path.
fn shadow(route: &Route) -> MirrorLayer<Forward> {
    MirrorLayer::new(route.mirror.as_ref().zip(route.spec.mirror.as_ref()).map(
        |(target, policy)| Shadow {
            policy: policy.clone(),
            client: forward::to_service(
                &target.service,
                route.spec.rewrite.clone(),
                route.spec.request_headers.clone(),
                RetryLayer::once(route.spec.timeout),
            ),
            timeout: route.spec.timeout,
            limiter: Limiter::default(),
            sent: target.sent.clone(),
            failed: target.failed.clone(),
            dropped: target.dropped.clone(),
        },
    ))
}

// === impl Router ===

/// Matches a request against the routes and hands it to the route's stack; passes unmatched
/// requests through (or refuses them), and tunnels `CONNECT`.
#[derive(Debug, Clone)]
pub struct Router(Arc<RouterInner>);

#[derive(Debug)]
struct RouterInner {
    table: Arc<RouteTable>,
    /// One stack per route of `table`, in the same order.
    routes: Vec<RouteStack>,
    unmatched: Unmatched,
    passthrough: PassthroughStack,
    passthrough_name: Arc<str>,
    passthrough_metrics: RequestMetrics,
    passthrough_upstream: UpstreamMetrics,
    pools: Arc<Passthrough>,
}

impl Service<Req> for Router {
    stack_service!();

    fn call(&mut self, req: Req) -> BoxFuture {
        match self.route(req) {
            Ok(fut) => fut,
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

impl Router {
    fn route(&self, req: Req) -> Result<BoxFuture, ProxyError> {
        let r = &*self.0;
        let ctx = &req.ctx;
        if req.method() == Method::CONNECT {
            // A tunnel's contents are opaque to routes: only passthrough applies.
            self.passing_through(ctx)?;
            return Ok(Box::pin(connect_tunnel(self.0.clone(), req)));
        }
        let authority = headers::authority(req.uri(), req.headers());
        let view = RequestView {
            method: req.method(),
            host: authority.map(host_without_port),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        if let Some(i) = r.table.position(&view) {
            let route = &r.table.routes[i];
            ctx.set_route(&route.spec.name, &route.local_metrics);
            return Ok(r.routes[i].clone().call(req));
        }
        self.passing_through(ctx)?;
        let authority = authority.ok_or(ProxyError::NoRoute)?;
        if authority.parse::<http::uri::Authority>().is_err() {
            return Err(ProxyError::BadRequest("invalid host"));
        }
        if loops_back(authority, ctx.conn()) {
            return Err(ProxyError::Loop);
        }
        if passthrough::target(authority).is_none() {
            return Err(ProxyError::BadRequest("invalid port in authority"));
        }
        Ok(r.passthrough.clone().call(req))
    }

    /// Tags the request as passed through, or refuses it when unmatched requests are.
    fn passing_through(&self, ctx: &Ctx) -> Result<(), ProxyError> {
        let r = &*self.0;
        match r.unmatched {
            Unmatched::Reject => Err(ProxyError::NoRoute),
            Unmatched::Passthrough => {
                ctx.set_service(&r.passthrough_name, &r.passthrough_metrics);
                Ok(())
            }
        }
    }
}

/// Answers `CONNECT host:port` (HTTPS through Remora as an HTTP proxy): opens a TCP
/// connection to the authority, answers 200, and copies bytes both ways once the caller's
/// connection is handed over.
async fn connect_tunnel(r: Arc<RouterInner>, mut req: Req) -> crate::context::Result {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or(ProxyError::BadRequest("CONNECT needs host:port"))?;
    if loops_back(&authority, req.ctx.conn()) {
        return Err(ProxyError::Loop);
    }
    let target = passthrough::target(&authority)
        .ok_or(ProxyError::BadRequest("invalid port in authority"))?;
    let upstream = match upstream::connect(&target, r.pools.connect_timeout()).await {
        Ok(s) => s,
        Err(e) => {
            r.passthrough_upstream
                .attempt(AttemptResult::ConnectFailure);
            return Err(ProxyError::Connect {
                target: authority,
                source: Box::new(e),
            });
        }
    };
    r.passthrough_upstream.attempt(AttemptResult::Success);
    let Some(on_upgrade) = req.extensions_mut().remove::<DownstreamUpgrade>() else {
        return Err(ProxyError::BadRequest(
            "CONNECT without a connection to tunnel",
        ));
    };
    tokio::spawn(async move {
        match on_upgrade.ready().await {
            Ok(mut down) => {
                let mut up = upstream;
                if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    tracing::debug!(%authority, error = %e, "tunnel ended with an error");
                }
            }
            Err(e) => tracing::debug!(%authority, error = %e, "CONNECT upgrade failed"),
        }
    });
    Ok(Response::new(ProxyBody::empty()))
}

/// Whether `authority` names this listener itself (a request that would loop forever).
fn loops_back(authority: &str, conn: &ConnMeta) -> bool {
    let host = host_without_port(authority);
    let port = authority[host.len()..]
        .strip_prefix(':')
        .and_then(|p| p.parse().ok())
        .unwrap_or(80u16);
    if port != conn.local.port() {
        return false;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified() || ip == conn.local.ip())
}

// === impl Action ===

/// What a route does with a request that passed its policies.
#[derive(Debug, Clone)]
pub enum Action {
    /// Answer with the route's redirect or direct response.
    Answer(Arc<ActionSpec>),
    /// Forward to a backend chosen by weight.
    Forward(Split),
}

impl Action {
    /// The action of `route`, with a stack for each of its backends.
    fn of(route: &Route) -> Self {
        match &*route.spec.action {
            ActionSpec::Forward(_) => {
                let mirror = shadow(route);
                let backends = route
                    .targets
                    .iter()
                    .map(|t| Backend {
                        cumulative: t.cumulative,
                        name: t.service.name().clone(),
                        metrics: t.metrics.clone(),
                        stack: backend(route, t, &mirror),
                    })
                    .collect();
                Action::Forward(Split {
                    backends,
                    total: route.total_weight,
                })
            }
            _ => Action::Answer(route.spec.action.clone()),
        }
    }
}

impl Service<Req> for Action {
    stack_service!();

    fn call(&mut self, req: Req) -> BoxFuture {
        let resp = match self {
            Action::Forward(split) => return split.call(req),
            Action::Answer(spec) => match &**spec {
                ActionSpec::Redirect { status, location } => {
                    let mut resp = Response::new(ProxyBody::empty());
                    *resp.status_mut() = *status;
                    resp.headers_mut()
                        .insert(header::LOCATION, location.clone());
                    resp
                }
                ActionSpec::Direct {
                    status,
                    body,
                    content_type,
                } => {
                    let mut resp = Response::new(ProxyBody::full(body.clone()));
                    *resp.status_mut() = *status;
                    if let Some(ct) = content_type {
                        resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
                    }
                    resp
                }
                // `Action::of` makes forwarding routes `Forward`.
                ActionSpec::Forward(_) => {
                    return Box::pin(std::future::ready(Err(ProxyError::NoRoute)))
                }
            },
        };
        Box::pin(std::future::ready(Ok(resp)))
    }
}

/// Picks one of a route's backends by weight, once per request (retries stay with it).
#[derive(Debug, Clone)]
pub struct Split {
    backends: Arc<[Backend]>,
    total: u32,
}

#[derive(Debug)]
struct Backend {
    /// Upper bound (exclusive) of this backend's slice of `0..total`.
    cumulative: u32,
    name: Arc<str>,
    metrics: RequestMetrics,
    stack: BackendStack,
}

impl Split {
    /// A backend drawn by weight.
    fn pick(&self) -> Option<&Backend> {
        pick_weighted(&self.backends, self.total, |b| b.cumulative)
    }
}

impl Service<Req> for Split {
    stack_service!();

    fn call(&mut self, req: Req) -> BoxFuture {
        let Some(b) = self.pick() else {
            // Compiling refuses a forwarding route without a weighted backend.
            return Box::pin(std::future::ready(Err(ProxyError::NoRoute)));
        };
        req.ctx.set_service(&b.name, &b.metrics);
        b.stack.clone().call(req)
    }
}
