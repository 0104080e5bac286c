//! The accept loop shared by the data listeners: a connection limit, TLS termination where
//! configured, HTTP/1.1 and HTTP/2 (prior knowledge or ALPN) detected on the same port,
//! header limits, an idle timeout, and graceful drain when the process stops.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use prometheus::IntCounter;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch, Semaphore},
    time::Instant,
};

use super::ConnMeta;
use crate::{body::ProxyBody, config::Limits, metrics::Metrics, tls::accept::Terminator};

/// Signals shared by every listener of the process.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Becomes `true` when listeners must stop accepting and connections must drain.
    pub stop: watch::Receiver<bool>,
    /// Held by every connection task; the process waits until all are dropped.
    pub drained: mpsc::Sender<()>,
}

/// Accepts connections on `listener` until `life.stop` or `accept_stop`, serving each with
/// `handler`, and hands the listener back. `accept_stop` ends only this accept loop (a reload
/// moving or restarting the listener); its connections go on until they end or the process
/// stops. With `tls`, connections are told apart and TLS is terminated before HTTP.
#[allow(clippy::too_many_arguments)]
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: Limits,
    meta: ConnMeta,
    metrics: &Metrics,
    life: Lifecycle,
    mut accept_stop: watch::Receiver<bool>,
    tls: Option<Arc<Terminator>>,
    handler: H,
) -> TcpListener
where
    H: Fn(ConnMeta, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let builder = Arc::new(builder(&limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let open = metrics.connections_open(meta.direction);
    let errors = metrics.connection_errors(meta.direction);
    let mut stop = life.stop.clone();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = stop.changed() => break,
            _ = accept_stop.changed() => break,
        };
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
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(meta.local);
        let mut conn = ConnMeta::plain(peer, local, meta.direction);
        let connection = Connection {
            builder: builder.clone(),
            stop: life.stop.clone(),
            errors: errors.clone(),
            idle_timeout: limits.idle_timeout,
            activity: Activity::new(),
        };
        let (handler, drained, open, tls) = (
            handler.clone(),
            life.drained.clone(),
            open.clone(),
            tls.clone(),
        );
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let _drained = drained;
            open.inc();
            let activity = connection.activity.clone();
            let tracked = move |inner| Tracked { inner, activity };
            match tls {
                None => connection.serve(tracked(stream), conn, handler).await,
                Some(tls) => match tls.decide(&stream, peer, handshake_timeout).await {
                    Ok(None) => connection.serve(tracked(stream), conn, handler).await,
                    Ok(Some(config)) => {
                        let io = tracked(stream);
                        if let Some((io, id)) =
                            tls.handshake(io, config, peer, handshake_timeout).await
                        {
                            conn.tls = true;
                            conn.client_id = Some(id);
                            connection.serve(io, conn, handler).await;
                        }
                    }
                    Err(()) => {}
                },
            }
            open.dec();
        });
    }
    tracing::debug!(
        direction = meta.direction.as_str(),
        "listener stopped accepting"
    );
    listener
}

/// What serving one accepted connection needs.
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
    errors: IntCounter,
    idle_timeout: Duration,
    activity: Activity,
}

impl Connection {
    /// Serves HTTP on `io` until the peer closes, the process stops (gracefully) or the
    /// connection idles out.
    async fn serve<IO, H, F>(mut self, io: IO, conn: ConnMeta, handler: H)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(ConnMeta, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<ProxyBody>> + Send + 'static,
    {
        let peer = conn.peer;
        let svc = service_fn(move |req| {
            let fut = handler(conn.clone(), req);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(connection);
        let mut closing = *self.stop.borrow();
        if closing {
            connection.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                res = connection.as_mut() => {
                    if let Err(e) = res {
                        self.errors.inc();
                        tracing::debug!(peer = %peer, error = %e, "connection error");
                    }
                    break;
                }
                _ = self.stop.changed(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = self.activity.idle(self.idle_timeout), if !closing => {
                    tracing::debug!(peer = %peer, "closing idle connection");
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper answers 431 when the header block outgrows its read buffer.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// When a connection last read or wrote, in milliseconds since it opened.
#[derive(Debug, Clone)]
struct Activity(Arc<(Instant, AtomicU64)>);

impl Activity {
    fn new() -> Self {
        Self(Arc::new((Instant::now(), AtomicU64::new(0))))
    }

    fn touch(&self) {
        let (opened, last) = &*self.0;
        last.store(opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing was read or written for `timeout`.
    async fn idle(&self, timeout: Duration) {
        let (opened, last) = &*self.0;
        loop {
            let deadline = *opened + Duration::from_millis(last.load(Ordering::Relaxed)) + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
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
