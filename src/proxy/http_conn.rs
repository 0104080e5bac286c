//! Serving HTTP on one connection, once detection (or TLS's ALPN) said which version it
//! speaks: HTTP/2 on hyper's HTTP/2 server, HTTP/1.1 on hyper's HTTP/1 server, both drained
//! gracefully when the process stops and closed when idle.
//!
//! An HTTP/1.1 keep-alive connection is *parked* between requests: once it has been quiet for
//! [`PARK_AFTER`] with no request in flight, hyper's connection is wound up without closing the
//! socket and dropped, with its buffers (16 KiB to read, 8 KiB to write, kept for the whole
//! life of a connection otherwise), and the connection waits for its next bytes in a small
//! buffer of its own. They start a new hyper connection. An idle keep-alive client so costs
//! the socket, its task and a few hundred bytes, as with nginx, rather than about 25 KiB.
//!
//! An HTTP/2 connection cannot be wound up and restarted like that (its HPACK tables and
//! stream ids are state), so after the same quiet time it *settles*: it is polled once inside
//! `h2::idle::release_idle` (Remora's patch of h2, `vendor/h2/REMORA.md`), which frees its
//! write and read buffers and its stream storage, and it goes on serving; the next frame
//! allocates them again. An idle h2c connection so keeps about 6 KiB of heap, not 38.
//!
//! Winding up a connection this way leaves upgrades to us: hyper hands the caller's side of an
//! upgrade (a WebSocket after `101`) back with the connection's parts rather than to the
//! request, so the request carries a [`DownstreamUpgrade`] that the connection fulfils when
//! hyper gives the socket back.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
    service::service_fn,
    upgrade::OnUpgrade,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntCounter;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{oneshot, watch},
};

use super::{activity::Activity, detect::Prefixed, gated::gated, server::Handler, ConnMeta};
use crate::{
    body::ProxyBody,
    config::Limits,
    context::{DownstreamUpgrade, Io},
};

/// Quiet time after which an HTTP/1.1 connection with no request in flight is parked.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// The most a parked connection reads of its next request before hyper takes over.
const PARKED_READ: usize = 64;

/// hyper's servers, configured from `limits`.
pub struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Builders {
    /// Both servers with the header limits and timeouts of `limits`.
    pub fn new(limits: &Limits) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // hyper answers 431 when the header block outgrows its read buffer.
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_headers(limits.max_headers)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Self { h1, h2 }
    }
}

/// What serving one connection's HTTP needs besides the stream.
pub struct Session {
    /// Turns true when the process stops: drain.
    pub stop: watch::Receiver<bool>,
    /// Counts connection-level errors.
    pub errors: IntCounter,
    /// Parked connections of the listener.
    pub parked: prometheus::IntGauge,
    /// Quiet time after which the connection is closed.
    pub idle_timeout: Duration,
    /// The connection's clock.
    pub activity: Activity,
}

/// How a served connection's hyper connection ended.
enum Ended {
    /// Closed, by either side, or on error: the connection is done.
    Closed,
    /// Wound up for parking (HTTP/1.1 only): the socket is back in our hands.
    Parked,
}

/// Serves HTTP/2 on `io` until the peer closes, the process stops (GOAWAY and drain), the
/// caller abuses resets, or the connection idles out.
pub async fn serve_h2<IO, H>(
    builders: Arc<Builders>,
    mut s: Session,
    io: IO,
    conn: ConnMeta,
    handler: H,
) where
    IO: Io + 'static,
    H: Handler,
{
    let requests = Arc::new(Requests::default());
    let svc = service(handler, conn.clone(), requests.clone(), None);
    let mut connection = Box::pin(builders.h2.serve_connection(TokioIo::new(io), svc));
    drive(&mut s, &requests, conn.peer, &mut connection).await;
}

/// Serves HTTP/1.1 on `io`, parking it whenever it idles, until the peer closes, the process
/// stops (after the response in progress), or the connection idles out.
// Not an `async fn`: it would keep a second copy of each argument in its state (rustc moves
// them into the body's own bindings), and a parked connection holds that state.
#[allow(clippy::manual_async_fn)]
pub fn serve_h1<IO, H>(
    builders: Arc<Builders>,
    mut s: Session,
    io: IO,
    conn: ConnMeta,
    handler: H,
) -> impl Future<Output = ()> + Send
where
    IO: Io + 'static,
    H: Handler,
{
    async move {
        let requests = Arc::new(Requests::default());
        let upgrade = Arc::new(Mutex::new(None));
        let mut io = Prefixed::new(Bytes::new(), io);
        loop {
            // Boxed: hyper's connection state is allocated only while it serves, so a parked
            // connection's future holds none of it.
            let round = boxed_round(&builders, &mut s, &requests, &upgrade, io, &conn, &handler);
            let Some((ended, ahead, mut stream)) = round.await else {
                return;
            };
            if matches!(ended, Ended::Closed) {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
                return;
            }
            // Parked: hyper's connection is gone; wait here for the next request's first
            // bytes (holding no buffer: an empty `ahead` may still be the last one's
            // allocation).
            let next = if ahead.is_empty() {
                drop(ahead);
                match park(&mut s, &mut stream).await {
                    Some(bytes) => bytes,
                    None => return,
                }
            } else {
                ahead
            };
            io = Prefixed::new(next, stream);
        }
    }
}

/// [`serve_h1_round`], boxed by a plain function: built inside `serve_h1`'s own body, the
/// unboxed future would take room in `serve_h1`'s state (rustc keeps a place for it across
/// the await), which a parked connection holds for as long as it waits.
#[allow(clippy::type_complexity)]
fn boxed_round<'a, IO, H>(
    builders: &'a Builders,
    s: &'a mut Session,
    requests: &'a Arc<Requests>,
    upgrade: &'a Arc<UpgradeSlot>,
    io: Prefixed<IO>,
    conn: &'a ConnMeta,
    handler: &'a H,
) -> Pin<Box<dyn Future<Output = Option<(Ended, Bytes, IO)>> + Send + 'a>>
where
    IO: Io + 'static,
    H: Handler,
{
    Box::pin(serve_h1_round(
        builders, s, requests, upgrade, io, conn, handler,
    ))
}

/// One hyper HTTP/1.1 connection on `io`, until it ends or is wound up: how it ended, the
/// bytes read past its last request, and the stream; `None` when an upgrade took the stream.
async fn serve_h1_round<IO, H>(
    builders: &Builders,
    s: &mut Session,
    requests: &Arc<Requests>,
    upgrade: &Arc<UpgradeSlot>,
    io: Prefixed<IO>,
    conn: &ConnMeta,
    handler: &H,
) -> Option<(Ended, Bytes, IO)>
where
    IO: Io + 'static,
    H: Handler,
{
    let svc = service(
        handler.clone(),
        conn.clone(),
        requests.clone(),
        Some(upgrade.clone()),
    );
    let mut connection = builders.h1.serve_connection(TokioIo::new(io), svc);
    let ended = drive(s, requests, conn.peer, &mut connection).await;
    let parts = connection.into_parts();
    // hyper read `read_buf` from the stream, ahead of what the stream still holds.
    let (rest, stream) = parts.io.into_inner().into_parts();
    let ahead = join(parts.read_buf, rest);
    // An upgrade answered with 101: the caller's side goes to the tunnel.
    if let Some(tx) = lock(upgrade).take() {
        let _ = tx.send(Box::new(Prefixed::new(ahead, stream)));
        return None;
    }
    Some((ended, ahead, stream))
}

/// Waits on a parked connection for its next bytes; `None` when it closed, idled out or the
/// process stops.
async fn park<IO: Io>(s: &mut Session, stream: &mut IO) -> Option<Bytes> {
    let mut buf = [0u8; PARKED_READ];
    if *s.stop.borrow() {
        return None;
    }
    s.parked.inc();
    let _unpark = Unpark(&s.parked);
    tokio::select! {
        r = stream.read(&mut buf) => match r {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(Bytes::copy_from_slice(&buf[..n])),
        },
        _ = s.stop.changed() => None,
        _ = s.activity.idle(s.idle_timeout) => None,
    }
}

/// Takes a connection out of the parked gauge, however its wait ends.
struct Unpark<'a>(&'a prometheus::IntGauge);

impl Drop for Unpark<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn join(a: Bytes, b: Bytes) -> Bytes {
    match (a.is_empty(), b.is_empty()) {
        // Not `b` itself: an empty slice may still hold a whole buffer.
        (true, true) => Bytes::new(),
        (true, _) => b,
        (_, true) => a,
        _ => {
            let mut v = Vec::with_capacity(a.len() + b.len());
            v.extend_from_slice(&a);
            v.extend_from_slice(&b);
            Bytes::from(v)
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Polls `connection` to its end, winding it up when the process stops, the caller abuses
/// resets, or the connection idles out. Quiet for `PARK_AFTER` with no request in flight, an
/// HTTP/1.1 connection is wound up to be parked, and an HTTP/2 one *settles*: it is polled
/// once so that it gives back its buffers (`h2::idle`), and serves on; the parked gauge
/// counts it until bytes move again.
async fn drive<C: Conn>(
    s: &mut Session,
    requests: &Requests,
    peer: SocketAddr,
    connection: &mut C,
) -> Ended {
    let mut closing = *s.stop.borrow();
    let mut parking = false;
    // Settle at the next poll; settled since the stamp held, counted in the gauge.
    let mut settle = false;
    let mut settled: Option<(u64, Unpark<'_>)> = None;
    if closing {
        connection.wind_up();
    }
    loop {
        tokio::select! {
            res = std::future::poll_fn(|cx| {
                if std::mem::take(&mut settle) {
                    return connection.poll_settle(cx).map(Some);
                }
                let polled = connection.poll_serve(cx);
                // Settled, and bytes moved since: go round to wait for quiet again.
                match &settled {
                    Some((at, _)) if polled.is_pending() && s.activity.stamp() != *at => {
                        Poll::Ready(None)
                    }
                    _ => polled.map(Some),
                }
            }) => {
                let Some(res) = res else {
                    settled = None;
                    continue;
                };
                if let Err(e) = res {
                    s.errors.inc();
                    tracing::debug!(peer = %peer, error = %e, "connection error");
                    return Ended::Closed;
                }
                return if parking && !closing { Ended::Parked } else { Ended::Closed };
            }
            _ = gated(s.stop.changed()), if !closing => {
                closing = true;
                connection.wind_up();
            }
            _ = gated(requests.abused.notified()), if !closing => {
                tracing::warn!(peer = %peer, "closing a connection whose caller reset most of its requests (HTTP/2 rapid reset)");
                s.errors.inc();
                closing = true;
                connection.wind_up();
            }
            _ = gated(s.activity.idle(s.idle_timeout)), if !closing => {
                tracing::debug!(peer = %peer, "closing idle connection");
                closing = true;
                connection.wind_up();
            }
            // Quiet, with no request in flight (a long poll keeps it from parking).
            _ = gated(quiet(requests, &s.activity)), if !closing && !parking && settled.is_none() => {
                if requests.active.load(Ordering::Acquire) == 0 {
                    if C::PARKS {
                        parking = true;
                        connection.wind_up();
                    } else {
                        settle = true;
                        s.parked.inc();
                        settled = Some((s.activity.stamp(), Unpark(&s.parked)));
                    }
                }
            }
        }
    }
}

/// Resolves once no request is in flight and then nothing moved for `PARK_AFTER`.
async fn quiet(requests: &Requests, activity: &Activity) {
    loop {
        let finished = requests.finished.notified();
        tokio::pin!(finished);
        finished.as_mut().enable();
        // SeqCst with the ending request's two steps: one side sees the other.
        requests.waiting.store(true, Ordering::SeqCst);
        if requests.active.load(Ordering::SeqCst) == 0 {
            break;
        }
        finished.await;
    }
    requests.waiting.store(false, Ordering::Release);
    activity.idle(PARK_AFTER).await;
}

/// A hyper server connection as `drive` runs it.
trait Conn {
    /// Whether a quiet connection is wound up to be parked (HTTP/1.1) rather than settled.
    const PARKS: bool;
    /// Polls it to its end; HTTP/1.1 keeps the socket open for `into_parts`.
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>>;
    /// Polls it as `poll_serve` does, letting it give back the memory it holds while idle.
    fn poll_settle(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.poll_serve(cx)
    }
    /// Ends it after the requests in progress (HTTP/1.1: the current one; HTTP/2: GOAWAY).
    fn wind_up(&mut self);
}

impl<I, S> Conn for http1::Connection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = ProxyBody> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    const PARKS: bool = true;

    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.poll_without_shutdown(cx)
    }

    fn wind_up(&mut self) {
        Pin::new(self).graceful_shutdown();
    }
}

impl<F: HttpConnection> Conn for Pin<Box<F>> {
    const PARKS: bool = false;

    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.as_mut().poll(cx)
    }

    fn poll_settle(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        h2::idle::release_idle(|| self.as_mut().poll(cx))
    }

    fn wind_up(&mut self) {
        self.as_mut().shut();
    }
}

/// hyper's HTTP/2 server connection, named by what `drive` needs of it.
trait HttpConnection: Future<Output = hyper::Result<()>> {
    fn shut(self: Pin<&mut Self>);
}

impl<I, S> HttpConnection for http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = ProxyBody>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
{
    fn shut(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Requests dropped unfinished on a connection (on HTTP/2, reset by the caller) before this
/// many are tolerated whatever their share.
const RESETS_TOLERATED: u64 = 100;

/// A connection's requests: how many are in flight (an HTTP/1.1 connection parks only with
/// none), and how they ended, against HTTP/2 rapid reset (CVE-2023-44487), spread out or not:
/// once at least `RESETS_TOLERATED` requests were dropped unfinished and they are at least
/// half of all, the connection is closed (GOAWAY), as Envoy's premature-reset check does. A
/// dropped request's future is dropped with it, so its upstream request is cancelled.
#[derive(Debug, Default)]
struct Requests {
    active: AtomicUsize,
    started: AtomicU64,
    premature: AtomicU64,
    abused: tokio::sync::Notify,
    /// Notified when the last request in flight ends, if `waiting` says anyone listens (most
    /// requests end with nobody waiting: no lock taken then).
    finished: tokio::sync::Notify,
    waiting: std::sync::atomic::AtomicBool,
}

/// One request's place in `Requests`; dropped without `finish`, it counts as premature.
struct InFlight(Arc<Requests>, bool);

impl InFlight {
    fn start(requests: &Arc<Requests>) -> Self {
        requests.started.fetch_add(1, Ordering::Relaxed);
        requests.active.fetch_add(1, Ordering::AcqRel);
        InFlight(requests.clone(), false)
    }

    fn finish(mut self) {
        self.1 = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let r = &self.0;
        if r.active.fetch_sub(1, Ordering::SeqCst) == 1 && r.waiting.load(Ordering::SeqCst) {
            r.finished.notify_waiters();
        }
        if !self.1 {
            let premature = r.premature.fetch_add(1, Ordering::Relaxed) + 1;
            let started = r.started.load(Ordering::Relaxed);
            if premature >= RESETS_TOLERATED && premature * 2 >= started {
                r.abused.notify_one();
            }
        }
    }
}

/// A request's answer, boxed: hyper's HTTP/1 connection can only be wound up by hand (to park
/// it) when its service's future is `Unpin`.
type Answer = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

/// The sender of the upgrade in progress on an HTTP/1.1 connection, if any.
type UpgradeSlot = Mutex<Option<oneshot::Sender<Box<dyn Io>>>>;

/// The hyper service for one connection: each request goes to `handler`, counted in
/// `requests`. On HTTP/1.1 (`upgrade` given), an upgrade request carries a
/// [`DownstreamUpgrade`] that the connection fulfils with its socket after the `101`.
fn service<H: Handler>(
    handler: H,
    conn: ConnMeta,
    requests: Arc<Requests>,
    upgrade: Option<Arc<UpgradeSlot>>,
) -> impl hyper::service::HttpService<
    Incoming,
    ResBody = ProxyBody,
    Error = Infallible,
    Future = Answer,
> + Clone
       + Unpin {
    service_fn(move |mut req: Request<Incoming>| {
        if let Some(on) = req.extensions_mut().remove::<OnUpgrade>() {
            let theirs = match &upgrade {
                // hyper's own upgrade never completes on a connection wound up by hand.
                Some(slot) => {
                    let (tx, theirs) = DownstreamUpgrade::parked();
                    *lock(slot) = Some(tx);
                    theirs
                }
                None => DownstreamUpgrade::Hyper(on),
            };
            req.extensions_mut().insert(theirs);
        }
        Box::pin(Answering {
            h2: upgrade.is_none(),
            slot: upgrade.clone(),
            connect: req.method() == http::Method::CONNECT,
            stream: Some(InFlight::start(&requests)),
            answer: handler.clone().http(conn.clone(), req),
        }) as Answer
    })
}

pin_project_lite::pin_project! {
    /// The handler's answer, then the request's end counted and an upgrade that did not
    /// happen let go. A named future rather than an `async` block, which would copy the
    /// handler's future into itself, and itself into the box.
    struct Answering<F> {
        #[pin]
        answer: F,
        stream: Option<InFlight>,
        slot: Option<Arc<UpgradeSlot>>,
        connect: bool,
        // On HTTP/2, the response's header values get a buffer of their own before h2's HPACK
        // table keeps them (`headers::own_values`).
        h2: bool,
    }
}

impl<F: Future<Output = Response<ProxyBody>>> Future for Answering<F> {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = std::task::ready!(this.answer.poll(cx));
        if *this.h2 {
            crate::headers::own_values(resp.headers_mut());
        }
        if let Some(stream) = this.stream.take() {
            stream.finish();
        }
        // No upgrade after all: the socket stays with the connection. (hyper upgrades after
        // a 101, and after a 2xx to CONNECT.)
        let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (*this.connect && resp.status().is_success());
        if !upgraded {
            if let Some(slot) = this.slot.take() {
                lock(&slot).take();
            }
        }
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::proxy::server::tests::Nothing;

    /// An HTTP/2 answer's header values leave the buffer they were parsed into (h2's HPACK
    /// table would pin it); an HTTP/1.1 answer's stay, at no cost.
    #[tokio::test]
    async fn an_http2_answer_owns_its_header_values_and_an_http1_answer_does_not() {
        let read = Bytes::from(b"nginx/1.22.1".repeat(500));
        let inside = |v: &http::HeaderValue| crate::headers::points_into(v.as_bytes(), &read);
        for h2 in [true, false] {
            let value = http::HeaderValue::from_maybe_shared(read.slice(0..12)).unwrap();
            let answer = async move {
                let mut resp = Response::new(ProxyBody::empty());
                resp.headers_mut().insert(http::header::SERVER, value);
                resp
            };
            let answering = Answering {
                answer,
                stream: None,
                slot: None,
                connect: false,
                h2,
            };
            let resp = answering.await.unwrap();
            let server = &resp.headers()[http::header::SERVER];
            assert_eq!(server, "nginx/1.22.1");
            assert_eq!(inside(server), !h2, "h2: {h2}");
        }
    }

    /// A parked connection holds its `serve_h1` future (and the task around it) and nothing
    /// else: hyper's state lives in a box only while it serves.
    #[test]
    fn a_parked_connection_holds_under_a_kib_of_future() {
        let config = "version: 1\noutbound: { listen: 127.0.0.1:0 }\n";
        let limits = crate::config::parse("t", config).unwrap().startup().limits;
        let builders = Arc::new(Builders::new(&limits));
        let session = Session {
            stop: watch::channel(false).1,
            errors: IntCounter::new("x", "x").unwrap(),
            parked: prometheus::IntGauge::new("p", "p").unwrap(),
            idle_timeout: limits.idle_timeout,
            activity: Activity::new(),
        };
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let conn = ConnMeta::plain(addr, addr, crate::metrics::Direction::Inbound);
        let (io, _) = tokio::io::duplex(64);
        let serve = serve_h1(builders, session, io, conn, Nothing);
        let size = std::mem::size_of_val(&serve);
        assert!(size < 1024, "serving HTTP/1.1 holds {size} bytes");
    }
}
