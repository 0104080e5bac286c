//! The accept loop shared by the data listeners: a connection limit, the original
//! destination of a redirected connection, protocol detection (TLS, HTTP/1.1, HTTP/2 prior
//! knowledge, or opaque TCP, which goes to the handler's TCP path), TLS termination where
//! configured, then HTTP (`http_conn`: header limits, an idle timeout, parking of idle
//! HTTP/1.1 connections, and graceful drain when the process stops) or opaque TCP.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use hyper::body::Incoming;
use prometheus::IntCounter;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch, Semaphore},
};

use super::{
    activity::Activity,
    detect::{self, Detected, Prefixed},
    http_conn, orig_dst, ConnMeta,
};
use crate::{
    body::ProxyBody,
    config::Limits,
    metrics::Metrics,
    tls::{accept::Terminator, Mode},
};

/// Signals shared by every listener of the process.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Becomes `true` when listeners must stop accepting and connections must drain.
    pub stop: watch::Receiver<bool>,
    /// Held by every connection task; the process waits until all are dropped.
    pub drained: mpsc::Sender<()>,
}

/// What a data listener serves its connections with; the wiring implements it over the
/// stacks in force, read once per request or connection.
pub trait Handler: Clone + Send + Sync + Unpin + 'static {
    /// Answers an HTTP request (on a clone of the handler, so the answer borrows nothing).
    fn http(
        self,
        conn: ConnMeta,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static;

    /// Serves an opaque TCP connection until it ends.
    fn tcp(&self, conn: ConnMeta, io: Box<dyn Io>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Whether connections to this (original destination) port skip protocol detection.
    fn opaque_port(&self, port: u16) -> bool;
}

pub use crate::context::Io;

/// Accepts connections on `listener` until `life.stop` or `accept_stop`, serving each with
/// `handler`, and hands the listener back. `accept_stop` ends only this accept loop (a reload
/// moving or restarting the listener); its connections go on until they end or the process
/// stops. With `tls`, callers that open with a TLS handshake get TLS terminated before HTTP.
#[allow(clippy::too_many_arguments)]
pub async fn serve<H: Handler>(
    listener: TcpListener,
    limits: Limits,
    meta: ConnMeta,
    metrics: &Metrics,
    life: Lifecycle,
    mut accept_stop: watch::Receiver<bool>,
    tls: Option<Arc<Terminator>>,
    handler: H,
) -> TcpListener {
    let builders = Arc::new(http_conn::Builders::new(&limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let open = metrics.connections_open(meta.direction);
    let accepted = metrics.connections_accepted(meta.direction);
    let errors = metrics.connection_errors(meta.direction);
    let parked = metrics.connections_parked(meta.direction);
    let detections =
        Arc::new(Detected::ALL.map(|p| metrics.detections(meta.direction, p.as_str())));
    let mut stop = life.stop.clone();
    let silent = Arc::new(std::sync::Mutex::new(Silent::default()));
    loop {
        // Room for one more: at the cap, wait for a connection to end, or for the oldest one
        // that has been silent for a while to be closed to make room, so a flood of silent
        // connections cannot keep real clients out.
        let permit = loop {
            if let Ok(p) = permits.clone().try_acquire_owned() {
                break Some(p);
            }
            // One at a time: an evicted connection gives its permit back when its task next
            // runs, which the wait below lets happen.
            silent_lock(&silent).evict_oldest();
            tokio::select! {
                p = permits.clone().acquire_owned() => break Some(p.expect("semaphore is never closed")),
                _ = tokio::time::sleep(SILENT_AGE) => {}
                _ = stop.changed() => break None,
                _ = accept_stop.changed() => break None,
            }
        };
        let Some(permit) = permit else { break };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: log, back off briefly, go on.
                    tracing::warn!(direction = meta.direction.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
            _ = accept_stop.changed() => break,
        };
        accepted.inc();
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(meta.local);
        let conn = ConnMeta::plain(peer, local, meta.direction);
        let connection = Connection {
            builders: builders.clone(),
            stop: life.stop.clone(),
            errors: errors.clone(),
            parked: parked.clone(),
            idle_timeout: limits.idle_timeout,
            detect_timeout: limits.detect_timeout,
            handshake_timeout: limits.header_read_timeout,
            detections: detections.clone(),
            activity: Activity::new(),
        };
        let (handler, drained, open, tls) = (
            handler.clone(),
            life.drained.clone(),
            open.clone(),
            tls.clone(),
        );
        let activity = connection.activity.clone();
        silent_lock(&silent).push(activity.clone(), limits.max_connections);
        let prepare = connection.prepare(stream, conn, handler, tls);
        tokio::spawn(task(prepare, activity, (permit, drained, Open::new(open))));
    }
    tracing::debug!(
        direction = meta.direction.as_str(),
        "listener stopped accepting"
    );
    listener
}

/// One stage of a connection, boxed: detection, the TLS handshake, or what serves it. It
/// ends the connection (`None`) or hands it to the next stage.
struct Stage(Pin<Box<dyn Future<Output = Option<Stage>> + Send>>);

impl Stage {
    /// A stage that may hand over to another.
    fn new(f: impl Future<Output = Option<Stage>> + Send + 'static) -> Self {
        Self(Box::pin(f))
    }

    /// The last stage: serving the connection to its end.
    fn last(f: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(Box::pin(Last { inner: f }))
    }
}

pin_project_lite::pin_project! {
    /// A future that ends a connection, as a stage. (Not an `async` block: awaiting the
    /// future it holds would keep a second copy of it.)
    struct Last<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future<Output = ()>> Future for Last<F> {
    type Output = Option<Stage>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Stage>> {
        self.project().inner.poll(cx).map(|()| None)
    }
}

/// A connection's task: its stages, one after the other, until one ends it or it is
/// evicted, holding `guards` (its permit, the drain guard, the open gauge) meanwhile.
///
/// Each stage is a box of its own, built by a plain function, and the task holds one box at
/// a time: a parked or streaming connection keeps no room for detection's or the TLS
/// handshake's state, nor a silent one for HTTP's. (An `async` body that built them itself
/// would keep room for them all, unboxed, in every task, as rustc lays out its state.)
async fn task<G: Send + 'static>(first: Stage, activity: Activity, _guards: G) {
    let run = async move {
        let mut stage = Some(first);
        while let Some(Stage(current)) = stage {
            stage = current.await;
        }
    };
    tokio::select! {
        _ = run => {}
        _ = activity.evicted() => {}
    }
}

/// How long a connection must have been silent before it may be closed to make room: a real
/// client's first bytes arrive well within it.
const SILENT_AGE: Duration = Duration::from_millis(500);

/// Connections that have not moved a byte yet, oldest first: the ones evicted at the cap.
/// Only their clocks are kept; those of connections that moved a byte or closed are dropped
/// from the front as eviction passes them, and from anywhere once there are more than the
/// cap.
#[derive(Default)]
struct Silent(std::collections::VecDeque<Activity>);

impl Silent {
    fn push(&mut self, activity: Activity, cap: usize) {
        self.0.push_back(activity);
        if self.0.len() > cap {
            self.0.retain(|a| !a.ever() && !a.orphaned());
        }
    }

    /// Ends the oldest connection silent for at least `SILENT_AGE`, if there is one.
    fn evict_oldest(&mut self) {
        while let Some(activity) = self.0.pop_front() {
            if activity.ever() || activity.orphaned() {
                continue;
            }
            if activity.age() < SILENT_AGE {
                self.0.push_front(activity);
                return;
            }
            tracing::debug!("connection limit reached; closing the oldest silent connection");
            activity.evict();
            return;
        }
    }
}

fn silent_lock(s: &std::sync::Mutex<Silent>) -> std::sync::MutexGuard<'_, Silent> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Holds a connection in the open-connections gauge, also when its task is aborted.
struct Open(prometheus::IntGauge);

impl Open {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What serving one accepted connection needs.
struct Connection {
    builders: Arc<http_conn::Builders>,
    stop: watch::Receiver<bool>,
    errors: IntCounter,
    parked: prometheus::IntGauge,
    idle_timeout: Duration,
    detect_timeout: Duration,
    handshake_timeout: Duration,
    detections: Arc<[IntCounter; 5]>,
    activity: Activity,
}

impl Connection {
    /// A connection's first stage, boxed. See [`Self::steps`].
    fn prepare<H: Handler>(
        self,
        stream: TcpStream,
        conn: ConnMeta,
        handler: H,
        tls: Option<Arc<Terminator>>,
    ) -> Stage {
        Stage::new(self.steps(stream, conn, handler, tls))
    }

    /// One connection, top to bottom: original destination → protocol detection (unless its
    /// port is opaque) → TLS termination (inbound, a caller opening with a handshake) → HTTP,
    /// or opaque TCP for anything that is not HTTP. Returns the next stage, for the task to
    /// run once this future is gone.
    // Not an `async fn`: that would keep a second copy of each argument in its state.
    #[allow(clippy::manual_async_fn)]
    fn steps<H: Handler>(
        self,
        stream: TcpStream,
        mut conn: ConnMeta,
        handler: H,
        tls: Option<Arc<Terminator>>,
    ) -> impl Future<Output = Option<Stage>> + Send {
        async move {
            conn.original_dst = orig_dst::of(&stream);
            let port = conn.original_dst.map_or(conn.local.port(), |d| d.port());
            let peer = conn.peer;
            let mode = tls.as_ref().map_or(Mode::Disabled, |t| t.mode());
            let mut io = Tracked {
                inner: stream,
                activity: self.activity.clone(),
            };
            // Plaintext that is not HTTP cannot be told "mTLS required": it is closed.
            let refuse = |t: &Option<Arc<Terminator>>| {
                if let Some(t) = t.as_ref().filter(|_| mode == Mode::Strict) {
                    t.refused_plaintext(peer);
                    return true;
                }
                false
            };
            if handler.opaque_port(port) {
                return (!refuse(&tls)).then(|| Stage::last(handler.tcp(conn, Box::new(io))));
            }
            let (found, prefix) = match detect::detect(&mut io, self.detect_timeout).await {
                Ok(Some(found)) => found,
                Ok(None) => return None,
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "connection failed before its first bytes");
                    return None;
                }
            };
            self.detections[found as usize].inc();
            // Timed out mid-way through what could still be HTTP or TLS (a slowloris, a dripped
            // preface): a slow client, not a server-first protocol, so it is closed.
            if found == Detected::Timeout && !prefix.is_empty() {
                tracing::debug!(peer = %peer, "closing a connection too slow to send its first request");
                return None;
            }
            let io = Prefixed::new(prefix, io);
            match found {
                Detected::Tls if mode != Mode::Disabled => {
                    let t = tls?;
                    Some(self.terminate(t, io, conn, handler))
                }
                found if found.is_http() => {
                    // Served, so that the inbound stack answers 400 `mtls-required`.
                    refuse(&tls);
                    Some(self.serve(io, found == Detected::Http2, conn, handler))
                }
                _ => (!refuse(&tls)).then(|| Stage::last(handler.tcp(conn, Box::new(io)))),
            }
        }
    }

    /// The TLS handshake's stage, boxed (see [`Self::tls`]).
    fn terminate<IO, H>(self, t: Arc<Terminator>, io: IO, conn: ConnMeta, handler: H) -> Stage
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Handler,
    {
        Stage::new(self.tls(t, io, conn, handler))
    }

    /// Terminates TLS on `io`; the next stage serves what the caller speaks inside: another
    /// sidecar's opaque TCP (by ALPN), else HTTP (`h2` or HTTP/1.1).
    // Not an `async fn`: that would keep a second copy of each argument in its state.
    #[allow(clippy::manual_async_fn)]
    fn tls<IO, H>(
        self,
        t: Arc<Terminator>,
        io: IO,
        mut conn: ConnMeta,
        handler: H,
    ) -> impl Future<Output = Option<Stage>> + Send
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Handler,
    {
        async move {
            let config = t.server_config(conn.peer)?;
            let timeout = self.handshake_timeout;
            let (io, id) = t.handshake(io, config, conn.peer, timeout).await?;
            conn.tls = true;
            conn.client_id = Some(id);
            Some(match io.get_ref().1.alpn_protocol() {
                Some(crate::tls::ALPN_TCP) => Stage::last(handler.tcp(conn, Box::new(io))),
                alpn => {
                    let h2 = alpn == Some(crate::tls::ALPN_H2);
                    self.serve(io, h2, conn, handler)
                }
            })
        }
    }

    /// What serves HTTP/2 (`h2`) or HTTP/1.1 on `io` until the peer closes, the process stops
    /// (gracefully) or the connection idles out: the last stage.
    fn serve<IO, H>(self, io: IO, h2: bool, conn: ConnMeta, handler: H) -> Stage
    where
        IO: Io + 'static,
        H: Handler,
    {
        let session = http_conn::Session {
            stop: self.stop,
            errors: self.errors,
            parked: self.parked,
            idle_timeout: self.idle_timeout,
            activity: self.activity,
        };
        let builders = self.builders;
        if h2 {
            Stage::last(http_conn::serve_h2(builders, session, io, conn, handler))
        } else {
            Stage::last(http_conn::serve_h1(builders, session, io, conn, handler))
        }
    }
}

/// A TCP stream that records activity for the idle timeout.
struct Tracked {
    inner: TcpStream,
    activity: Activity,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if polled.is_ready() {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if polled.is_ready() {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The local address a listener is bound to (for logs).
pub fn local_addr(l: &TcpListener) -> SocketAddr {
    l.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A handler that answers every request with an empty 200 (for tests of the listener).
    #[derive(Clone)]
    pub(crate) struct Nothing;

    impl Handler for Nothing {
        async fn http(self, _: ConnMeta, _: Request<Incoming>) -> Response<ProxyBody> {
            Response::new(ProxyBody::empty())
        }
        fn tcp(&self, _: ConnMeta, _: Box<dyn Io>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
            Box::pin(async {})
        }
        fn opaque_port(&self, _: u16) -> bool {
            false
        }
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_passes_over_busy_and_closed_connections_and_keeps_no_task() {
        let mut silent = Silent::default();
        let (busy, closed, quiet) = (Activity::new(), Activity::new(), Activity::new());
        busy.touch();
        for a in [&busy, &closed, &quiet] {
            silent.push(a.clone(), 10);
        }
        drop(closed);
        silent.evict_oldest();
        assert_eq!(
            silent.0.len(),
            1,
            "too young to evict: only the others are dropped"
        );
        tokio::time::advance(SILENT_AGE).await;
        silent.evict_oldest();
        assert!(silent.0.is_empty());
        tokio::time::timeout(Duration::from_millis(1), quiet.evicted())
            .await
            .expect("the oldest silent connection is told to close");

        // Past the cap, the clocks of closed connections go.
        for _ in 0..20 {
            silent.push(Activity::new(), 5);
        }
        assert!(silent.0.len() <= 5, "{} kept", silent.0.len());
    }

    /// Every accepted connection's task holds its own small future from accept to close, and
    /// one stage's box at a time: while it waits for its first bytes (silent ones included),
    /// detection's; then, parked between requests too, what serves it. TLS and HTTP state
    /// inline in the first would make every silent connection several KiB (it was 3.5 KiB
    /// with a TLS stream kept in it after a move); detection's state kept beside HTTP's made
    /// every idle keep-alive connection's futures 4.7 KiB; `async fn` copies of the
    /// arguments added 300 bytes to each stage.
    #[tokio::test]
    async fn a_connections_futures_are_small_at_every_stage() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = "version: 1\noutbound: { listen: 127.0.0.1:0 }\n";
        let limits = crate::config::parse("t", config).unwrap().startup().limits;
        let counter = || IntCounter::new("x", "x").unwrap();
        let connection = || Connection {
            builders: Arc::new(http_conn::Builders::new(&limits)),
            stop: watch::channel(false).1,
            errors: counter(),
            parked: prometheus::IntGauge::new("p", "p").unwrap(),
            idle_timeout: limits.idle_timeout,
            detect_timeout: limits.detect_timeout,
            handshake_timeout: limits.header_read_timeout,
            detections: Arc::new(std::array::from_fn(|_| counter())),
            activity: Activity::new(),
        };
        let conn = ConnMeta::plain(addr, addr, crate::metrics::Direction::Inbound);

        let stream = TcpStream::connect(addr).await.unwrap();
        let prepare = connection().prepare(stream, conn.clone(), Nothing, None);
        let detecting = std::mem::size_of_val(&*prepare.0);
        assert!(detecting < 768, "detection holds {detecting} bytes");
        let guards = (Open::new(prometheus::IntGauge::new("o", "o").unwrap()),);
        let task = task(prepare, Activity::new(), guards);
        let whole = std::mem::size_of_val(&task);
        assert!(
            whole < 256,
            "a connection's task holds {whole} bytes of its own"
        );

        let stream = TcpStream::connect(addr).await.unwrap();
        let c = connection();
        let io = Prefixed::new(
            bytes::Bytes::new(),
            Tracked {
                inner: stream,
                activity: c.activity.clone(),
            },
        );
        let served = c.serve(io, false, conn, Nothing);
        let serving = std::mem::size_of_val(&*served.0);
        assert!(serving < 1024, "serving HTTP/1.1 holds {serving} bytes");
    }
}
