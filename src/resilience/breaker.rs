//! Circuit breaking per service: bounds on requests in flight, upstream connections, and
//! requests waiting for a connection. Over a bound a request fails fast with 503 `overloaded`
//! instead of queueing without limit, so one slow service cannot pile up work in the sidecar.
//! The counters are atomics; waiting for a connection uses a `Notify`.
//!
//! In the stack, `CircuitBreaker` sits right under the backend split, above mirroring and the
//! tries: one admitted request holds one `max_requests` place however many tries it takes.
//! Connections and pending requests are bounded in the pools, which hold the same `Breaker`.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use tokio::sync::Notify;
use tower::{Layer, Service};

pub use crate::metrics::{BreakerLimit, BreakerMetrics};
use crate::{
    body::{Place, Release},
    context::{stack_service, BoxFuture, Req, Stage},
    error::ProxyError,
};

/// A service's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most upstream connections across the service's endpoints.
    pub max_connections: usize,
    /// Most requests waiting for a connection.
    pub max_pending_requests: usize,
    /// Most requests in flight.
    pub max_requests: usize,
}

impl Default for Limits {
    /// Envoy's defaults.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
        }
    }
}

/// Which limit a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `max_requests`.
    Requests,
    /// `max_pending_requests` (with `max_connections` reached).
    Pending,
}

impl Overflow {
    /// The limit's name, for messages and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Requests => "max_requests",
            Overflow::Pending => "max_pending_requests",
        }
    }
}

impl From<Overflow> for ProxyError {
    fn from(o: Overflow) -> Self {
        ProxyError::Overloaded(o.as_str())
    }
}

/// The live counters of one service.
#[derive(Debug)]
pub struct Breaker {
    limits: Limits,
    requests: AtomicUsize,
    pending: AtomicUsize,
    connections: AtomicUsize,
    /// Woken when a connection closes (room for a new one).
    closed: Notify,
    metrics: BreakerMetrics,
}

impl Breaker {
    /// A breaker with these limits.
    pub fn new(limits: Limits, metrics: BreakerMetrics) -> Arc<Self> {
        Arc::new(Self {
            limits,
            requests: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            closed: Notify::new(),
            metrics,
        })
    }

    /// Admits a request, or refuses it over `max_requests`.
    pub fn admit(self: &Arc<Self>) -> Result<Place, Overflow> {
        let before = self.requests.fetch_add(1, Ordering::AcqRel);
        if before >= self.limits.max_requests {
            self.requests.fetch_sub(1, Ordering::AcqRel);
            self.metrics.overflow(BreakerLimit::Requests);
            return Err(Overflow::Requests);
        }
        Ok(Place::new(self.clone()))
    }

    /// Reserves room for a new connection; `None` at `max_connections`.
    pub fn reserve_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let mut n = self.connections.load(Ordering::Acquire);
        loop {
            if n >= self.limits.max_connections {
                self.metrics.set_open(true);
                return None;
            }
            match self.connections.compare_exchange_weak(
                n,
                n + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(ConnectionSlot(self.clone())),
                Err(current) => n = current,
            }
        }
    }

    /// Counts the caller as waiting for a connection, or refuses it over
    /// `max_pending_requests`.
    pub fn wait_slot(self: &Arc<Self>) -> Result<PendingPermit, Overflow> {
        let before = self.pending.fetch_add(1, Ordering::AcqRel);
        if before >= self.limits.max_pending_requests {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.metrics.overflow(BreakerLimit::Pending);
            return Err(Overflow::Pending);
        }
        Ok(PendingPermit(self.clone()))
    }

    /// Resolves when a connection of the service closes.
    pub fn connection_closed(&self) -> tokio::sync::futures::Notified<'_> {
        self.closed.notified()
    }

    /// Requests in flight.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    fn settle(&self) {
        let saturated = self.requests.load(Ordering::Acquire) >= self.limits.max_requests
            || self.connections.load(Ordering::Acquire) >= self.limits.max_connections;
        if !saturated {
            self.metrics.set_open(false);
        }
    }
}

/// A request's place under `max_requests` ends (its `Place` was dropped).
impl Release for Breaker {
    fn release(&self) {
        self.requests.fetch_sub(1, Ordering::AcqRel);
        self.settle();
    }
}

/// A connection counted against `max_connections` until dropped (when it closes).
#[derive(Debug)]
pub struct ConnectionSlot(Arc<Breaker>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.closed.notify_one();
        self.0.settle();
    }
}

/// A request counted as waiting for a connection until dropped.
#[derive(Debug)]
pub struct PendingPermit(Arc<Breaker>);

impl Drop for PendingPermit {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl BreakerLayer ===

/// Builds [`CircuitBreaker`] services for one service's breaker.
#[derive(Debug, Clone)]
pub struct BreakerLayer(Arc<Breaker>);

impl BreakerLayer {
    /// Admits requests through `breaker`.
    pub fn new(breaker: Arc<Breaker>) -> Self {
        Self(breaker)
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker {
            breaker: self.0.clone(),
            inner,
        }
    }
}

/// Refuses a request over `max_requests` with [`Overflow`], and keeps an admitted one
/// counted until its response body ends (or the request fails): the place goes into the
/// request's context, and the outermost layer hands it to the response body.
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    breaker: Arc<Breaker>,
    inner: S,
}

impl<S> Service<Req> for CircuitBreaker<S>
where
    S: Stage,
{
    stack_service!();

    fn call(&mut self, req: Req) -> BoxFuture {
        match self.breaker.admit() {
            Ok(place) => {
                req.ctx.hold(place);
                self.inner.call(req)
            }
            Err(overflow) => Box::pin(std::future::ready(Err(overflow.into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> BreakerMetrics {
        crate::metrics::Metrics::new().breaker("svc")
    }

    #[test]
    fn limits_requests_and_releases_on_drop() {
        let m = metrics();
        let b = Breaker::new(
            Limits {
                max_requests: 2,
                ..Limits::default()
            },
            m.clone(),
        );
        let p1 = b.admit().unwrap();
        let _p2 = b.admit().unwrap();
        assert_eq!(b.admit().unwrap_err(), Overflow::Requests);
        assert_eq!(m.overflows(BreakerLimit::Requests), 1);
        assert!(m.is_open());
        drop(p1);
        assert!(!m.is_open());
        assert!(b.admit().is_ok());
    }

    #[tokio::test]
    async fn connections_and_pending() {
        let m = metrics();
        let b = Breaker::new(
            Limits {
                max_connections: 1,
                max_pending_requests: 1,
                max_requests: 10,
            },
            m.clone(),
        );
        let slot = b.reserve_connection().unwrap();
        assert!(b.reserve_connection().is_none());
        let waiting = b.wait_slot().unwrap();
        assert_eq!(b.wait_slot().unwrap_err(), Overflow::Pending);
        assert_eq!(m.overflows(BreakerLimit::Pending), 1);
        let notified = b.connection_closed();
        drop(slot);
        notified.await;
        drop(waiting);
        assert!(b.reserve_connection().is_some());
    }

    #[tokio::test]
    async fn the_layer_holds_a_place_until_the_response_body_ends() {
        use http_body_util::BodyExt;
        use tower::{Layer, Service};

        use crate::testing::{request, Mock};

        let m = metrics();
        let b = Breaker::new(
            Limits {
                max_requests: 1,
                ..Limits::default()
            },
            m.clone(),
        );
        let mock = Mock::statuses(&[200]);
        let mut svc = BreakerLayer::new(b.clone()).layer(mock.clone());
        // The place is the request's until its context lets go of it.
        let req = request("GET", "/", "");
        let ctx = req.ctx.clone();
        let resp = svc.call(req).await.unwrap();
        assert_eq!(b.requests(), 1);
        let resp = ctx.answer(resp);
        // The mock's body is one made here: it has ended, so the place is free at once.
        assert_eq!(b.requests(), 0);
        drop(resp);

        // A request still in flight holds its place; the next one is refused unsent.
        let _held = b.admit().unwrap();
        let err = svc.call(request("GET", "/", "")).await.unwrap_err();
        assert!(
            matches!(err, ProxyError::Overloaded("max_requests")),
            "{err}"
        );
        assert_eq!(mock.calls(), 1);
        assert_eq!(m.overflows(BreakerLimit::Requests), 1);
        drop(_held);
        let req = request("GET", "/", "");
        let ctx = req.ctx.clone();
        let body = ctx.answer(svc.call(req).await.unwrap()).into_body();
        body.collect().await.unwrap();
        drop(ctx);
        assert_eq!(b.requests(), 0);
    }
}
