//! Opens TCP connections for the pools: to a fixed endpoint (services) or to a host name
//! resolved by DNS (passthrough), within the connect timeout and with `TCP_NODELAY`. A pool
//! speaks HTTP over a [`Stream`]: the TCP connection itself, or mTLS on top of it.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

/// An upstream connection, plaintext or mTLS.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// mTLS over TCP (boxed: the TLS state is large and most pools are plaintext).
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The endpoint did not accept in time.
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout {
        /// Endpoint address.
        addr: SocketAddr,
        /// The connect timeout.
        timeout: Duration,
    },
    /// The endpoint refused or the network failed.
    #[error("connect to {addr}: {source}")]
    Io {
        /// Endpoint address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The host name did not resolve.
    #[error("resolve {host}: {reason}")]
    Resolve {
        /// Host name.
        host: String,
        /// What went wrong.
        reason: String,
    },
}

/// Where a pool's connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One endpoint address.
    Addr(SocketAddr),
    /// A host name (or IP literal) and port, resolved for every new connection.
    Host {
        /// Host name or IP literal (IPv6 without brackets).
        host: String,
        /// Port.
        port: u16,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Connects to `target`, trying each resolved address in turn.
pub async fn connect(target: &Target, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match target {
        Target::Addr(addr) => connect_addr(*addr, timeout).await,
        Target::Host { host, port } => {
            let addrs: Vec<SocketAddr> = match host.parse() {
                Ok(ip) => vec![SocketAddr::new(ip, *port)],
                Err(_) => tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| ConnectError::Resolve {
                        host: host.clone(),
                        reason: e.to_string(),
                    })?
                    .collect(),
            };
            let mut last = None;
            for addr in addrs {
                match connect_addr(addr, timeout).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| ConnectError::Resolve {
                host: host.clone(),
                reason: "no addresses".into(),
            }))
        }
    }
}

async fn connect_addr(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout { addr, timeout })?
        .map_err(|source| ConnectError::Io { addr, source })?;
    // Small requests and responses must not wait for Nagle.
    stream
        .set_nodelay(true)
        .map_err(|source| ConnectError::Io { addr, source })?;
    Ok(stream)
}
