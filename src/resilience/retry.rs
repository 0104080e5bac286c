//! Tries and retries: the layer that owns a request's time. It sits above the balancer, so
//! each try picks its endpoint afresh (avoiding the earlier tries' endpoints where it can).
//!
//! Every forwarded request passes through it: "no retry" is one try through the same code.
//! The route's timeout (shortened by a caller's deadline, see `deadline`) bounds all tries
//! together, and each try gets the time left, or `per_try_timeout` when that is shorter; the
//! time is handed down in `Req::try_timeout` so the endpoint layer can count a timeout against
//! the endpoint that caused it. A failed try is retried as the policy, the request's method,
//! the replay buffer (`replay`) and the service's retry budget allow, after an exponential,
//! jittered backoff. No try starts that could not finish inside the deadline. Upgrades are
//! never retried: their connection is handed over on the first answer.

mod budget;
mod policy;

use std::{sync::Arc, time::Duration};

use crate::context::DownstreamUpgrade;
use crate::metrics::LazyCounter;
use http::{header, Request};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Layer, Service};

pub use budget::{Budget, BudgetSpec};
pub use policy::{grpc_status, retry_after, Conditions, Outcome, Policy};

use super::deadline;
use crate::{
    body::{replay::Replay, ProxyBody},
    context::{stack_service, BoxFuture, Req, Resp, Stage},
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
    retries: Option<LazyCounter>,
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
        retries: LazyCounter,
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
    S: Stage + Clone + Send + 'static,
{
    stack_service!();

    fn call(&mut self, mut req: Req) -> BoxFuture {
        let timeout = deadline::effective(self.cfg.timeout, req.headers());
        if let Some(budget) = &self.cfg.budget {
            budget.request();
        }
        let upgrade = req.extensions().get::<DownstreamUpgrade>().is_some();
        match &self.cfg.policy {
            Some(p) if p.attempts > 1 && !upgrade => {
                Box::pin(retrying(self.cfg.clone(), self.inner.clone(), req, timeout))
            }
            policy => {
                deadline::propagate(req.headers_mut(), timeout);
                let per_try = policy.as_ref().and_then(|p| p.per_try_timeout);
                let once = per_try.map_or(timeout, |t| t.min(timeout));
                req.try_timeout = Some(once);
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
    S: Stage,
{
    let policy = cfg.policy.as_ref().expect("retrying needs a policy");
    let deadline = Instant::now() + timeout;
    let ctx = req.ctx;
    let (parts, body) = req.http.into_parts();
    let replay = Replay::new(body, REPLAY_CAP);
    let mut attempt = 1;
    loop {
        let mut req = Req::new(
            Request::new(ProxyBody::Replay(replay.attempt())),
            ctx.clone(),
        );
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
        req.try_timeout = Some(try_timeout);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus::IntCounter;
    use tower::{Layer, Service};

    use super::*;
    use crate::testing::{self, connect_failure, request, Mock};

    fn policy(attempts: u32) -> Policy {
        Policy {
            attempts,
            per_try_timeout: None,
            on: Conditions {
                gateway_error: true,
                connect_failure: true,
                reset: true,
                ..Default::default()
            },
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            non_idempotent: false,
        }
    }

    fn layer(p: Option<Policy>, timeout: Duration) -> (RetryLayer, Arc<Budget>, IntCounter) {
        let budget = Arc::new(Budget::new(0.2, 10));
        let retries = IntCounter::new("r", "r").unwrap();
        (
            RetryLayer::new(p, timeout, budget.clone(), retries.clone().into()),
            budget,
            retries,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn no_policy_is_one_try_with_the_route_timeout() {
        let mock = Mock::statuses(&[503]);
        let (l, _, retries) = layer(None, Duration::from_secs(2));
        let mut req = request("GET", "/", "");
        req.headers_mut()
            .insert("grpc-timeout", "500m".parse().unwrap());
        let resp = l.layer(mock.clone()).call(req).await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(mock.calls(), 1);
        assert_eq!(retries.get(), 0);
        let seen = &mock.seen()[0];
        assert_eq!(
            seen.try_timeout,
            Some(Duration::from_millis(500)),
            "the caller's deadline wins"
        );
        assert_eq!(seen.parts.headers["grpc-timeout"], "500m");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_gateway_errors_with_the_body_replayed_and_earlier_endpoints_avoided() {
        let mock = Mock::statuses(&[503, 502, 200]);
        let (l, _, retries) = layer(Some(policy(3)), Duration::from_secs(10));
        let resp = l
            .layer(mock.clone())
            .call(request("PUT", "/x", "payload"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(retries.get(), 2);
        let seen = mock.seen();
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter().all(|s| s.body == "payload"),
            "every try sends the whole body"
        );
        assert_eq!(
            seen[2].tried.len(),
            2,
            "the third try avoids both earlier endpoints"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_bound_the_tries() {
        let mock = Mock::statuses(&[503]);
        let (l, _, _) = layer(Some(policy(2)), Duration::from_secs(10));
        let resp = l
            .layer(mock.clone())
            .call(request("GET", "/", ""))
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "the last answer is the caller's");
        assert_eq!(mock.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn post_is_retried_only_when_it_never_reached_the_upstream() {
        let mock = Mock::statuses(&[503, 200]);
        let (l, _, _) = layer(Some(policy(3)), Duration::from_secs(10));
        let resp = l
            .layer(mock.clone())
            .call(request("POST", "/", "b"))
            .await
            .unwrap();
        assert_eq!((resp.status().as_u16(), mock.calls()), (503, 1));

        let mock = Mock::new(|n| {
            if n == 0 {
                Err(connect_failure())
            } else {
                Ok(testing::status(200))
            }
        });
        let resp = l
            .layer(mock.clone())
            .call(request("POST", "/", "b"))
            .await
            .unwrap();
        assert_eq!((resp.status().as_u16(), mock.calls()), (200, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_that_are_not_retriable_end_at_once() {
        let mock = Mock::new(|_| Err(ProxyError::Overloaded("max_pending_requests")));
        let (l, _, _) = layer(Some(policy(3)), Duration::from_secs(10));
        let err = l
            .layer(mock.clone())
            .call(request("GET", "/", ""))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Overloaded(_)));
        assert_eq!(mock.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_budget_stops_retries_and_is_counted() {
        let exhausted = IntCounter::new("e", "e").unwrap();
        let budget = Arc::new(Budget::new(0.0, 0).counting(exhausted.clone().into()));
        let retries = IntCounter::new("r", "r").unwrap();
        let l = RetryLayer::new(
            Some(policy(3)),
            Duration::from_secs(10),
            budget,
            retries.clone().into(),
        );
        let mock = Mock::statuses(&[503, 200]);
        let resp = l
            .layer(mock.clone())
            .call(request("GET", "/", ""))
            .await
            .unwrap();
        assert_eq!((resp.status().as_u16(), mock.calls()), (503, 1));
        assert_eq!(exhausted.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn tries_share_the_deadline_and_none_starts_that_cannot_finish() {
        let p = Policy {
            per_try_timeout: Some(Duration::from_millis(400)),
            ..policy(5)
        };
        let (l, _, _) = layer(Some(p), Duration::from_secs(1));
        let mock = Mock::statuses(&[504]).delayed(Duration::from_millis(300));
        let started = Instant::now();
        let resp = l
            .layer(mock.clone())
            .call(request("GET", "/", ""))
            .await
            .unwrap();
        assert_eq!(resp.status(), 504);
        let seen = mock.seen();
        assert_eq!(seen[0].try_timeout, Some(Duration::from_millis(400)));
        // Two tries of 300 ms plus backoffs fit in 1 s; a third would leave under 400 ms.
        assert_eq!(
            seen.len(),
            2,
            "{:?}",
            seen.iter().map(|s| s.try_timeout).collect::<Vec<_>>()
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn upgrades_are_tried_once() {
        let mock = Mock::statuses(&[503]);
        let (l, _, _) = layer(Some(policy(3)), Duration::from_secs(10));
        let mut req = request("GET", "/", "");
        req.extensions_mut().insert(testing::on_upgrade());
        l.layer(mock.clone()).call(req).await.unwrap();
        assert_eq!(mock.calls(), 1);
    }
}
