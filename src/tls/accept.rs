//! The inbound side of mTLS: for a caller that protocol detection found opening with a TLS
//! handshake, terminates TLS with the identity in force and returns the caller's SPIFFE ID;
//! for a plaintext caller on a `strict` listener, counts the refusal. Every handshake is
//! counted; every failure is logged with its reason.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::HeaderValue;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use super::{
    verify::{self, Failure},
    Mode, SpiffeId, TlsContext,
};
use crate::metrics::Direction;

/// A caller's SPIFFE ID, verified in the handshake, with the header value it reaches the app
/// as (made once per connection, not per request). One pointer wide, as every request's
/// connection metadata carries it.
#[derive(Debug, Clone)]
pub struct ClientId(Arc<(SpiffeId, HeaderValue)>);

impl ClientId {
    /// The SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.0 .0
    }

    /// The SPIFFE ID as text.
    pub fn as_str(&self) -> &str {
        self.0 .0.as_str()
    }

    /// The ID as an `x-remora-client-id` value.
    pub fn header(&self) -> &HeaderValue {
        &self.0 .1
    }
}

/// Terminates TLS on the inbound listener, in the mode the current config says.
pub struct Terminator {
    tls: Arc<TlsContext>,
    mode: Box<dyn Fn() -> Mode + Send + Sync>,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminator")
            .field("mode", &(self.mode)())
            .finish()
    }
}

impl Terminator {
    /// A terminator using `tls`'s identity, asking `mode` at every connection (the mode is
    /// part of the reloadable config).
    pub fn new(tls: Arc<TlsContext>, mode: impl Fn() -> Mode + Send + Sync + 'static) -> Self {
        Self {
            tls,
            mode: Box::new(mode),
        }
    }

    /// The mode in force (part of the reloadable config).
    pub fn mode(&self) -> Mode {
        (self.mode)()
    }

    /// The server config for a caller that opened with a TLS handshake; `None` (counted and
    /// logged) when no identity is loaded.
    pub fn server_config(&self, peer: SocketAddr) -> Option<Arc<ServerConfig>> {
        match self.tls.identity() {
            Some(id) => Some(id.server_config().clone()),
            None => {
                self.failed(peer, Failure::NoIdentity, "no identity is loaded");
                None
            }
        }
    }

    /// Counts and logs a plaintext caller on a `strict` listener. An HTTP caller is then
    /// answered 400 `mtls-required` by the inbound stack; anything else is closed.
    pub fn refused_plaintext(&self, peer: SocketAddr) {
        self.failed(peer, Failure::Plaintext, "inbound.tls is strict");
    }

    /// Runs the server handshake on `io` within `timeout`; returns the TLS stream and the
    /// caller's SPIFFE ID, or `None` after logging and counting the failure.
    pub async fn handshake<IO>(
        &self,
        io: IO,
        config: Arc<ServerConfig>,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Option<(TlsStream<IO>, ClientId)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let accept = tokio_rustls::TlsAcceptor::from(config).accept(io);
        let stream = match tokio::time::timeout(timeout, accept).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.failed(peer, Failure::of(&e), &e.to_string());
                return None;
            }
            Err(_) => {
                self.failed(peer, Failure::Timeout, "handshake not finished in time");
                return None;
            }
        };
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        let id = match leaf.map(verify::spiffe_id) {
            // A valid SPIFFE ID is visible ASCII, so it always makes a header value.
            Some(Ok(id)) => match HeaderValue::from_str(id.as_str()) {
                Ok(header) => ClientId(Arc::new((id, header))),
                Err(_) => {
                    self.failed(peer, Failure::InvalidSpiffeId, "not a header value");
                    return None;
                }
            },
            Some(Err(e)) => {
                let failure = match e {
                    verify::PeerError::InvalidSpiffeId(_) => Failure::InvalidSpiffeId,
                    _ => Failure::MissingSpiffeId,
                };
                self.failed(peer, failure, &e.to_string());
                return None;
            }
            None => {
                self.failed(peer, Failure::NoClientCertificate, "no client certificate");
                return None;
            }
        };
        self.tls.metrics().handshake(Direction::Inbound, Ok(()));
        tracing::debug!(peer = %peer, client_id = id.as_str(), alpn = ?stream.get_ref().1.alpn_protocol().map(String::from_utf8_lossy), "TLS handshake done");
        Some((stream, id))
    }

    fn failed(&self, peer: SocketAddr, failure: Failure, detail: &str) {
        self.tls
            .metrics()
            .handshake(Direction::Inbound, Err(failure));
        match failure {
            Failure::Timeout | Failure::Other => {
                tracing::debug!(direction = "inbound", peer = %peer, reason = failure.as_str(), error = detail, "TLS handshake failed")
            }
            _ => {
                tracing::warn!(direction = "inbound", peer = %peer, reason = failure.as_str(), error = detail, "TLS handshake failed: {}", failure.describe())
            }
        }
    }
}
