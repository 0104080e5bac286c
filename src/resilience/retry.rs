//! Tries and retries: the layer that owns a request's time. It sits above the balancer, so
//! each try picks its endpoint afresh (avoiding the earlier tries' endpoints where it can).
//!
//! Every forwarded request passes through it: "no retry" is one try through the same code.
//! The route's timeout (shortened by a caller's deadline, see `deadline`) bounds all tries
//! together, and each try gets the time left, or `per_try_timeout` when that is shorter; the
//! time is handed down as a `TryTimeout` so the endpoint layer can count a timeout against
//! the endpoint that caused it. A failed try is retried as the policy, the request's method,
//! the replay buffer (`replay`) and the service's retry budget allow, after an exponential,
//! jittered backoff. No try starts that could not finish inside the deadline. Upgrades are
//! never retried: their connection is handed over on the first answer.

mod budget;
mod policy;

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{header, Request};
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use prometheus::IntCounter;
use tokio::time::Instant;
use tower::{Layer, Service};

pub use budget::Budget;
pub use policy::{grpc_status, retry_after, Conditions, Outcome, Policy};

use super::{deadline, replay::Replay};
use crate::{
    body::ProxyBody,
    context::{BoxFuture, Ctx, Req, Resp, TryTimeout},
    error::ProxyError,
};

/// Request bodies up to this size are kept for replay; larger ones are not retried.
pub const REPLAY_CAP: usize = 64 * 1024;

/// Builds [`Retry`] services.
#[derive(Debug, Clone)]
pub struct RetryLayer(Arc<Config>);

#[derive(Debug)]
struct Config {
    /// `None`: one try.
    policy: Option<Policy>,
    /// The whole request's time, before a caller's deadline shortens it.
    timeout: Duration,
    /// The service's budget, which counts every request and pays for every retry.
    budget: Option<Arc<Budget>>,
    /// Retries made (`remora_retries_total{route, service}`).
    retries: Option<IntCounter>,
}

impl RetryLayer {
    /// One try within `timeout`, nothing counted (the inbound app, passthrough, mirrors).
    pub fn once(timeout: Duration) -> Self {
        Self(Arc::new(Config {
            policy: None,
            timeout,
            budget: None,
            retries: None,
        }))
    }

    /// A route's tries to one backend: `policy` (one try without one) within `timeout`,
    /// counted in the service's `budget`, retries counted in `retries`.
    pub fn new(
        policy: Option<Policy>,
        timeout: Duration,
        budget: Arc<Budget>,
        retries: IntCounter,
    ) -> Self {
        Self(Arc::new(Config {
            policy,
            timeout,
            budget: Some(budget),
            retries: Some(retries),
        }))
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            cfg: self.0.clone(),
            inner,
        }
    }
}

/// Sends a request through `S` once or, per the policy, several times.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    cfg: Arc<Config>,
    inner: S,
}

impl<S> Service<Req> for Retry<S>
where
    S: Service<Req, Response = Resp, Error = ProxyError, Future = BoxFuture>
        + Clone
        + Send
        + 'static,
{
    type Response = Resp;
    type Error = ProxyError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Req) -> BoxFuture {
        let timeout = deadline::effective(self.cfg.timeout, req.headers());
        if let Some(budget) = &self.cfg.budget {
            budget.request();
        }
        let upgrade = req.extensions().get::<OnUpgrade>().is_some();
        match &self.cfg.policy {
            Some(p) if p.attempts > 1 && !upgrade => {
                Box::pin(retrying(self.cfg.clone(), self.inner.clone(), req, timeout))
            }
            policy => {
                deadline::propagate(req.headers_mut(), timeout);
                let per_try = policy.as_ref().and_then(|p| p.per_try_timeout);
                let once = per_try.map_or(timeout, |t| t.min(timeout));
                req.extensions_mut().insert(TryTimeout(once));
                self.inner.call(req)
            }
        }
    }
}

/// The tries of one request with a retry policy.
async fn retrying<S>(
    cfg: Arc<Config>,
    mut inner: S,
    req: Req,
    timeout: Duration,
) -> crate::context::Result
where
    S: Service<Req, Response = Resp, Error = ProxyError, Future = BoxFuture>,
{
    let policy = cfg.policy.as_ref().expect("retrying needs a policy");
    let deadline = Instant::now() + timeout;
    let ctx = Ctx::of(&req);
    let (parts, body) = req.into_parts();
    let replay = Replay::new(body, REPLAY_CAP);
    let mut attempt = 1;
    loop {
        let mut req = Request::new(ProxyBody::Replay(replay.attempt()));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        *req.extensions_mut() = parts.extensions.clone();

        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ProxyError::Timeout(timeout));
        }
        deadline::propagate(req.headers_mut(), remaining);
        let try_timeout = policy
            .per_try_timeout
            .map_or(remaining, |t| t.min(remaining));
        req.extensions_mut().insert(TryTimeout(try_timeout));
        let mut result = inner.call(req).await;
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
            return result;
        }
        if cfg.budget.as_ref().is_some_and(|b| !b.try_retry()) {
            return result;
        }
        let honoured = match &result {
            Ok(r) if matches!(r.status().as_u16(), 429 | 503) => retry_after(r.headers()),
            _ => None,
        };
        let backoff = policy.backoff(attempt, honoured);
        // No try starts that could not finish inside the route's deadline.
        let left = deadline.saturating_duration_since(Instant::now() + backoff);
        if left.is_zero() || policy.per_try_timeout.is_some_and(|t| left < t) {
            return result;
        }
        drop(result);
        if let Some(retries) = &cfg.retries {
            retries.inc();
        }
        tokio::time::sleep(backoff).await;
        ctx.next_try();
        attempt += 1;
    }
}

/// `grpc-status` of a gRPC response: from the headers, or from trailers that come before any
/// message (read ahead and put back in front of the body).
async fn peek_grpc_status(resp: &mut Resp, wait: Duration) -> Option<u32> {
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
