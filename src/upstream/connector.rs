//! Opens TCP connections for the upstream connection pools: to one fixed endpoint (services),
//! or to the request's own authority resolved by DNS (passthrough). Applies the connect
//! timeout and `TCP_NODELAY`.

use std::{future::Future, io, net::SocketAddr, pin::Pin, task::Poll, time::Duration};

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
    /// The authority's host name did not resolve.
    #[error("resolve {host}: {reason}")]
    Resolve {
        /// Host name.
        host: String,
        /// What went wrong.
        reason: String,
    },
}

/// Where the connector connects.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// Always this endpoint, whatever the URI says (the URI keeps the caller's authority).
    Fixed(SocketAddr),
    /// The URI's authority, resolved by DNS (port 80 by default).
    FromUri,
}

/// A `tower::Service<Uri>` for `hyper_util`'s pooled client.
#[derive(Debug, Clone)]
pub struct Connector {
    target: Target,
    timeout: Duration,
}

impl Connector {
    /// Connects to `addr` for every URI.
    pub fn fixed(addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            target: Target::Fixed(addr),
            timeout,
        }
    }

    /// Connects to each URI's own authority.
    pub fn from_uri(timeout: Duration) -> Self {
        Self {
            target: Target::FromUri,
            timeout,
        }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (target, timeout) = (self.target, self.timeout);
        Box::pin(async move {
            let addrs = match target {
                Target::Fixed(addr) => vec![addr],
                Target::FromUri => resolve(&uri).await?,
            };
            let mut last = None;
            for addr in addrs {
                match connect(addr, timeout).await {
                    Ok(s) => return Ok(TokioIo::new(s)),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| ConnectError::Resolve {
                host: uri.host().unwrap_or_default().to_owned(),
                reason: "no addresses".into(),
            }))
        })
    }
}

async fn resolve(uri: &Uri) -> Result<Vec<SocketAddr>, ConnectError> {
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let err = |reason: String| ConnectError::Resolve {
        host: host.to_owned(),
        reason,
    };
    let addrs: Vec<_> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| err(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(err("no addresses".into()));
    }
    Ok(addrs)
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
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
