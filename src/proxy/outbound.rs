//! The outbound listener's handler: the local app's requests to other services. Matches the
//! route table, then redirects, answers directly, or forwards to a backend service chosen by
//! weight; unmatched requests are rejected or passed through to their own authority.

use std::{sync::Arc, time::Duration};

use http::{header, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{error::ProxyError, finish, forward, headers, AccessLine, ConnMeta, Tags};
use crate::{
    body::ProxyBody,
    config::file::{Protocol, Unmatched},
    metrics::{RequestMetrics, UpstreamMetrics},
    routing::{host_without_port, ActionSpec, RequestView, RouteTable},
    runtime::Runtime,
    upstream::HttpClient,
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
        let fallback = rt.metrics.request(conn.direction, "", "");
        return finish(
            &conn,
            started,
            Tags::default(),
            &fallback,
            Err(ProxyError::NoRoute),
            access,
        );
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
            let client = endpoint.client(prepared.request.version());
            let addr = endpoint.addr();
            forward::send(
                client,
                prepared,
                Some(&endpoint),
                &addr,
                route.spec.timeout,
                service.metrics(),
            )
            .await?
        }
    };
    route.spec.response_headers.apply(resp.headers_mut());
    Ok(resp)
}

/// Forwards an unmatched request to its own authority (explicit-proxy and transparent use).
async fn passthrough(
    clients: &Passthrough,
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
    if loops_back(&authority, conn) {
        return Err(ProxyError::Loop);
    }
    let prepared = forward::prepare(req, conn, Protocol::Auto, None, None)?;
    let client = clients.client(prepared.request.version());
    forward::send(
        client,
        prepared,
        None,
        &authority,
        ob.passthrough_timeout,
        &ob.passthrough_upstream,
    )
    .await
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

/// Pooled clients for passthrough, which connect to each request's own authority.
#[derive(Debug)]
pub struct Passthrough {
    http1: HttpClient,
    http2: HttpClient,
}

impl Passthrough {
    /// Clients with this connect timeout.
    pub fn new(connect_timeout: Duration) -> Self {
        let c = crate::upstream::Connector::from_uri(connect_timeout);
        let idle = Duration::from_secs(60);
        Self {
            http1: crate::upstream::client(c.clone(), idle, false),
            http2: crate::upstream::client(c, idle, true),
        }
    }

    fn client(&self, version: http::Version) -> &HttpClient {
        if version == http::Version::HTTP_2 {
            &self.http2
        } else {
            &self.http1
        }
    }
}
