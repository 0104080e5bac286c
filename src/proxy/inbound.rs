//! The inbound listener's handler: callers' requests to the local app. Authorizes the caller
//! by its identity, replaces the caller identity header with the verified identity (so it
//! cannot be forged), then forwards to the app with the inbound timeout.

use std::{sync::Arc, time::Duration};

use http::{header::HeaderName, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{
    authorize::Authorizer, error::ProxyError, finish, forward, headers, unconfigured, AccessLine,
    ConnMeta, Tags,
};
use prometheus::IntCounter;

use crate::{
    body::ProxyBody,
    metrics::RequestMetrics,
    resilience::{deadline, RateLimiter},
    runtime::Runtime,
    tls::{self, accept::ClientId},
    upstream::Service,
};

/// The header that carries the caller's verified identity to the app. Whatever a caller
/// sends under this name is removed first.
pub const CLIENT_ID: HeaderName = HeaderName::from_static("x-remora-client-id");

/// The inbound side of a config snapshot.
#[derive(Debug)]
pub struct Inbound {
    /// The local app as a one-endpoint service.
    pub app: Arc<Service>,
    /// Time the app has to answer with response headers.
    pub timeout: Duration,
    /// Request metrics (route "", service "app").
    pub metrics: RequestMetrics,
    /// Local rate limit (requests per second, burst), as configured.
    pub rate_limit: Option<(u32, u32)>,
    /// The listener's token bucket; kept across reloads while the limit is unchanged.
    pub limiter: Option<Arc<RateLimiter>>,
    /// Requests refused by the rate limit.
    pub rate_limited: IntCounter,
    /// What the listener accepts (read at every new connection).
    pub tls: tls::Mode,
    /// Authorization rules bound to their counters; `None` allows every caller.
    pub authorizer: Option<Authorizer>,
}

/// Handles one request on the inbound listener.
pub async fn handle(
    rt: Arc<Runtime>,
    conn: ConnMeta,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let snap = rt.snapshot();
    let access = snap.access_log.then(|| AccessLine::capture(&req));
    let Some(ib) = snap.inbound.as_ref() else {
        return unconfigured(&rt, &conn, started, access);
    };
    let mut tags = Tags {
        service: ib.app.name(),
        metrics: Some(&ib.metrics),
        ..Tags::default()
    };
    let result = forward_to_app(ib, &conn, req, &mut tags).await;
    finish(&conn, started, tags, &ib.metrics, result, access)
}

async fn forward_to_app(
    ib: &Inbound,
    conn: &ConnMeta,
    mut req: Request<Incoming>,
    tags: &mut Tags<'_>,
) -> Result<Response<ProxyBody>, ProxyError> {
    headers::check_framing(req.headers())?;
    // Also catches connections accepted in plaintext before a reload made the mode strict.
    if ib.tls == tls::Mode::Strict && !conn.tls {
        return Err(ProxyError::MtlsRequired);
    }
    if let Some(authz) = &ib.authorizer {
        let caller = conn.client_id.as_ref().map(ClientId::as_str);
        if !authz.allows(caller, req.method(), req.uri().path()) {
            return Err(ProxyError::Unauthorized {
                caller: caller.map(Arc::from),
            });
        }
    }
    if let Some(limiter) = &ib.limiter {
        limiter.try_acquire().map_err(|wait| {
            ib.rate_limited.inc();
            ProxyError::RateLimited(wait)
        })?;
    }
    // Only the identity this proxy verified reaches the app under this name.
    req.headers_mut().remove(CLIENT_ID);
    if let Some(id) = &conn.client_id {
        req.headers_mut().insert(CLIENT_ID, id.header().clone());
    }
    let app = &ib.app;
    let permit = app
        .breaker()
        .admit()
        .map_err(|o| ProxyError::Overloaded(o.as_str()))?;
    let endpoint = app
        .pick(req.headers())
        .ok_or_else(|| ProxyError::NoEndpoints {
            service: app.name().clone(),
        })?;
    tags.endpoint = Some(endpoint.addr());
    let timeout = deadline::effective(ib.timeout, req.headers());
    let mut prepared = forward::prepare(
        req.map(ProxyBody::stream),
        conn,
        app.spec().protocol,
        None,
        Some(&endpoint),
    )?;
    deadline::propagate(prepared.request.headers_mut(), timeout);
    let result = forward::send(
        endpoint.pool(),
        prepared,
        Some(&endpoint),
        Some(permit),
        timeout,
        app.metrics(),
    )
    .await;
    if let Some(ok) = forward::endpoint_health(&result) {
        app.observe(&endpoint, ok);
    }
    result
}
