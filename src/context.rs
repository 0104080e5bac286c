//! The vocabulary every layer of the stack shares: the request as it travels (`Req`: the
//! HTTP request with its context beside it), the response, and the future type. The context
//! (`Ctx`) holds what the connection says about the caller (`ConnMeta`) and the tags the
//! stack learns on the way down (route, backend, endpoint), which the outermost layer reads
//! back for metrics and the access log.
//!
//! The context travels beside the request rather than in its extensions: an extension costs
//! three allocations and a hash lookup for every layer that reads it, on every request. The
//! tags sit behind a mutex that only the request's own task takes, each time for a field
//! write, so it is never contended and never held across an await.

use std::{
    future::Future,
    net::SocketAddr,
    ops::{Deref, DerefMut},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use http::{HeaderValue, Request, Response};

use crate::{
    body::{Place, ProxyBody},
    error::ProxyError,
    headers,
    metrics::Direction,
    metrics::RequestMetrics,
    tls::accept::ClientId,
};

/// A connection's byte stream, whatever is underneath.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The caller's side of an upgrade (a WebSocket after `101`, a tunnel after `CONNECT`), in
/// the request's extensions: hyper's own on HTTP/2, or the socket the listener hands over
/// once hyper's HTTP/1.1 connection gave it back.
/// (Clone, as extensions must be; only one clone gets the stream.)
#[derive(Debug, Clone)]
pub enum DownstreamUpgrade {
    /// hyper completes it (HTTP/2 `CONNECT`).
    Hyper(hyper::upgrade::OnUpgrade),
    /// The listener sends the socket, with the bytes already read after the request.
    Parked(Arc<Mutex<Option<Handover>>>),
}

/// Where the listener sends an upgraded caller's socket.
pub type Handover = tokio::sync::oneshot::Receiver<Box<dyn Io>>;

impl DownstreamUpgrade {
    /// One the listener will complete by sending the socket on the returned sender.
    pub fn parked() -> (tokio::sync::oneshot::Sender<Box<dyn Io>>, Self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            tx,
            DownstreamUpgrade::Parked(Arc::new(Mutex::new(Some(rx)))),
        )
    }

    /// The caller's stream once the upgrade is done.
    pub async fn ready(self) -> std::result::Result<Box<dyn Io>, crate::error::BoxError> {
        match self {
            DownstreamUpgrade::Hyper(on) => Ok(Box::new(hyper_util::rt::TokioIo::new(on.await?))),
            DownstreamUpgrade::Parked(slot) => {
                let rx = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                Ok(rx.ok_or("upgrade already taken")?.await?)
            }
        }
    }
}

impl std::fmt::Debug for dyn Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Io")
    }
}

/// A request on its way through the stack: the HTTP request (which it derefs to) and its
/// context.
#[derive(Debug)]
pub struct Req {
    /// The HTTP request, as it will be sent upstream once the layers have shaped it.
    pub http: Request<ProxyBody>,
    /// The request's context.
    pub ctx: Ctx,
    /// The time this try has for response headers, set by the retry layer for the endpoint
    /// layer below it (which applies it, so a timeout counts against the endpoint).
    pub try_timeout: Option<Duration>,
}

impl Req {
    /// `http` with the context `ctx`.
    pub fn new(http: Request<ProxyBody>, ctx: Ctx) -> Self {
        Self {
            http,
            ctx,
            try_timeout: None,
        }
    }
}

impl Deref for Req {
    type Target = Request<ProxyBody>;

    fn deref(&self) -> &Request<ProxyBody> {
        &self.http
    }
}

impl DerefMut for Req {
    fn deref_mut(&mut self) -> &mut Request<ProxyBody> {
        &mut self.http
    }
}
/// A response on its way back.
pub type Resp = Response<ProxyBody>;
/// What a layer of the stack returns: a response or the error the rescue turns into one.
pub type Result = std::result::Result<Resp, ProxyError>;
/// A layer's future. Boxed so a stack's future stays one pointer wide however deep it is
/// (futures are moved several times per request; see the pool's notes on `memmove`).
pub type BoxFuture = Pin<Box<dyn Future<Output = Result> + Send + 'static>>;

/// A service of the stack: it takes a `Req` and answers a `Resp` or a `ProxyError` through a
/// `BoxFuture`. Every layer is one, and wraps one.
pub trait Stage:
    tower::Service<Req, Response = Resp, Error = ProxyError, Future = BoxFuture>
{
}

impl<S> Stage for S where
    S: tower::Service<Req, Response = Resp, Error = ProxyError, Future = BoxFuture>
{
}

/// The associated types and `poll_ready` every layer of the stack shares: each answers with a
/// `Resp` or a `ProxyError` through a `BoxFuture`, and is always ready (the stack pushes back
/// by failing fast in its policies, never by readiness, so callers need not poll it).
macro_rules! stack_service {
    () => {
        type Response = $crate::context::Resp;
        type Error = $crate::error::ProxyError;
        type Future = $crate::context::BoxFuture;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::result::Result<(), $crate::error::ProxyError>> {
            std::task::Poll::Ready(Ok(()))
        }
    };
}
pub(crate) use stack_service;

/// What the handlers know about the downstream connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    /// The caller's address.
    pub peer: SocketAddr,
    /// The local address the caller connected to.
    pub local: SocketAddr,
    /// Where the caller was connecting before iptables redirected it here (transparent
    /// mode); `None` when it connected to the listener itself.
    pub original_dst: Option<SocketAddr>,
    /// Which listener.
    pub direction: Direction,
    /// Whether the connection is TLS (terminated here).
    pub tls: bool,
    /// The caller's SPIFFE ID, verified in the mTLS handshake.
    pub client_id: Option<ClientId>,
    /// The caller's address as an `x-forwarded-for` entry (made once per connection).
    pub forwarded_for: HeaderValue,
}

impl ConnMeta {
    /// A plaintext connection from `peer` to `local`.
    pub fn plain(peer: SocketAddr, local: SocketAddr, direction: Direction) -> Self {
        Self {
            peer,
            local,
            original_dst: None,
            direction,
            tls: false,
            client_id: None,
            forwarded_for: headers::forwarded_for(peer.ip()),
        }
    }
}

/// What one request turned into so far, for metrics and the access log.
#[derive(Debug, Default)]
pub struct Tags {
    /// Route name; `None` until a route took the request.
    pub route: Option<Arc<str>>,
    /// Backend service name; `None` until one was chosen.
    pub service: Option<Arc<str>>,
    /// Metric handles to record the answer with (the most specific known so far).
    pub metrics: Option<RequestMetrics>,
    /// The endpoint of the latest try.
    pub endpoint: Option<SocketAddr>,
    /// Endpoints of earlier tries, which a retry avoids where it can.
    pub tried: Vec<SocketAddr>,
    /// The latest try's wait from sending to response headers (connecting included).
    pub upstream_response: Option<std::time::Duration>,
    /// How long the latest try took to open its connection, when it opened one.
    pub upstream_connect: Option<std::time::Duration>,
    /// Every try, kept only for a request whose span is sampled (`None`: not recording).
    pub attempts: Option<Vec<Attempt>>,
    /// The request's place in its service's circuit breaker, until the response body holds it.
    pub place: Option<Place>,
    /// What the route's cache did (`hit`, `miss`, ...), on a caching route.
    pub cache: Option<&'static str>,
}

/// One try of a request at an endpoint, for its span's events.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Where it went.
    pub endpoint: SocketAddr,
    /// When it began (the span turns this into wall-clock time from its own start).
    pub began: std::time::Instant,
    /// How long it took to the response headers (or the failure).
    pub elapsed: std::time::Duration,
    /// The upstream's status, or the reason the try failed.
    pub outcome: std::result::Result<u16, &'static str>,
}

/// The context of one request. Cheap to clone: each try of a retried request carries it.
#[derive(Debug, Clone)]
pub struct Ctx(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    conn: ConnMeta,
    tags: Mutex<Tags>,
    /// Request body bytes received from the caller (set when the body is done with).
    received: std::sync::atomic::AtomicU64,
    /// Whether tries are recorded (read without the tags' lock, on every try).
    recording: std::sync::atomic::AtomicBool,
}

impl Ctx {
    /// A fresh context for a request on `conn`.
    pub fn new(conn: ConnMeta) -> Self {
        Self(Arc::new(Inner {
            conn,
            tags: Mutex::default(),
            received: Default::default(),
            recording: Default::default(),
        }))
    }

    /// The connection the request arrived on.
    pub fn conn(&self) -> &ConnMeta {
        &self.0.conn
    }

    /// The tags, for a short read or write (never hold the guard across an await).
    pub fn tags(&self) -> MutexGuard<'_, Tags> {
        self.0.tags.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `route` took the request.
    pub fn set_route(&self, route: &Arc<str>, metrics: &RequestMetrics) {
        let mut t = self.tags();
        t.route = Some(route.clone());
        t.metrics = Some(metrics.clone());
    }

    /// Records the backend service chosen for the request.
    pub fn set_service(&self, service: &Arc<str>, metrics: &RequestMetrics) {
        let mut t = self.tags();
        t.service = Some(service.clone());
        t.metrics = Some(metrics.clone());
    }

    /// Records the endpoint a try goes to.
    pub fn set_endpoint(&self, endpoint: SocketAddr) {
        self.tags().endpoint = Some(endpoint);
    }

    /// Keeps `place` for the request; [`Ctx::answer`] hands it to the response body.
    pub fn hold(&self, place: Place) {
        self.tags().place = Some(place);
    }

    /// The response the caller gets: it holds the request's place until its body ends.
    pub fn answer(&self, resp: Resp) -> Resp {
        match self.tags().place.take() {
            Some(place) => resp.map(|b| b.with_permit(place)),
            None => resp,
        }
    }

    /// Keeps a record of every try from now on (for a sampled span).
    pub fn record_attempts(&self) {
        self.tags().attempts = Some(Vec::new());
        self.0
            .recording
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether tries are being recorded.
    pub fn recording(&self) -> bool {
        self.0.recording.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records a try at `endpoint` that began at `began` and ended (now) in `result`, if
    /// tries are being recorded.
    pub fn attempted(&self, endpoint: SocketAddr, began: std::time::Instant, result: &Result) {
        let mut tags = self.tags();
        if let Some(attempts) = &mut tags.attempts {
            attempts.push(Attempt {
                endpoint,
                began,
                elapsed: began.elapsed(),
                outcome: match result {
                    Ok(r) => Ok(r.status().as_u16()),
                    Err(e) => Err(e.reason()),
                },
            });
        }
    }

    /// Records how many request body bytes the caller sent.
    pub fn set_received(&self, bytes: u64) {
        self.0
            .received
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Request body bytes the caller sent, as far as counted.
    pub fn received(&self) -> u64 {
        self.0.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts a new try: the latest endpoint joins those to avoid.
    pub fn next_try(&self) {
        let mut t = self.tags();
        if let Some(ep) = t.endpoint.take() {
            t.tried.push(ep);
        }
    }
}
