//! The bottom of every stack: `Balance` picks an endpoint of a service (skipping ejected and
//! unhealthy ones and, on a retry, the earlier tries' endpoints), sends the request on the
//! endpoint's pool within the try's time, and reports the outcome to outlier detection.
//! `send` is the one place a request meets a pool: it counts the attempt, classifies a
//! failure into the error the caller sees, and tunnels an upgraded connection.

use std::{sync::Arc, time::Duration};

use http::{header, uri::Authority, HeaderValue, Uri, Version};
use hyper::upgrade::OnUpgrade;

use crate::context::DownstreamUpgrade;
use hyper_util::rt::TokioIo;
use tower::Service;

use super::{Pool, PoolError};
use crate::{
    body::ProxyBody,
    context::{stack_service, BoxFuture, Req, Result},
    error::ProxyError,
    headers,
    metrics::{AttemptResult, UpstreamMetrics},
    tls::connect::OriginateError,
};

/// Sends requests to the endpoints of one service.
#[derive(Debug, Clone)]
pub struct Balance {
    service: Arc<super::Service>,
}

impl Balance {
    /// Balances over `service`'s endpoints.
    pub fn new(service: Arc<super::Service>) -> Self {
        Self { service }
    }
}

impl Service<Req> for Balance {
    stack_service!();

    fn call(&mut self, req: Req) -> BoxFuture {
        let picked = {
            let mut tags = req.ctx.tags();
            let picked = self.service.pick_avoiding(req.headers(), &tags.tried);
            tags.endpoint = picked.as_ref().map(|e| e.addr());
            picked
        };
        let Some(endpoint) = picked else {
            let err = ProxyError::NoEndpoints {
                service: self.service.name().clone(),
            };
            return Box::pin(std::future::ready(Err(err)));
        };
        let service = self.service.clone();
        // Tries are recorded only for a sampled span; the rest pay for nothing here.
        let recording = req
            .ctx
            .recording()
            .then(|| (req.ctx.clone(), std::time::Instant::now()));
        Box::pin(async move {
            let in_flight = endpoint.start();
            let result = send(endpoint.pool(), req, service.metrics()).await;
            if let Some((ctx, started)) = recording {
                ctx.attempted(endpoint.addr(), started, &result);
            }
            let result = result.map(|r| r.map(|b| b.with_in_flight(in_flight)));
            if let Some(ok) = endpoint_health(&result) {
                service.observe(&endpoint, ok);
            }
            result
        })
    }
}

/// Sends `req` through `pool` and waits at most its try's timeout (when it has one) for
/// response headers. A request that names no authority gets the pool's target as one. The
/// response's hop-by-hop headers are removed.
pub async fn send(pool: &Pool, req: Req, metrics: &UpstreamMetrics) -> Result {
    // Taken apart before the first await, so the future keeps only the parts it needs (a
    // request held across an await would make it hundreds of bytes larger, and it is moved).
    let (http, on_upgrade, timeout, ctx) = outgoing(req, pool)?;
    let sent = tokio::time::Instant::now();
    let deadline = timeout.map(|t| sent + t);
    let mut connected = None;
    let outcome = pool.send(http, deadline, &mut connected).await;
    {
        let mut tags = ctx.tags();
        tags.upstream_response = Some(sent.elapsed());
        tags.upstream_connect = connected;
    }
    let (mut resp, lease) = match outcome {
        Ok(pair) => pair,
        Err(PoolError::Timeout) => {
            metrics.attempt(AttemptResult::Timeout);
            return Err(ProxyError::Timeout(timeout.unwrap_or_default()));
        }
        Err(e) => return Err(classify(e, pool, metrics)),
    };
    // A status outside 1xx-5xx has no meaning a caller could act on: the upstream's fault.
    if resp.status().as_u16() >= 600 {
        metrics.attempt(AttemptResult::Reset);
        return Err(ProxyError::Reset {
            target: pool.target().to_string(),
            source: format!("invalid response status {}", resp.status().as_u16()).into(),
        });
    }
    // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3): hyper has de-chunked the
    // body, so a length sent along would frame it wrongly for the caller.
    if resp.headers().contains_key(header::TRANSFER_ENCODING) {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    metrics.attempt(AttemptResult::Success);
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let Some(downstream) = on_upgrade {
            tunnel(downstream, hyper::upgrade::on(&mut resp));
        }
    }
    headers::strip_hop_by_hop(resp.headers_mut(), switching);
    Ok(resp.map(|body| ProxyBody::upstream(body, lease)))
}

/// The HTTP request to send (with an authority), the caller's upgrade, the try's timeout, and
/// the request's context (for the try's timings).
type Outgoing = (
    http::Request<ProxyBody>,
    Option<DownstreamUpgrade>,
    Option<Duration>,
    crate::context::Ctx,
);

/// Takes `req` apart into what [`send`] sends and keeps.
fn outgoing(req: Req, pool: &Pool) -> std::result::Result<Outgoing, ProxyError> {
    let timeout = req.try_timeout;
    let mut http = req.http;
    let on_upgrade = http.extensions_mut().remove::<DownstreamUpgrade>();
    fill_authority(&mut http, pool)?;
    Ok((http, on_upgrade, timeout, req.ctx))
}

/// The caller's error for a failed exchange, with the attempt counted by its kind.
fn classify(e: PoolError, pool: &Pool, metrics: &UpstreamMetrics) -> ProxyError {
    let target = pool.target().to_string();
    // A shared HTTP/2 connection's failure is every waiter's: judged by what it was.
    let kind = match &e {
        PoolError::Shared(inner) => inner.as_ref(),
        other => other,
    };
    let (result, err) = match kind {
        PoolError::Overloaded(limit) => return ProxyError::Overloaded(limit.as_str()),
        // The caller's body broke (a bad chunk size, a reset mid-body): its fault, not the
        // upstream's, so no attempt is counted against it and nothing is retried.
        PoolError::Http(e) if caller_body_failed(e) => {
            return ProxyError::BadRequest("malformed or aborted request body")
        }
        PoolError::Tls(OriginateError::Mismatch(_)) => (
            AttemptResult::ConnectFailure,
            ProxyError::PeerIdentityMismatch {
                target,
                source: Box::new(e),
            },
        ),
        // Only a pool that may not fall back (`protocol: http2`) lets this through.
        PoolError::Connect(_) | PoolError::Tls(_) | PoolError::NoHttp2 => (
            AttemptResult::ConnectFailure,
            ProxyError::Connect {
                target,
                source: Box::new(e),
            },
        ),
        PoolError::Http(_) | PoolError::Shared(_) | PoolError::Timeout => (
            AttemptResult::Reset,
            ProxyError::Reset {
                target,
                source: Box::new(e),
            },
        ),
    };
    metrics.attempt(result);
    err
}

/// Whether an exchange failed because the request body, read from the caller, failed: hyper
/// reports a body error as a user error whose cause is the body's own error, and every body
/// the proxy sends reads from the caller's connection, whose errors are hyper's too.
fn caller_body_failed(e: &hyper::Error) -> bool {
    e.is_user() && std::error::Error::source(e).is_some_and(|cause| cause.is::<hyper::Error>())
}

/// HTTP/1.1 needs `Host` and HTTP/2 an `:authority`; a caller that sent neither gets the
/// pool's target (the endpoint's address, or the passthrough authority).
fn fill_authority(
    req: &mut http::Request<ProxyBody>,
    pool: &Pool,
) -> std::result::Result<(), ProxyError> {
    let has = if req.version() == Version::HTTP_2 {
        req.uri().authority().is_some()
    } else {
        req.headers().contains_key(header::HOST)
    };
    if has {
        return Ok(());
    }
    let authority = Authority::try_from(pool.target().to_string())
        .map_err(|_| ProxyError::BadRequest("invalid authority"))?;
    if req.version() == Version::HTTP_2 {
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(authority);
        *req.uri_mut() =
            Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    } else {
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| ProxyError::BadRequest("invalid authority"))?;
        req.headers_mut().insert(header::HOST, host);
    }
    Ok(())
}

/// What a forwarding result says about the endpoint, for outlier detection: `Some(false)`
/// for a 5xx or a connect failure, reset or timeout; `Some(true)` for any other response;
/// `None` when the request never reached it (a breaker, a malformed request).
pub fn endpoint_health(result: &Result) -> Option<bool> {
    match result {
        Ok(resp) => Some(!resp.status().is_server_error()),
        Err(ProxyError::Connect { .. } | ProxyError::Reset { .. } | ProxyError::Timeout(_)) => {
            Some(false)
        }
        Err(_) => None,
    }
}

/// Copies bytes both ways between an upgraded caller and upstream until either side closes.
fn tunnel(downstream: DownstreamUpgrade, upstream: OnUpgrade) {
    tokio::spawn(async move {
        let upstream = async { upstream.await.map_err(crate::error::BoxError::from) };
        let (mut down, up) = match tokio::try_join!(downstream.ready(), upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut up = TokioIo::new(up);
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}
