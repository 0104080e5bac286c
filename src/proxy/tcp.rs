//! Opaque TCP: a connection that detection did not find HTTP in (or that arrived on an
//! `opaque_ports` port) is copied byte for byte to its target, both ways, with half-close
//! passed on, until both sides are done or nothing moved for the idle timeout.
//!
//! Outbound, the target is a `tcp_routes` match's service (an endpoint picked by its
//! balancer, within its breaker's `max_connections`; a refused connect counts against the
//! endpoint for outlier detection and the next endpoint is tried), else the original
//! destination. A service with `tls.identity` is another sidecar: the stream goes over mTLS
//! with ALPN `remora-tcp/1` and no framing at all, since the far side's redirect keeps the
//! original destination, whose port it delivers to. Inbound, the target is the app:
//! `127.0.0.1` at the original destination port in transparent mode, `inbound.app`
//! otherwise; with `inbound.authorize`, a rule without paths and methods must allow the
//! caller. Every connection is counted by route and service, its bytes by direction, its
//! failure by reason, and logged when it closes.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::activity::Activity;
use crate::{
    authorize::Authorizer,
    context::ConnMeta,
    metrics::{Direction, Metrics, TcpMetrics},
    resilience::breaker::ConnectionSlot,
    routing::tcp::{TcpRoute, TcpTable},
    tls::connect::{Alpn, Originator},
    upstream::{self as connector, Service, Stream},
};

/// Time to connect to an original destination (no service says otherwise).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most endpoints tried for one connection when connects are refused.
const CONNECT_ATTEMPTS: usize = 3;

/// Where a direction's opaque connections go, assembled from a snapshot.
#[derive(Debug, Clone)]
pub struct TcpStack(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    direction: Direction,
    routes: Option<Arc<TcpTable>>,
    /// Inbound: the app's address in explicit mode.
    app: Option<Arc<Service>>,
    /// Inbound: who may connect.
    authorizer: Option<Arc<Authorizer>>,
    unmatched: TcpMetrics,
    idle_timeout: Duration,
    /// No byte either way this long after proxying began: closed (`limits.header_read_timeout`).
    silent_timeout: Duration,
    access_log: bool,
}

/// Why a connection ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// Both sides finished.
    Done,
    /// Nothing moved for the idle timeout.
    Idle,
    /// No byte moved either way at all.
    Silent,
    /// A read or write failed (a reset).
    Reset,
    /// No target could be reached.
    Failed(&'static str),
}

impl Close {
    fn as_str(self) -> &'static str {
        match self {
            Close::Done => "done",
            Close::Idle => "idle-timeout",
            Close::Silent => "silent",
            Close::Reset => "reset",
            Close::Failed(reason) => reason,
        }
    }
}

impl TcpStack {
    /// The outbound stack: `routes` first, else the original destination.
    pub fn outbound(
        routes: Arc<TcpTable>,
        metrics: &Metrics,
        (idle_timeout, silent_timeout): (Duration, Duration),
        access_log: bool,
    ) -> Self {
        Self(Arc::new(Inner {
            direction: Direction::Outbound,
            routes: Some(routes),
            app: None,
            authorizer: None,
            unmatched: metrics.tcp(Direction::Outbound, "", ""),
            idle_timeout,
            silent_timeout,
            access_log,
        }))
    }

    /// The inbound stack: to the app, for callers `authorizer` allows.
    pub fn inbound(
        app: Arc<Service>,
        authorizer: Option<Arc<Authorizer>>,
        metrics: &Metrics,
        (idle_timeout, silent_timeout): (Duration, Duration),
        access_log: bool,
    ) -> Self {
        Self(Arc::new(Inner {
            direction: Direction::Inbound,
            routes: None,
            unmatched: metrics.tcp(Direction::Inbound, "", app.name()),
            app: Some(app),
            authorizer,
            idle_timeout,
            silent_timeout,
            access_log,
        }))
    }

    /// Serves one opaque connection until it ends.
    pub async fn serve<IO>(&self, conn: ConnMeta, downstream: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let route = self.route(&conn);
        let metrics = route.map_or(&self.0.unmatched, |r| &r.metrics);
        let _open = metrics.opened();
        let (close, upstream, sent, received) = match self.connect(&conn, route).await {
            Ok(up) => {
                let (close, sent, received) = pipe(
                    downstream,
                    up.stream,
                    metrics,
                    self.0.idle_timeout,
                    self.0.silent_timeout,
                )
                .await;
                (close, Some(up.addr), sent, received)
            }
            Err(reason) => {
                metrics.failed(reason);
                (Close::Failed(reason), None, 0, 0)
            }
        };
        let route_name = route.map_or("", |r| r.spec.name.as_str());
        let service = route
            .map(|r| r.service.name().as_ref())
            .or(self.0.app.as_ref().map(|a| a.name().as_ref()))
            .unwrap_or("");
        match close {
            Close::Failed(reason) => tracing::warn!(
                direction = self.0.direction.as_str(),
                client = %conn.peer,
                original_dst = conn.original_dst.map(|a| a.to_string()),
                route = route_name,
                service,
                reason,
                "TCP connection failed"
            ),
            _ => tracing::debug!(
                direction = self.0.direction.as_str(),
                client = %conn.peer,
                close = close.as_str(),
                "TCP connection closed"
            ),
        }
        if self.0.access_log {
            tracing::info!(
                target: "remora::access",
                direction = self.0.direction.as_str(),
                protocol = "tcp",
                client = %conn.peer.ip(),
                client_id = conn.client_id.as_ref().map(|c| c.as_str()),
                original_dst = conn.original_dst.map(|a| a.to_string()),
                route = route_name,
                service,
                endpoint = upstream.map(|e: SocketAddr| e.to_string()),
                sent_bytes = sent,
                received_bytes = received,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                close = close.as_str(),
            );
        }
    }

    fn route(&self, conn: &ConnMeta) -> Option<&TcpRoute> {
        let dst = conn.original_dst?;
        self.0.routes.as_ref()?.route(dst)
    }

    /// Opens the upstream connection; `Err` names the failure's reason label.
    async fn connect(
        &self,
        conn: &ConnMeta,
        route: Option<&TcpRoute>,
    ) -> Result<Upstream, &'static str> {
        if let Some(route) = route {
            return to_service(&route.service).await;
        }
        if let Some(authz) = &self.0.authorizer {
            let caller = conn.client_id.as_ref().map(|c| c.as_str());
            if !authz.allows_connection(caller) {
                return Err("unauthorized");
            }
        }
        let target = match (&self.0.app, conn.original_dst) {
            // Inbound, transparent: the app on the port the caller meant.
            (Some(_), Some(dst)) => SocketAddr::from((Ipv4Addr::LOCALHOST, dst.port())),
            (Some(app), None) => {
                return match app.pick(&HeaderMap::new()) {
                    Some(ep) => Upstream::to(ep.addr(), app.spec().connect_timeout, None).await,
                    None => Err("no-endpoints"),
                }
            }
            (None, Some(dst)) => dst,
            // Explicit outbound listener: a non-HTTP client names no destination.
            (None, None) => return Err("no-destination"),
        };
        Upstream::to(target, CONNECT_TIMEOUT, None).await
    }
}

/// An open upstream connection.
struct Upstream {
    stream: Stream,
    addr: SocketAddr,
    /// The service breaker's connection slot, held while the connection is open.
    _slot: Option<ConnectionSlot>,
}

impl Upstream {
    /// Connects to `addr` within `timeout`, over mTLS with `tls` (to another sidecar).
    async fn to(
        addr: SocketAddr,
        timeout: Duration,
        slot: Option<ConnectionSlot>,
    ) -> Result<Self, &'static str> {
        Self::over(addr, timeout, slot, None).await
    }

    async fn over(
        addr: SocketAddr,
        timeout: Duration,
        slot: Option<ConnectionSlot>,
        tls: Option<&Originator>,
    ) -> Result<Self, &'static str> {
        let tcp = connector::connect(&connector::Target::Addr(addr), timeout)
            .await
            .map_err(|e| match e {
                connector::ConnectError::Timeout { .. } => "connect-timeout",
                _ => "connect-failure",
            })?;
        let stream = match tls {
            None => Stream::Plain(tcp),
            // Boxed: the handshake's state would otherwise sit in every connection's future.
            Some(tls) => match Box::pin(tls.connect(tcp, Alpn::Tcp, timeout)).await {
                Ok(s) if s.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_TCP) => {
                    Stream::Tls(Box::new(s))
                }
                // A peer that is no sidecar (or an older one) cannot take opaque TCP.
                Ok(_) => return Err("peer-not-a-sidecar"),
                Err(_) => return Err("tls-failure"),
            },
        };
        Ok(Self {
            stream,
            addr,
            _slot: slot,
        })
    }
}

/// Connects to an endpoint of `service`: within its breaker's `max_connections`, skipping
/// endpoints that refused, each refusal reported to outlier detection.
async fn to_service(service: &Service) -> Result<Upstream, &'static str> {
    let mut tried = Vec::new();
    let mut reason = "no-endpoints";
    while tried.len() < CONNECT_ATTEMPTS {
        let Some(ep) = service.pick_avoiding(&HeaderMap::new(), &tried) else {
            break;
        };
        if tried.contains(&ep.addr()) {
            break;
        }
        tried.push(ep.addr());
        let Some(slot) = service.breaker().reserve_connection() else {
            return Err("overloaded");
        };
        let tls = service.originator().map(|o| &**o);
        let timeout = service.spec().connect_timeout;
        match Upstream::over(ep.addr(), timeout, Some(slot), tls).await {
            Ok(up) => {
                service.observe(&ep, true);
                return Ok(up);
            }
            Err(r) => {
                service.observe(&ep, false);
                reason = r;
            }
        }
    }
    Err(reason)
}

/// Copies both ways until both sides have finished, `idle` passes with nothing moving, or
/// `silent` passes without a byte either way: a silent caller and a silent server have
/// nothing to say to each other, and a flood of such connections must not hold the
/// listener's connection slots for the whole idle timeout.
/// Returns how it ended and the bytes sent upstream and received from it.
async fn pipe<D>(
    downstream: D,
    upstream: Stream,
    metrics: &TcpMetrics,
    idle: Duration,
    silent: Duration,
) -> (Close, u64, u64)
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut down = downstream;
    let mut up = Metered {
        inner: upstream,
        metrics: metrics.clone(),
        activity: activity.clone(),
        sent: 0,
        received: 0,
    };
    let close = tokio::select! {
        r = copy(&mut down, &mut up) => {
            if r.is_ok() { Close::Done } else { Close::Reset }
        }
        _ = activity.idle_or_silent(silent.min(idle), idle) => {
            if activity.ever() { Close::Idle } else { Close::Silent }
        }
    };
    (close, up.sent, up.received)
}

/// Both ways, as `copy_bidirectional`, but its 16 KiB of buffers are allocated only once a
/// first byte moved: until then each side is read into a small buffer of the future's own,
/// so a silent connection (a flood of them) costs a fraction of the memory.
async fn copy<D>(down: &mut D, up: &mut Metered) -> io::Result<()>
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_down, mut from_up) = ([0u8; 64], [0u8; 64]);
    tokio::select! {
        r = down.read(&mut from_down) => {
            let n = r?;
            up.write_all(&from_down[..n]).await?;
        }
        r = up.read(&mut from_up) => {
            let n = r?;
            down.write_all(&from_up[..n]).await?;
        }
    }
    // A side that ended at once (a read of 0) ends again in the copy, which passes it on.
    tokio::io::copy_bidirectional(down, up).await.map(|_| ())
}

/// The upstream connection, counting bytes into the metrics as they move.
struct Metered {
    inner: Stream,
    metrics: TcpMetrics,
    activity: Activity,
    sent: u64,
    received: u64,
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = (buf.filled().len() - before) as u64;
            self.received += n;
            self.metrics.bytes(0, n);
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.sent += n as u64;
            self.metrics.bytes(n as u64, 0);
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An opaque connection's future, held for its whole life (a flood of silent ones
    /// included): the upstream TLS handshake is boxed and the copy buffers are allocated
    /// only once a byte moves, so it stays small.
    #[tokio::test]
    async fn an_opaque_connection_waiting_for_bytes_costs_about_a_kib() {
        let metrics = crate::metrics::Metrics::new().tcp(Direction::Inbound, "", "");
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let second = Duration::from_secs(1);
        let connect = std::mem::size_of_val(&Upstream::over(addr, second, None, None));
        assert!(connect < 1024, "connecting takes {connect} bytes");
        let (down, _) = tokio::io::duplex(64);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let pipe = pipe(down, Stream::Plain(up), &metrics, second, second);
        let size = std::mem::size_of_val(&pipe);
        assert!(size < 1200, "copying takes {size} bytes");
    }
}
