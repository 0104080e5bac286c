//! Connection pools for one upstream target, built on hyper's connection API.
//!
//! HTTP/1.1: a stack of idle connections, most recently used first; a connection returns to
//! it only when its response body has ended (a `Lease` carried by the body), so a request
//! never waits behind another. HTTP/2: one multiplexed connection, shared. When it must be
//! (re)opened, the first request to see that opens it and the others wait on a `watch` for
//! its outcome; no lock is held while connecting. If that request gives up midway, the next
//! waiter takes over.
//!
//! A request that fails on a reused connection before any of it was written (the peer had
//! closed the idle connection) is sent again on another one. Idle connections are closed
//! after the idle timeout by a sweeper task that ends with the pool.
//!
//! A pool that may choose its protocol (`protocol: auto`) finds out whether the peer speaks
//! HTTP/2 before it sends a request over it: over mTLS by ALPN (it offers both), in plaintext
//! by sending the HTTP/2 connection preface's magic and reading the first byte back (an
//! HTTP/2 server answers with a SETTINGS frame, an HTTP/1 server with `HTTP/1.x 400` or a
//! close). A peer without HTTP/2 is remembered, and its requests go over HTTP/1.1 from then
//! on, the one that found out included: nothing of it was sent yet. The other way round, a
//! first HTTP/1.1 connection whose peer answers with HTTP/2 frames (an HTTP/2-only server,
//! such as a gRPC one) marks the peer HTTP/2-only: its HTTP/1.1 requests are translated to
//! HTTP/2 from then on, the one that found out included when it had no body.
//!
//! Written here rather than using hyper-util's generic pooled client: this one costs a
//! fraction per request (measured with `benches/load.sh`), and later layers (circuit
//! breakers, outlier detection) need to see and bound each endpoint's connections. The idle
//! stack sits behind a `std` mutex held only for a push or a pop, never across an await.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Arc, Mutex, Weak,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use http::{header, HeaderValue, Request, Response, Uri, Version};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    sync::{watch, Notify},
    time::Instant,
};

use super::connector::{self, ConnectError, Stream, Target};
use crate::{
    body::{Home, Lease, ProxyBody},
    resilience::breaker::{Breaker, ConnectionSlot, Overflow},
    tls::connect::{Alpn, OriginateError, Originator},
};

/// The HTTP/2 preface's first part (RFC 9113 §3.4); its SETTINGS frame follows from hyper.
const H2_MAGIC: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest a plaintext peer may take to answer the preface before it is taken to speak
/// HTTP/2 (an HTTP/1 server answers at once; an HTTP/2 server may wait for our SETTINGS).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What a pool knows of its peer's HTTP/2: nothing yet, that it speaks it, that it does
/// not, that it speaks nothing else.
const H2_UNKNOWN: u8 = 0;
const H2_YES: u8 = 1;
const H2_NO: u8 = 2;
const H2_ONLY: u8 = 3;

/// Why a request could not be exchanged.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection opened but the HTTP handshake or the exchange failed.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The service's circuit breaker refused the request.
    #[error("circuit breaker: {} reached", .0.as_str())]
    Overloaded(Overflow),
    /// The TLS handshake failed (the server's identity included).
    #[error(transparent)]
    Tls(#[from] OriginateError),
    /// The deadline passed before response headers came.
    #[error("no response headers before the deadline")]
    Timeout,
    /// The peer does not speak HTTP/2 (ALPN or its answer to the preface said so).
    #[error("the peer does not speak HTTP/2")]
    NoHttp2,
    /// Opening the shared HTTP/2 connection failed for the request that opened it, and so for
    /// every request that waited on it too.
    #[error(transparent)]
    Shared(Arc<PoolError>),
}

/// Pooled connections to one target. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    target: Target,
    connect_timeout: Duration,
    idle_timeout: Duration,
    http1: Mutex<Vec<Idle>>,
    http2: Mutex<H2>,
    sweeping: std::sync::Once,
    /// The service's breaker, which counts this pool's connections.
    breaker: Option<Arc<Breaker>>,
    /// Woken when a connection comes back to `http1`.
    returned: Notify,
    /// Originates mTLS on every connection, when the service says so.
    tls: Option<Arc<Originator>>,
    /// Whether the pool finds out if the peer speaks HTTP/2 and falls back to HTTP/1.1.
    negotiate: bool,
    /// What it found: `H2_UNKNOWN`, `H2_YES`, `H2_NO` or `H2_ONLY`.
    h2: AtomicU8,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

/// The state of the shared HTTP/2 connection.
#[derive(Debug)]
enum H2 {
    /// None yet, or the last one was swept.
    Empty,
    /// Open (or closed since, which the next request notices).
    Ready(Shared),
    /// A request is opening one; the others wait for its outcome.
    Connecting(watch::Receiver<Option<Opened>>),
}

/// The outcome of opening the HTTP/2 connection, for those who waited.
type Opened = Result<Shared, Arc<PoolError>>;

#[derive(Debug, Clone)]
struct Shared {
    sender: http2::SendRequest<ProxyBody>,
    /// Which connection this is; a retry asks for a newer one.
    generation: u64,
    last_used: Instant,
}

/// Where a leased connection goes back to when its response body ends.
impl Home for Inner {
    fn give_back(&self, sender: http1::SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let idle = Idle {
            sender,
            since: Instant::now(),
        };
        self.http1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(idle);
        self.returned.notify_one();
    }
}

impl Pool {
    /// A pool for `target`; connections are opened on demand, over mTLS with `tls`. With
    /// `negotiate` (`protocol: auto`), HTTP/2 requests fall back to HTTP/1.1 for a peer that
    /// does not speak HTTP/2.
    pub fn new(
        target: Target,
        connect_timeout: Duration,
        idle_timeout: Duration,
        breaker: Option<Arc<Breaker>>,
        tls: Option<Arc<Originator>>,
        negotiate: bool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                target,
                connect_timeout,
                idle_timeout,
                http1: Mutex::new(Vec::new()),
                http2: Mutex::new(H2::Empty),
                sweeping: std::sync::Once::new(),
                breaker,
                returned: Notify::new(),
                tls,
                negotiate,
                h2: AtomicU8::new(H2_UNKNOWN),
            }),
        }
    }

    /// Whether the peer is known not to speak HTTP/2.
    pub fn lacks_http2(&self) -> bool {
        self.inner.h2.load(Ordering::Relaxed) == H2_NO
    }

    /// Where the pool connects.
    pub fn target(&self) -> &Target {
        &self.inner.target
    }

    /// Whether `self` and `other` are handles of the same pool.
    pub fn same_as(&self, other: &Pool) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Idle HTTP/1.1 connections (for tests and metrics).
    pub fn idle_http1(&self) -> usize {
        self.inner.http1.lock().map_or(0, |v| v.len())
    }

    /// Sends `req` (HTTP/2 when its version says so) and returns the response, with the lease
    /// to give back when an HTTP/1.1 response body ends (none for HTTP/2 and upgrades); fails
    /// with `Timeout` when `deadline` passes first.
    ///
    /// The deadline is applied here, to each wait, rather than around this whole future: that
    /// future is large, and wrapping it would copy it on every request.
    /// When the request opens a new connection (HTTP/1.1, or the shared HTTP/2 one),
    /// `connected` gets how long opening it took (TCP, TLS to another sidecar, and HTTP/2's
    /// handshake).
    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
        deadline: Option<Instant>,
        connected: &mut Option<std::time::Duration>,
    ) -> Result<(Response<Incoming>, Option<Lease>), PoolError> {
        if req.version() == Version::HTTP_2 {
            if !(self.inner.negotiate && self.lacks_http2()) {
                // Boxed, like the translations below: HTTP/2's state would otherwise make the
                // future of every HTTP/1.1 request larger too, and futures are moved.
                match Box::pin(self.send_http2(req, deadline, connected)).await {
                    Ok(resp) => return Ok((resp, None)),
                    Err((PoolError::NoHttp2, Some(unsent))) => req = unsent,
                    Err((e, _)) => return Err(e),
                }
            }
            req = to_http1(req);
        } else if self.inner.negotiate && self.inner.h2.load(Ordering::Relaxed) == H2_ONLY {
            return self
                .send_translated(to_http2(req), deadline, connected)
                .await;
        }
        let mut waiting = None;
        let slot = loop {
            // Reused connections first; one the peer closed gives the request back unsent.
            while let Some(mut sender) = self.inner.take_idle() {
                if sender.ready().await.is_err() {
                    continue;
                }
                match within(deadline, sender.try_send_request(req)).await? {
                    Ok(resp) => return Ok(self.lease(resp, sender)),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(e.into_error().into()),
                    },
                }
            }
            let Some(breaker) = &self.inner.breaker else {
                break None;
            };
            if let Some(slot) = breaker.reserve_connection() {
                break Some(slot);
            }
            // At max_connections: wait, as one of at most max_pending_requests, for a
            // connection of this pool to come back or one of the service's to close.
            if waiting.is_none() {
                waiting = Some(breaker.wait_slot().map_err(PoolError::Overloaded)?);
            }
            within(deadline, async {
                tokio::select! {
                    _ = self.inner.returned.notified() => {}
                    _ = breaker.connection_closed() => {}
                }
            })
            .await?;
        };
        drop(waiting);
        // Boxed: opening a connection is rare, and its state (TCP, TLS, the handshake) would
        // otherwise make every request's future several KiB larger, and futures are moved.
        // A new connection to a peer that may speak only HTTP/2 (nothing known, or only that
        // it speaks HTTP/2) watches for its frames, and keeps what it needs to send a bodiless
        // request again. New connections are rare; this costs nothing per request.
        let state = self.inner.h2.load(Ordering::Relaxed);
        let sniff = (self.inner.negotiate && matches!(state, H2_UNKNOWN | H2_YES))
            .then(|| Arc::new(AtomicBool::new(false)));
        let again = sniff
            .as_ref()
            .filter(|_| http_body::Body::is_end_stream(req.body()))
            .map(|_| head_only(&req));
        let connect = self.connect_http1(slot, sniff.clone());
        let opening = Instant::now();
        let mut sender = within(deadline, Box::pin(connect)).await??;
        *connected = Some(opening.elapsed());
        match within(deadline, sender.try_send_request(req)).await? {
            Ok(resp) => Ok(self.lease(resp, sender)),
            Err(e) => {
                if sniff.is_some_and(|s| s.load(Ordering::Relaxed)) {
                    self.inner.h2.store(H2_ONLY, Ordering::Relaxed);
                    tracing::debug!(target = %self.inner.target, "peer speaks only HTTP/2; translating");
                    if let Some(req) = again {
                        return self
                            .send_translated(to_http2(req), deadline, connected)
                            .await;
                    }
                }
                Err(e.into_error().into())
            }
        }
    }

    /// Sends an HTTP/1.1 caller's request translated to HTTP/2.
    async fn send_translated(
        &self,
        req: Request<ProxyBody>,
        deadline: Option<Instant>,
        connected: &mut Option<std::time::Duration>,
    ) -> Result<(Response<Incoming>, Option<Lease>), PoolError> {
        Box::pin(self.send_http2(req, deadline, connected))
            .await
            .map(|resp| (resp, None))
            .map_err(|(e, _)| e)
    }

    fn lease(
        &self,
        resp: Response<Incoming>,
        sender: http1::SendRequest<ProxyBody>,
    ) -> (Response<Incoming>, Option<Lease>) {
        // After a 101 the connection belongs to the upgrade.
        let lease = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS).then(|| {
            let home: Weak<dyn Home> = Arc::downgrade(&self.inner) as Weak<Inner>;
            Lease::new(home, sender)
        });
        (resp, lease)
    }

    /// Sends over the shared HTTP/2 connection. On failure the request comes back when none
    /// of it was sent and the peer turned out not to speak HTTP/2 (`NoHttp2`).
    async fn send_http2(
        &self,
        mut req: Request<ProxyBody>,
        deadline: Option<Instant>,
        connected: &mut Option<std::time::Duration>,
    ) -> Result<Response<Incoming>, (PoolError, Option<Request<ProxyBody>>)> {
        own_head(&mut req);
        let mut failed = None;
        loop {
            let shared = match within(deadline, self.http2_sender(failed, connected)).await {
                Ok(Ok(shared)) => shared,
                Ok(Err(e)) if e.is_no_http2() => return Err((PoolError::NoHttp2, Some(req))),
                Ok(Err(e)) | Err(e) => return Err((e, None)),
            };
            let mut sender = shared.sender;
            match within(deadline, sender.try_send_request(req)).await {
                Err(e) => return Err((e, None)),
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(mut e)) => match e.take_message() {
                    // The connection went away before the request was written: once more,
                    // on a newer connection.
                    Some(unsent) if failed.is_none() => {
                        req = unsent;
                        failed = Some(shared.generation);
                    }
                    _ => return Err((e.into_error().into(), None)),
                },
            }
        }
    }

    /// The shared HTTP/2 connection, opened when there is none, it closed, or it is the
    /// generation `stale` (a request failed on it); `connected` gets how long opening took
    /// when this request opened it.
    async fn http2_sender(
        &self,
        stale: Option<u64>,
        connected: &mut Option<std::time::Duration>,
    ) -> Result<Shared, PoolError> {
        loop {
            let lead = {
                let mut state = self.inner.http2.lock().unwrap_or_else(|p| p.into_inner());
                match &mut *state {
                    H2::Ready(s) if !s.sender.is_closed() && Some(s.generation) != stale => {
                        s.last_used = Instant::now();
                        return Ok(s.clone());
                    }
                    H2::Connecting(rx) => Err(rx.clone()),
                    other => {
                        let generation = match other {
                            H2::Ready(s) => s.generation + 1,
                            _ => 0,
                        };
                        let (tx, rx) = watch::channel(None);
                        *other = H2::Connecting(rx);
                        Ok((tx, generation))
                    }
                }
            };
            let mut waiting = match lead {
                // Boxed, like the HTTP/1.1 connect path.
                Ok((tx, generation)) => {
                    return Box::pin(self.open_http2(tx, generation, connected)).await
                }
                Err(rx) => rx,
            };
            // Another request is connecting: wait for its outcome. If it gave up (its sender
            // dropped), go round and take over.
            let outcome = waiting
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|v| v.clone());
            match outcome {
                Some(Ok(shared)) => return Ok(shared),
                Some(Err(e)) => return Err(PoolError::Shared(e)),
                None => {
                    let mut state = self.inner.http2.lock().unwrap_or_else(|p| p.into_inner());
                    if matches!(&*state, H2::Connecting(rx) if rx.same_channel(&waiting)) {
                        *state = H2::Empty;
                    }
                    drop(state);
                }
            }
        }
    }

    /// Opens the shared HTTP/2 connection and tells the waiters how it went.
    async fn open_http2(
        &self,
        tx: watch::Sender<Option<Opened>>,
        generation: u64,
        connected: &mut Option<std::time::Duration>,
    ) -> Result<Shared, PoolError> {
        // Dropped without an outcome (this request gave up): the state is reset by a waiter,
        // or by the next request to find the channel closed.
        let opened = async {
            let room = self.http2_slot().await?;
            let opening = Instant::now();
            let sender = self.connect_http2(room).await?;
            *connected = Some(opening.elapsed());
            Ok::<_, PoolError>(sender)
        }
        .await;
        let mut state = self.inner.http2.lock().unwrap_or_else(|p| p.into_inner());
        match opened {
            Ok(sender) => {
                let shared = Shared {
                    sender,
                    generation,
                    last_used: Instant::now(),
                };
                *state = H2::Ready(shared.clone());
                let _ = tx.send(Some(Ok(shared.clone())));
                Ok(shared)
            }
            Err(e) => {
                *state = H2::Empty;
                let e = Arc::new(e);
                let _ = tx.send(Some(Err(e.clone())));
                Err(PoolError::Shared(e))
            }
        }
    }

    /// Room for the HTTP/2 connection under the breaker's `max_connections`.
    async fn http2_slot(&self) -> Result<Option<ConnectionSlot>, PoolError> {
        let Some(breaker) = &self.inner.breaker else {
            return Ok(None);
        };
        let mut waiting = None;
        loop {
            if let Some(slot) = breaker.reserve_connection() {
                return Ok(Some(slot));
            }
            if waiting.is_none() {
                waiting = Some(breaker.wait_slot().map_err(PoolError::Overloaded)?);
            }
            breaker.connection_closed().await;
        }
    }

    /// Opens a connection to the target, over mTLS (offering `alpn`) when the service says
    /// so.
    async fn open(&self, alpn: Alpn) -> Result<Stream, PoolError> {
        let tcp = connector::connect(&self.inner.target, self.inner.connect_timeout).await?;
        match &self.inner.tls {
            None => Ok(Stream::Plain(tcp)),
            // Boxed: the handshake's state is large, and inline it would grow every request's
            // future (moved several times per request), plaintext pools' too.
            Some(tls) => {
                let handshake = Box::pin(tls.connect(tcp, alpn, self.inner.connect_timeout));
                Ok(Stream::Tls(Box::new(handshake.await?)))
            }
        }
    }

    /// Opens a connection for HTTP/2: when negotiating, one on which the peer showed it
    /// speaks HTTP/2 (else `NoHttp2`, remembered).
    async fn open_for_http2(&self) -> Result<Primed, PoolError> {
        let known = matches!(self.inner.h2.load(Ordering::Relaxed), H2_YES | H2_ONLY);
        if !self.inner.negotiate || known {
            return Ok(Primed::plain(self.open(Alpn::Http2).await?));
        }
        let stream = self.open(Alpn::Either).await?;
        let primed = match &stream {
            Stream::Tls(tls) => {
                let h2 = tls.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2);
                h2.then(|| Primed::plain(stream))
            }
            Stream::Plain(_) => probe(stream).await?,
        };
        match primed {
            Some(p) => {
                // What an HTTP/1.1 connection found (HTTP/2 only) says more: keep it.
                let _ = self.inner.h2.compare_exchange(
                    H2_UNKNOWN,
                    H2_YES,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                Ok(p)
            }
            None => {
                self.inner.h2.store(H2_NO, Ordering::Relaxed);
                tracing::debug!(target = %self.inner.target, "peer does not speak HTTP/2; using HTTP/1.1");
                Err(PoolError::NoHttp2)
            }
        }
    }

    /// Opens an HTTP/1.1 connection; `slot` (its place under the breaker) is held until the
    /// connection closes.
    async fn connect_http1(
        &self,
        slot: Option<ConnectionSlot>,
        sniff: Option<Arc<AtomicBool>>,
    ) -> Result<http1::SendRequest<ProxyBody>, PoolError> {
        let stream = self.open(Alpn::Http1).await?;
        // Only a connection that watches for HTTP/2 frames pays for the wrapper.
        let sender = match sniff {
            None => serve_http1(stream, slot).await?,
            Some(sniff) => {
                let mut primed = Primed::plain(stream);
                primed.sniff = Some(sniff);
                serve_http1(primed, slot).await?
            }
        };
        self.start_sweeper();
        Ok(sender)
    }

    async fn connect_http2(
        &self,
        slot: Option<ConnectionSlot>,
    ) -> Result<http2::SendRequest<ProxyBody>, PoolError> {
        let stream = self.open_for_http2().await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        self.start_sweeper();
        Ok(sender)
    }

    /// Closes idle connections past the idle timeout, until the pool is dropped.
    fn start_sweeper(&self) {
        self.inner.sweeping.call_once(|| {
            let weak = Arc::downgrade(&self.inner);
            let period = (self.inner.idle_timeout / 2).max(Duration::from_millis(100));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(period).await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.sweep();
                }
            });
        });
    }
}

impl PoolError {
    /// Whether this (or the shared failure it stands for) says the peer lacks HTTP/2.
    fn is_no_http2(&self) -> bool {
        match self {
            PoolError::NoHttp2 => true,
            PoolError::Shared(inner) => inner.is_no_http2(),
            _ => false,
        }
    }
}

/// The HTTP/1.1 form of a request prepared for HTTP/2: `Host` from the authority, the target
/// in origin form.
fn to_http1(req: Request<ProxyBody>) -> Request<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    parts.version = Version::HTTP_11;
    // A peer without HTTP/2 is no sidecar: the note for one goes.
    parts.headers.remove(crate::headers::ORIG_PROTO);
    if let (false, Some(a)) = (
        parts.headers.contains_key(header::HOST),
        parts.uri.authority(),
    ) {
        if let Ok(host) = HeaderValue::from_str(a.as_str()) {
            parts.headers.insert(header::HOST, host);
        }
    }
    if let Some(pq) = parts.uri.path_and_query().cloned() {
        parts.uri = Uri::from(pq);
    }
    Request::from_parts(parts, body)
}

/// Gives the header values and the authority of a request for the shared HTTP/2 connection
/// buffers of their own: its HPACK table keeps what it indexes for the connection's life, and
/// a parser's values are slices of the caller's read buffer, which would stay pinned with them
/// (`headers::own_values`). `:path` is never indexed, so the path stays where it is.
fn own_head(req: &mut Request<ProxyBody>) {
    crate::headers::own_values(req.headers_mut());
    let Some(authority) = req.uri().authority() else {
        return;
    };
    let Ok(own) = http::uri::Authority::try_from(authority.as_str().as_bytes()) else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.authority = Some(own);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// The HTTP/2 form of an HTTP/1.1 request: the authority from `Host`, the target absolute.
fn to_http2(req: Request<ProxyBody>) -> Request<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    parts.version = Version::HTTP_2;
    let authority = parts
        .headers
        .remove(header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
    if let Some(authority) = authority {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(authority);
        uri.path_and_query = parts.uri.path_and_query().cloned();
        if let Ok(u) = Uri::from_parts(uri) {
            parts.uri = u;
        }
    }
    Request::from_parts(parts, body)
}

/// A bodiless copy of `req` (method, target, version, headers), to send again.
fn head_only(req: &Request<ProxyBody>) -> Request<ProxyBody> {
    let mut copy = Request::new(ProxyBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Sends the preface's magic on a plaintext connection and reads what comes back: an HTTP/2
/// server's first frame (a SETTINGS frame, whose length starts with a zero byte), or an
/// HTTP/1 server's `HTTP/1.1 400` or close. Silence up to `PROBE_TIMEOUT` is taken as HTTP/2.
/// `None`: the peer does not speak HTTP/2.
async fn probe(stream: Stream) -> Result<Option<Primed>, PoolError> {
    let Stream::Plain(mut tcp) = stream else {
        return Ok(Some(Primed::plain(stream)));
    };
    let addr = tcp
        .peer_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let io = |source: io::Error| PoolError::Connect(ConnectError::Io { addr, source });
    tcp.write_all(H2_MAGIC).await.map_err(io)?;
    let mut first = [0u8; 1];
    let answer = match tokio::time::timeout(PROBE_TIMEOUT, tcp.read(&mut first)).await {
        Err(_) => Bytes::new(),
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(_)) if first[0] == b'H' => return Ok(None),
        Ok(Ok(_)) => Bytes::copy_from_slice(&first),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
        Ok(Err(e)) => return Err(io(e)),
    };
    Ok(Some(Primed {
        inner: Stream::Plain(tcp),
        read_back: answer,
        skip: H2_MAGIC.len(),
        sniff: None,
    }))
}

/// A connection as hyper gets it: after a probe, what the probe read is read again and the
/// magic hyper writes first is swallowed (the probe sent it); with `sniff`, the first byte
/// read says whether the peer answered with HTTP/2 frames (a frame's length starts with a
/// zero byte; an HTTP/1 response with `H`).
#[derive(Debug)]
struct Primed {
    inner: Stream,
    read_back: Bytes,
    skip: usize,
    sniff: Option<Arc<AtomicBool>>,
}

impl Primed {
    fn plain(inner: Stream) -> Self {
        Self {
            inner,
            read_back: Bytes::new(),
            skip: 0,
            sniff: None,
        }
    }
}

impl AsyncRead for Primed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read_back.is_empty() {
            let n = self.read_back.len().min(buf.remaining());
            buf.put_slice(&self.read_back[..n]);
            self.read_back.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Some(sniff), Poll::Ready(Ok(()))) = (&self.sniff, &polled) {
            if let Some(&first) = buf.filled().get(before) {
                sniff.store(first == 0, Ordering::Relaxed);
                self.sniff = None;
            }
        }
        polled
    }
}

impl AsyncWrite for Primed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            self.skip -= n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The HTTP/1.1 handshake on `io`, its connection task spawned; `slot` (its place under the
/// breaker) is held until the connection closes.
async fn serve_http1<IO>(
    io: IO,
    slot: Option<ConnectionSlot>,
) -> Result<http1::SendRequest<ProxyBody>, PoolError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// `f`'s output, unless `deadline` passes first.
fn within<F: std::future::Future>(deadline: Option<Instant>, f: F) -> Within<F> {
    match deadline {
        None => Within::Unbounded { f },
        Some(d) => Within::Bounded {
            f: tokio::time::timeout_at(d, f),
        },
    }
}

pin_project_lite::pin_project! {
    /// [`within`]'s future: a named one, as an `async fn`'s would keep a second copy of `f`
    /// (a request on its way, hundreds of bytes) and copy it again at each step.
    #[project = WithinProj]
    enum Within<F> {
        Unbounded { #[pin] f: F },
        Bounded { #[pin] f: tokio::time::Timeout<F> },
    }
}

impl<F: std::future::Future> std::future::Future for Within<F> {
    type Output = Result<F::Output, PoolError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            WithinProj::Unbounded { f } => f.poll(cx).map(Ok),
            WithinProj::Bounded { f } => f.poll(cx).map(|r| r.map_err(|_| PoolError::Timeout)),
        }
    }
}

impl Inner {
    fn take_idle(&self) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = self.http1.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && conn.since.elapsed() < self.idle_timeout {
                return Some(conn.sender);
            }
        }
        None
    }

    fn sweep(&self) {
        let timeout = self.idle_timeout;
        self.http1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c| !c.sender.is_closed() && c.since.elapsed() < timeout);
        let mut state = self.http2.lock().unwrap_or_else(|p| p.into_inner());
        if let H2::Ready(s) = &*state {
            if s.sender.is_closed() || s.last_used.elapsed() >= timeout {
                *state = H2::Empty;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against real servers on 127.0.0.1: a raw HTTP/1.1 one that numbers its connections and
    //! can close them, and hyper's HTTP/2 server.

    use std::{
        net::SocketAddr,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use http_body_util::BodyExt;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// How the HTTP/1.1 test server treats a connection after each response.
    #[derive(Clone, Copy, PartialEq)]
    enum After {
        KeepAlive,
        /// Close the socket once the response is written, without saying so.
        Close,
    }

    /// Serves `x-conn: N` (N counts connections from 1) on every request.
    async fn h1_server(after: After) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let id = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-conn: {id}\r\n\r\nok"
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        if after == After::Close {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn pool(addr: SocketAddr, idle: Duration) -> Pool {
        Pool::new(
            Target::Addr(addr),
            Duration::from_secs(1),
            idle,
            None,
            None,
            false,
        )
    }

    fn get(version: Version) -> Request<ProxyBody> {
        Request::builder()
            .uri(if version == Version::HTTP_2 {
                "http://t/"
            } else {
                "/"
            })
            .header(http::header::HOST, "t")
            .version(version)
            .body(ProxyBody::empty())
            .unwrap()
    }

    /// Sends a request and reads the whole response; returns `x-conn`.
    async fn exchange(p: &Pool) -> String {
        let (resp, lease) = p
            .send(get(Version::HTTP_11), None, &mut None)
            .await
            .unwrap();
        let conn = resp.headers()["x-conn"].to_str().unwrap().to_owned();
        ProxyBody::upstream(resp.into_body(), lease)
            .collect()
            .await
            .unwrap();
        conn
    }

    /// Polls `cond` every millisecond for up to 5 s.
    async fn eventually(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not met within 5 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[test]
    fn a_request_for_http2_owns_its_header_values_and_authority() {
        let read = bytes::Bytes::from(b"http://bench.example:8080/a/path?q=1".repeat(100));
        let inside = |part: &[u8]| crate::headers::points_into(part, &read);
        let mut req = Request::new(ProxyBody::empty());
        *req.version_mut() = Version::HTTP_2;
        *req.uri_mut() = Uri::from_maybe_shared(read.slice(0..36)).unwrap();
        let agent = HeaderValue::from_maybe_shared(read.slice(7..19)).unwrap();
        req.headers_mut().insert(header::USER_AGENT, agent);
        assert!(inside(req.uri().authority().unwrap().as_str().as_bytes()));
        own_head(&mut req);
        assert_eq!(req.uri(), "http://bench.example:8080/a/path?q=1");
        assert_eq!(req.headers()[header::USER_AGENT], "bench.exampl");
        let authority = req.uri().authority().unwrap().as_str();
        assert!(
            !inside(authority.as_bytes()),
            "the authority still points into the read buffer"
        );
        assert!(!inside(req.headers()[header::USER_AGENT].as_bytes()));
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_ends() {
        let (addr, accepted) = h1_server(After::KeepAlive).await;
        let p = pool(addr, Duration::from_secs(60));
        assert_eq!(exchange(&p).await, "1");
        assert_eq!(p.idle_http1(), 1);
        assert_eq!(exchange(&p).await, "1");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // A response whose body is still being read keeps its connection from others.
        let (held, lease) = p
            .send(get(Version::HTTP_11), None, &mut None)
            .await
            .unwrap();
        assert_eq!(held.headers()["x-conn"], "1");
        assert_eq!(exchange(&p).await, "2", "the busy connection is not shared");
        drop(lease);
    }

    #[tokio::test]
    async fn the_most_recently_returned_connection_goes_first() {
        let (addr, _) = h1_server(After::KeepAlive).await;
        let p = pool(addr, Duration::from_secs(60));
        let (a, lease_a) = p
            .send(get(Version::HTTP_11), None, &mut None)
            .await
            .unwrap();
        let (b, lease_b) = p
            .send(get(Version::HTTP_11), None, &mut None)
            .await
            .unwrap();
        assert_eq!(
            (&a.headers()["x-conn"], &b.headers()["x-conn"]),
            (&"1".parse().unwrap(), &"2".parse().unwrap())
        );
        ProxyBody::upstream(a.into_body(), lease_a)
            .collect()
            .await
            .unwrap();
        ProxyBody::upstream(b.into_body(), lease_b)
            .collect()
            .await
            .unwrap();
        assert_eq!(p.idle_http1(), 2);
        assert_eq!(exchange(&p).await, "2", "LIFO: the warmest connection");
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let (addr, accepted) = h1_server(After::KeepAlive).await;
        let p = pool(addr, Duration::from_millis(200));
        exchange(&p).await;
        assert_eq!(p.idle_http1(), 1);
        eventually(|| p.idle_http1() == 0).await;
        assert_eq!(exchange(&p).await, "2", "an expired connection is not used");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_peer_closed_is_replaced_without_failing_the_request() {
        let (addr, accepted) = h1_server(After::Close).await;
        let p = pool(addr, Duration::from_secs(60));
        assert_eq!(exchange(&p).await, "1");
        for n in 2..=4 {
            assert_eq!(exchange(&p).await, n.to_string());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn http2_is_one_shared_connection_reopened_when_it_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (close_tx, close_rx) = watch::channel(0usize);
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let id = count.fetch_add(1, Ordering::SeqCst) + 1;
                let mut close = close_rx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| async move {
                        let mut r =
                            Response::new(http_body_util::Full::new(bytes::Bytes::from("ok")));
                        r.headers_mut().insert("x-conn", id.into());
                        Ok::<_, std::convert::Infallible>(r)
                    });
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = close.wait_for(|n| *n >= id) => {}
                    }
                });
            }
        });
        let p = pool(addr, Duration::from_secs(60));
        let sends: Vec<_> = (0..5)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.send(get(Version::HTTP_2), None, &mut None).await })
            })
            .collect();
        for s in sends {
            assert_eq!(s.await.unwrap().unwrap().0.headers()["x-conn"], "1");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "five requests, one connection"
        );

        close_tx.send(1).unwrap();
        // The closed connection is noticed and a new one opened, without a failed request
        // once the close is known.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match p.send(get(Version::HTTP_2), None, &mut None).await {
                Ok((resp, _)) if resp.headers()["x-conn"] == "2" => break,
                _ => assert!(Instant::now() < deadline, "no second connection"),
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
