//! Forwarding with retries (routes with a `retry` policy): each try goes to an endpoint not
//! tried yet when there is one, within the per-try timeout and the route's whole-request
//! deadline; failed tries are retried as the policy, the request's method, the replay buffer
//! and the service's retry budget allow, after an exponential, jittered backoff.

use std::net::SocketAddr;

use http::{header, Request, Response};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::{error::ProxyError, forward, ConnMeta};
use crate::{
    body::ProxyBody,
    resilience::{
        breaker::RequestPermit,
        replay::Replay,
        retry::{grpc_status, retry_after, Outcome, Policy},
    },
    routing::{Route, Target},
};

/// Request bodies up to this size are kept for replay; larger ones are not retried.
pub const REPLAY_CAP: usize = 64 * 1024;

/// Sends `req` for `route` to `target`'s service, retrying per `policy`, all tries within
/// `timeout`.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    route: &Route,
    target: &Target,
    policy: &Policy,
    timeout: std::time::Duration,
    req: Request<ProxyBody>,
    conn: &ConnMeta,
    endpoint_tag: &mut Option<SocketAddr>,
    permit: RequestPermit,
) -> Result<Response<ProxyBody>, ProxyError> {
    let service = &target.service;
    let deadline = Instant::now() + timeout;
    let rewritten = route
        .spec
        .rewrite
        .as_ref()
        .map(|rw| rw.apply(req.uri().path(), req.uri().query()));
    let (parts, body) = req.into_parts();
    let replay = Replay::new(body, REPLAY_CAP);
    let mut tried = Vec::with_capacity(policy.attempts as usize);
    let mut attempt = 1;
    loop {
        let endpoint = service
            .pick_avoiding(&parts.headers, &tried)
            .ok_or_else(|| ProxyError::NoEndpoints {
                service: service.name().clone(),
            })?;
        *endpoint_tag = Some(endpoint.addr());
        tried.push(endpoint.addr());

        let mut req = Request::new(ProxyBody::Replay(replay.attempt()));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        let mut prepared = forward::prepare(
            req,
            conn,
            service.spec().protocol,
            rewritten.clone(),
            Some(&endpoint),
        )?;
        route
            .spec
            .request_headers
            .apply(prepared.request.headers_mut());

        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ProxyError::Timeout(timeout));
        }
        crate::resilience::deadline::propagate(prepared.request.headers_mut(), remaining);
        let try_timeout = policy
            .per_try_timeout
            .map_or(remaining, |t| t.min(remaining));
        let mut result = forward::send(
            endpoint.pool(),
            prepared,
            Some(&endpoint),
            None,
            try_timeout,
            service.metrics(),
        )
        .await;
        if let Some(ok) = forward::endpoint_health(&result) {
            service.observe(&endpoint, ok);
        }
        let outcome = match &mut result {
            Ok(resp) => {
                let grpc = if policy.on.grpc.is_empty() {
                    None
                } else {
                    peek_grpc_status(resp, try_timeout).await
                };
                Outcome::Response(resp.status(), grpc)
            }
            Err(ProxyError::Connect { .. }) => Outcome::ConnectFailure,
            Err(ProxyError::Reset { .. }) => Outcome::Reset,
            Err(ProxyError::Timeout(_)) => Outcome::Timeout,
            Err(_) => return result,
        };

        if attempt >= policy.attempts
            || !policy.retries(&parts.method, outcome)
            || !replay.can_retry()
        {
            return attach(result, permit);
        }
        if !service.budget().try_retry() {
            service.budget_exhausted();
            return attach(result, permit);
        }
        let honoured = match &result {
            Ok(r) if matches!(r.status().as_u16(), 429 | 503) => retry_after(r.headers()),
            _ => None,
        };
        let backoff = policy.backoff(attempt, honoured);
        // No try starts that could not finish inside the route's deadline.
        let left = deadline.saturating_duration_since(Instant::now() + backoff);
        if left.is_zero() || policy.per_try_timeout.is_some_and(|t| left < t) {
            return attach(result, permit);
        }
        drop(result);
        target.retries.inc();
        tokio::time::sleep(backoff).await;
        attempt += 1;
    }
}

/// The final answer keeps the service's count of the request until its body ends.
fn attach(
    result: Result<Response<ProxyBody>, ProxyError>,
    permit: RequestPermit,
) -> Result<Response<ProxyBody>, ProxyError> {
    result.map(|r| r.map(|b| b.with_permit(permit)))
}

/// `grpc-status` of a gRPC response: from the headers, or from trailers that come before any
/// message (read ahead and put back in front of the body).
async fn peek_grpc_status(
    resp: &mut Response<ProxyBody>,
    wait: std::time::Duration,
) -> Option<u32> {
    if let Some(s) = grpc_status(resp.headers()) {
        return Some(s);
    }
    let is_grpc = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !is_grpc {
        return None;
    }
    let mut body = std::mem::replace(resp.body_mut(), ProxyBody::empty());
    let first = match tokio::time::timeout(wait, body.frame()).await {
        Ok(Some(Ok(frame))) => Some(frame),
        _ => None,
    };
    let status = first
        .as_ref()
        .and_then(|f| f.trailers_ref())
        .and_then(grpc_status);
    *resp.body_mut() = ProxyBody::Prefixed {
        first,
        rest: Box::new(body),
    };
    status
}
