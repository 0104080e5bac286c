//! The outbound listener's handler: the local app's requests to other services. Matches the
//! route table, then redirects, answers directly, or forwards to a backend service chosen by
//! weight; unmatched requests are rejected or passed through to their own authority.

use std::{sync::Arc, time::Duration};

use http::{header, Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::time::Instant;

use super::{
    error::ProxyError, finish, forward, headers, mirroring, retrying, unconfigured, AccessLine,
    ConnMeta, Tags,
};
use crate::{
    body::ProxyBody,
    config::file::{Protocol, Unmatched},
    metrics::{AttemptResult, RequestMetrics, UpstreamMetrics},
    resilience::deadline,
    routing::{host_without_port, ActionSpec, RequestView, RouteTable},
    runtime::Runtime,
    upstream::{self, passthrough, Passthrough},
};

/// The outbound side of a config snapshot.
#[derive(Debug)]
pub struct Outbound {
    /// Routes.
    pub table: RouteTable,
    /// Metrics for requests no route took.
    pub unmatched_metrics: RequestMetrics,
    /// Metrics for passed-through requests.
    pub passthrough_metrics: RequestMetrics,
    /// Attempt counters for passed-through requests.
    pub passthrough_upstream: UpstreamMetrics,
    /// Timeout for passed-through requests.
    pub passthrough_timeout: Duration,
    /// Requests refused by route rate limits.
    pub rate_limited: IntCounter,
}

/// Handles one request on the outbound listener.
pub async fn handle(
    rt: Arc<Runtime>,
    conn: ConnMeta,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let snap = rt.snapshot();
    let access = snap.access_log.then(|| AccessLine::capture(&req));
    let Some(ob) = snap.outbound.as_ref() else {
        return unconfigured(&rt, &conn, started, access);
    };
    let mut tags = Tags::default();
    let result = route(&rt, ob, &conn, req, &mut tags).await;
    finish(&conn, started, tags, &ob.unmatched_metrics, result, access)
}

async fn route<'a>(
    rt: &Runtime,
    ob: &'a Outbound,
    conn: &ConnMeta,
    req: Request<Incoming>,
    tags: &mut Tags<'a>,
) -> Result<Response<ProxyBody>, ProxyError> {
    headers::check_framing(req.headers())?;
    if req.method() == Method::CONNECT {
        // A tunnel's contents are opaque to routes: only passthrough applies.
        return match ob.table.unmatched {
            Unmatched::Reject => Err(ProxyError::NoRoute),
            Unmatched::Passthrough => {
                tags.metrics = Some(&ob.passthrough_metrics);
                tags.service = "passthrough";
                connect_tunnel(rt.passthrough(), ob, conn, req).await
            }
        };
    }
    let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    let view = RequestView {
        method: req.method(),
        host: authority.map(host_without_port),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let Some(route) = ob.table.find(&view) else {
        return match ob.table.unmatched {
            Unmatched::Reject => Err(ProxyError::NoRoute),
            Unmatched::Passthrough => {
                tags.metrics = Some(&ob.passthrough_metrics);
                tags.service = "passthrough";
                passthrough(rt.passthrough(), ob, conn, req).await
            }
        };
    };
    tags.route = &route.spec.name;
    tags.metrics = Some(&route.local_metrics);
    if let Some(limiter) = &route.limiter {
        limiter.try_acquire().map_err(|wait| {
            ob.rate_limited.inc();
            ProxyError::RateLimited(wait)
        })?;
    }
    if let Some(fault) = &route.spec.fault {
        let decision = fault.decide();
        if let Some(delay) = decision.delay {
            route.faults.delay.inc();
            tokio::time::sleep(delay).await;
        }
        if let Some(status) = decision.abort {
            route.faults.abort.inc();
            return Err(ProxyError::FaultInjected(status));
        }
    }

    let mut resp = match &route.spec.action {
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
        ActionSpec::Forward(_) => {
            let target = route.pick_target().expect("a forwarding route has targets");
            let service = &target.service;
            tags.metrics = Some(&target.metrics);
            tags.service = service.name();
            let permit = service
                .breaker()
                .admit()
                .map_err(|o| ProxyError::Overloaded(o.as_str()))?;
            service.budget().request();
            let upgrade = headers::is_upgrade(req.version(), req.method(), req.headers());
            let timeout = deadline::effective(route.spec.timeout, req.headers());
            let mut req = req.map(ProxyBody::stream);
            if !upgrade {
                mirroring::start(route, &mut req, conn, timeout);
            }
            if let Some(policy) = route.spec.retry.as_ref().filter(|_| !upgrade) {
                let result = retrying::forward(
                    route,
                    target,
                    policy,
                    timeout,
                    req,
                    conn,
                    &mut tags.endpoint,
                    permit,
                )
                .await;
                let mut resp = result?;
                route.spec.response_headers.apply(resp.headers_mut());
                return Ok(resp);
            }
            let endpoint = service
                .pick(req.headers())
                .ok_or_else(|| ProxyError::NoEndpoints {
                    service: service.name().clone(),
                })?;
            tags.endpoint = Some(endpoint.addr());
            let rewritten = route
                .spec
                .rewrite
                .as_ref()
                .map(|rw| rw.apply(req.uri().path(), req.uri().query()));
            let mut prepared = forward::prepare(
                req,
                conn,
                service.spec().protocol,
                rewritten,
                Some(&endpoint),
            )?;
            route
                .spec
                .request_headers
                .apply(prepared.request.headers_mut());
            deadline::propagate(prepared.request.headers_mut(), timeout);
            let result = forward::send(
                endpoint.pool(),
                prepared,
                Some(&endpoint),
                Some(permit),
                timeout,
                service.metrics(),
            )
            .await;
            if let Some(ok) = forward::endpoint_health(&result) {
                service.observe(&endpoint, ok);
            }
            result?
        }
    };
    route.spec.response_headers.apply(resp.headers_mut());
    Ok(resp)
}

/// Forwards an unmatched request to its own authority (explicit-proxy and transparent use).
async fn passthrough(
    pools: &Passthrough,
    ob: &Outbound,
    conn: &ConnMeta,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .ok_or(ProxyError::NoRoute)?;
    if authority.parse::<http::uri::Authority>().is_err() {
        return Err(ProxyError::BadRequest("invalid host"));
    }
    if loops_back(&authority, conn) {
        return Err(ProxyError::Loop);
    }
    let pool = pools
        .pool(&authority)
        .ok_or(ProxyError::BadRequest("invalid port in authority"))?;
    let prepared = forward::prepare(req.map(ProxyBody::stream), conn, Protocol::Auto, None, None)?;
    forward::send(
        &pool,
        prepared,
        None,
        None,
        ob.passthrough_timeout,
        &ob.passthrough_upstream,
    )
    .await
}

/// Answers `CONNECT host:port` (HTTPS through Remora as an HTTP proxy): opens a TCP
/// connection to the authority, answers 200, and copies bytes both ways once the caller's
/// connection is handed over.
async fn connect_tunnel(
    pools: &Passthrough,
    ob: &Outbound,
    conn: &ConnMeta,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or(ProxyError::BadRequest("CONNECT needs host:port"))?;
    if loops_back(&authority, conn) {
        return Err(ProxyError::Loop);
    }
    let target = passthrough::target(&authority)
        .ok_or(ProxyError::BadRequest("invalid port in authority"))?;
    let upstream = match upstream::connect(&target, pools.connect_timeout()).await {
        Ok(s) => s,
        Err(e) => {
            ob.passthrough_upstream
                .attempt(AttemptResult::ConnectFailure);
            return Err(ProxyError::Connect {
                target: authority,
                source: Box::new(e),
            });
        }
    };
    ob.passthrough_upstream.attempt(AttemptResult::Success);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let (mut down, mut up) = (TokioIo::new(upgraded), upstream);
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
