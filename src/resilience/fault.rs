//! Fault injection per route, for chaos testing: a share of requests is delayed, and a share
//! is answered with an error status instead of being forwarded. Decided per request with a
//! thread-local random number; no state is shared. In the stack it sits under the route's
//! rate limit, so refused requests are not delayed.

use std::{sync::Arc, time::Duration};

use http::StatusCode;
use tower::{Layer, Service};

use crate::{
    context::{stack_service, BoxFuture, Req, Stage},
    error::ProxyError,
    metrics::FaultMetrics,
};

/// A route's faults.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// Delay this share of requests (percent) by `delay`.
    pub delay: Option<(f64, Duration)>,
    /// Answer this share of requests (percent) with `status`.
    pub abort: Option<(f64, StatusCode)>,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer with this status instead of forwarding.
    pub abort: Option<StatusCode>,
}

impl Fault {
    /// Draws this request's faults.
    pub fn decide(&self) -> Decision {
        let hit = |percent: f64| fastrand::f64() * 100.0 < percent;
        Decision {
            delay: self.delay.and_then(|(p, d)| hit(p).then_some(d)),
            abort: self.abort.and_then(|(p, s)| hit(p).then_some(s)),
        }
    }
}

// === impl FaultLayer ===

/// A request the route's fault injection answered instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aborted(pub StatusCode);

impl From<Aborted> for ProxyError {
    fn from(a: Aborted) -> Self {
        ProxyError::FaultInjected(a.0)
    }
}

/// Builds [`InjectFaults`] services for a route's faults, if it has any.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    fault: Option<Arc<Fault>>,
    metrics: FaultMetrics,
}

impl FaultLayer {
    /// Injects `fault` (none: nothing happens); injections count in `metrics`.
    pub fn new(fault: Option<Fault>, metrics: FaultMetrics) -> Self {
        Self {
            fault: fault.map(Arc::new),
            metrics,
        }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = InjectFaults<S>;

    fn layer(&self, inner: S) -> InjectFaults<S> {
        InjectFaults {
            fault: self.fault.clone(),
            metrics: self.metrics.clone(),
            inner,
        }
    }
}

/// Delays a share of requests, and answers a share with [`Aborted`] instead of forwarding.
#[derive(Debug, Clone)]
pub struct InjectFaults<S> {
    fault: Option<Arc<Fault>>,
    metrics: FaultMetrics,
    inner: S,
}

impl<S> Service<Req> for InjectFaults<S>
where
    S: Stage + Clone + Send + 'static,
{
    stack_service!();

    fn call(&mut self, req: Req) -> BoxFuture {
        let Some(fault) = &self.fault else {
            return self.inner.call(req);
        };
        let decision = fault.decide();
        if decision.delay.is_some() {
            self.metrics.delay.inc();
        }
        if decision.abort.is_some() {
            self.metrics.abort.inc();
        }
        match decision {
            Decision {
                delay: None,
                abort: None,
            } => self.inner.call(req),
            Decision {
                delay: None,
                abort: Some(status),
            } => Box::pin(std::future::ready(Err(Aborted(status).into()))),
            Decision {
                delay: Some(delay),
                abort,
            } => {
                // The inner service is called after the delay, as if the request arrived late.
                let mut inner = self.inner.clone();
                Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    match abort {
                        Some(status) => Err(Aborted(status).into()),
                        None => inner.call(req).await,
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_percentages() {
        let f = Fault {
            delay: Some((25.0, Duration::from_millis(5))),
            abort: Some((10.0, StatusCode::SERVICE_UNAVAILABLE)),
        };
        let n = 100_000;
        let (mut delays, mut aborts) = (0, 0);
        for _ in 0..n {
            let d = f.decide();
            delays += usize::from(d.delay.is_some());
            aborts += usize::from(d.abort.is_some());
        }
        assert!((24_000..=26_000).contains(&delays), "{delays}");
        assert!((9_300..=10_700).contains(&aborts), "{aborts}");
        let never = Fault {
            delay: Some((0.0, Duration::from_millis(5))),
            abort: Some((0.0, StatusCode::SERVICE_UNAVAILABLE)),
        };
        assert!((0..1000).all(|_| never.decide() == Decision::default()));
    }

    fn metrics() -> FaultMetrics {
        FaultMetrics {
            delay: prometheus::IntCounter::new("d", "d").unwrap().into(),
            abort: prometheus::IntCounter::new("a", "a").unwrap().into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_aborts_without_calling_inward_and_delays_before_it() {
        use tokio::time::Instant;
        use tower::{Layer, Service};

        use crate::testing::{request, Mock};

        let m = metrics();
        let mock = Mock::statuses(&[200]);
        let abort = Fault {
            delay: None,
            abort: Some((100.0, StatusCode::IM_A_TEAPOT)),
        };
        let err = FaultLayer::new(Some(abort), m.clone())
            .layer(mock.clone())
            .call(request("GET", "/", ""))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            ProxyError::FaultInjected(StatusCode::IM_A_TEAPOT)
        ));
        assert_eq!((mock.calls(), m.abort.counter().get()), (0, 1));

        let delay = Fault {
            delay: Some((100.0, Duration::from_secs(3))),
            abort: None,
        };
        let started = Instant::now();
        let resp = FaultLayer::new(Some(delay), m.clone())
            .layer(mock.clone())
            .call(request("GET", "/", ""))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!((mock.calls(), m.delay.counter().get()), (1, 1));
    }
}
