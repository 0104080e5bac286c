//! Request mirroring per route: a share of requests is copied to a shadow service, whose
//! answer and failures never reach the caller. The copy goes out once the caller's request
//! body has been read (a tee keeps up to 64 KiB of it; larger bodies are not mirrored), with
//! `-shadow` appended to the host so the shadow can tell. At most `MAX_IN_FLIGHT` copies per
//! route are outstanding; further ones are dropped and counted, so a slow shadow can neither
//! slow callers down nor grow memory without bound.
//!
//! In the stack, `Mirror` sits under the circuit breaker and above request preparation: the
//! copy is the caller's request as it arrived, and it goes out through the shadow service's
//! own forwarding path (preparation, one try, its balancer and pools), the same code the
//! primary uses. It runs on its own task; its answer is read and dropped.

use std::{sync::Arc, time::Duration};

use crate::context::DownstreamUpgrade;
use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body::Body;
use http_body_util::BodyExt;
use prometheus::IntCounter;
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use super::deadline;
use crate::{
    body::{ProxyBody, Tee},
    context::{stack_service, BoxFuture, Ctx, Req, Stage},
    headers::host_without_port,
};

/// Mirror copies of one route outstanding at once.
pub const MAX_IN_FLIGHT: usize = 64;

/// Body bytes kept for the copy; larger bodies are not mirrored.
pub use crate::body::TEE_MAX_BODY as MAX_BODY;

/// A route's mirroring.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorPolicy {
    /// The shadow service.
    pub service: String,
    /// Share of requests copied, 0 to 100.
    pub percent: f64,
}

impl MirrorPolicy {
    /// Whether this request is copied.
    pub fn hit(&self) -> bool {
        fastrand::f64() * 100.0 < self.percent
    }
}

/// Bounds the copies in flight for one route.
#[derive(Debug)]
pub struct Limiter(Arc<Semaphore>);

impl Default for Limiter {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(MAX_IN_FLIGHT)))
    }
}

impl Limiter {
    /// A slot for one copy, or `None` when `MAX_IN_FLIGHT` are outstanding.
    pub fn try_acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

// === impl MirrorLayer ===

/// Where a route's copies go, and their counters.
#[derive(Debug)]
pub struct Shadow<M> {
    /// Which requests are copied.
    pub policy: MirrorPolicy,
    /// The shadow service's forwarding path.
    pub client: M,
    /// The route's timeout (a caller's deadline shortens it per request).
    pub timeout: Duration,
    /// Copies in flight.
    pub limiter: Limiter,
    /// Copies answered.
    pub sent: IntCounter,
    /// Copies that failed.
    pub failed: IntCounter,
    /// Copies dropped (limit reached, body too large or too slow).
    pub dropped: IntCounter,
}

/// Builds [`Mirror`] services for a route's shadow, if it has one.
#[derive(Debug)]
pub struct MirrorLayer<M>(Option<Arc<Shadow<M>>>);

impl<M> Clone for MirrorLayer<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M> MirrorLayer<M> {
    /// Mirrors to `shadow` (none: nothing is copied).
    pub fn new(shadow: Option<Shadow<M>>) -> Self {
        Self(shadow.map(Arc::new))
    }
}

impl<S, M> Layer<S> for MirrorLayer<M> {
    type Service = Mirror<S, M>;

    fn layer(&self, inner: S) -> Mirror<S, M> {
        Mirror {
            shadow: self.0.clone(),
            inner,
        }
    }
}

/// Sends the request on through `S`, and a drawn share of copies to the shadow.
#[derive(Debug)]
pub struct Mirror<S, M> {
    shadow: Option<Arc<Shadow<M>>>,
    inner: S,
}

impl<S: Clone, M> Clone for Mirror<S, M> {
    fn clone(&self) -> Self {
        Self {
            shadow: self.shadow.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S, M> Service<Req> for Mirror<S, M>
where
    S: Stage,
    M: Stage + Clone + Send + Sync + 'static,
{
    stack_service!();

    fn call(&mut self, mut req: Req) -> BoxFuture {
        if let Some(shadow) = &self.shadow {
            // An upgraded connection cannot be copied.
            if req.extensions().get::<DownstreamUpgrade>().is_none() && shadow.policy.hit() {
                copy(shadow, &mut req);
            }
        }
        self.inner.call(req)
    }
}

/// Starts the copy of `req` to the shadow, teeing `req`'s body for it.
fn copy<M>(shadow: &Arc<Shadow<M>>, req: &mut Req)
where
    M: Stage + Clone + Send + Sync + 'static,
{
    let Some(slot) = shadow.limiter.try_acquire() else {
        shadow.dropped.inc();
        return;
    };
    let body = if req.body().is_end_stream() {
        None
    } else {
        let inner = std::mem::replace(req.body_mut(), ProxyBody::empty());
        let (tee, rx) = Tee::new(inner);
        *req.body_mut() = ProxyBody::Tee(tee);
        Some(rx)
    };
    let timeout = deadline::effective(shadow.timeout, req.headers());
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    shadow_host(&mut copy);
    // The copy is a request of its own: its tags must not become the caller's.
    let ctx = Ctx::new(req.ctx.conn().clone());
    let shadow = shadow.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let bytes = match body {
            None => Bytes::new(),
            Some(rx) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(b)) => b,
                // Larger than the copy keeps, broken off, or too slow: no mirror.
                _ => {
                    shadow.dropped.inc();
                    return;
                }
            },
        };
        let req = Req::new(copy.map(|()| ProxyBody::full(bytes)), ctx);
        match shadow.client.clone().call(req).await {
            Ok(resp) => {
                let _ = tokio::time::timeout(timeout, resp.into_body().collect()).await;
                shadow.sent.inc();
            }
            Err(_) => shadow.failed.inc(),
        }
    });
}

/// `host` → `host-shadow` (port kept), in the URI authority and the `Host` header.
fn shadow_host<B>(req: &mut Request<B>) {
    let shadow = |authority: &str| {
        let host = host_without_port(authority);
        format!("{host}-shadow{}", &authority[host.len()..])
    };
    if let Some(a) = req.uri().authority().map(|a| a.as_str().to_owned()) {
        let mut parts = req.uri().clone().into_parts();
        parts.authority = shadow(&a).parse().ok();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    if let Some(h) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        if let Ok(v) = HeaderValue::from_str(&shadow(h)) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Layer, Service};

    use super::*;
    use crate::testing::{request, Mock};

    fn shadow(client: Mock, percent: f64) -> (MirrorLayer<Mock>, [IntCounter; 3]) {
        let c = |n: &str| IntCounter::new(n, n).unwrap();
        let counters = [c("sent"), c("failed"), c("dropped")];
        let layer = MirrorLayer::new(Some(Shadow {
            policy: MirrorPolicy {
                service: "shadow".into(),
                percent,
            },
            client,
            timeout: Duration::from_secs(5),
            limiter: Limiter::default(),
            sent: counters[0].clone(),
            failed: counters[1].clone(),
            dropped: counters[2].clone(),
        }));
        (layer, counters)
    }

    async fn settle(counter: &IntCounter, want: u64) {
        for _ in 0..1000 {
            if counter.get() >= want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("counter stayed at {}", counter.get());
    }

    #[tokio::test(start_paused = true)]
    async fn copies_go_to_the_shadow_host_with_the_body() {
        let primary = Mock::statuses(&[200]);
        let copies = Mock::statuses(&[500]);
        let (layer, [sent, _, _]) = shadow(copies.clone(), 100.0);
        let mut req = request("POST", "http://orders:8080/x", "payload");
        req.headers_mut()
            .insert(header::HOST, "orders:8080".parse().unwrap());
        let resp = layer.layer(primary.clone()).call(req).await.unwrap();
        assert_eq!(resp.status(), 200, "the caller gets the primary's answer");
        assert_eq!(primary.seen()[0].body, "payload");
        settle(&sent, 1).await;
        let copy = &copies.seen()[0];
        assert_eq!(copy.body, "payload");
        assert_eq!(copy.parts.headers[header::HOST], "orders-shadow:8080");
        assert_eq!(copy.parts.uri, "http://orders-shadow:8080/x");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_shadow_never_holds_the_caller_and_excess_copies_are_dropped() {
        let primary = Mock::statuses(&[200]);
        let stuck = Mock::statuses(&[200]).delayed(Duration::from_secs(3600));
        let (layer, [sent, _, dropped]) = shadow(stuck.clone(), 100.0);
        let mut svc = layer.layer(primary.clone());
        for _ in 0..MAX_IN_FLIGHT + 10 {
            let resp = svc.call(request("GET", "http://a/", "")).await.unwrap();
            assert_eq!(resp.status(), 200);
        }
        assert_eq!(primary.calls(), MAX_IN_FLIGHT + 10);
        assert_eq!(
            dropped.get(),
            10,
            "at most MAX_IN_FLIGHT copies are outstanding"
        );
        assert_eq!(sent.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_copied_at_zero_percent_or_for_upgrades() {
        let primary = Mock::statuses(&[200]);
        let copies = Mock::statuses(&[200]);
        let (layer, _) = shadow(copies.clone(), 0.0);
        layer
            .layer(primary.clone())
            .call(request("GET", "http://a/", ""))
            .await
            .unwrap();
        let (layer, _) = shadow(copies.clone(), 100.0);
        let mut req = request("GET", "http://a/", "");
        req.extensions_mut().insert(crate::testing::on_upgrade());
        layer.layer(primary.clone()).call(req).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(copies.calls(), 0);
        assert_eq!(primary.calls(), 2);
    }
}
