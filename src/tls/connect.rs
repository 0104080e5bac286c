//! The outbound side of mTLS: a service with `tls: { identity }` is called over TLS with this
//! workload's certificate, and its server must present exactly that SPIFFE ID. One
//! originator per service; its rustls configs are built once per identity generation (one
//! with ALPN `h2`, one with `http/1.1`) and shared by the service's connection pools.

use std::{io, sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use rustls::{pki_types::ServerName, ClientConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{
    identity::client_resolver,
    verify::{self, Failure, ServerIdentityVerifier},
    SpiffeId, TlsContext,
};
use crate::metrics::Direction;

/// Why a TLS connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OriginateError {
    /// The server's certificate names another identity.
    #[error("{0}")]
    Mismatch(verify::PeerError),
    /// Any other handshake failure.
    #[error("TLS handshake failed: {}: {source}", .failure.describe())]
    Handshake {
        /// Classified reason.
        failure: Failure,
        /// The error.
        source: io::Error,
    },
    /// No identity is loaded to authenticate with.
    #[error("no TLS identity is loaded")]
    NoIdentity,
    /// The handshake did not finish within the connect timeout.
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
}

/// Originates mTLS to one service's endpoints.
#[derive(Debug)]
pub struct Originator {
    expected: SpiffeId,
    tls: Arc<TlsContext>,
    configs: ArcSwapOption<Configs>,
}

#[derive(Debug)]
struct Configs {
    generation: u64,
    http1: Arc<ClientConfig>,
    http2: Arc<ClientConfig>,
    either: Arc<ClientConfig>,
    tcp: Arc<ClientConfig>,
}

/// What a connection offers the peer by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1` only.
    Http1,
    /// `h2` only.
    Http2,
    /// `h2`, then `http/1.1`: the peer picks.
    Either,
    /// Opaque TCP to another sidecar (`remora-tcp/1`).
    Tcp,
}

impl Originator {
    /// Calls peers that must be `expected` (a SPIFFE ID), with `tls`'s identity.
    pub fn new(expected: SpiffeId, tls: Arc<TlsContext>) -> Arc<Self> {
        Arc::new(Self {
            expected,
            tls,
            configs: ArcSwapOption::empty(),
        })
    }

    /// The SPIFFE ID the peer must have.
    pub fn expected(&self) -> &SpiffeId {
        &self.expected
    }

    /// Runs the client handshake on `tcp`, offering what `alpn` says, within `timeout`.
    /// Counted and, on failure, logged.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        alpn: Alpn,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, OriginateError> {
        let peer = tcp.peer_addr().ok();
        let result = self.handshake(tcp, alpn, timeout).await;
        let metrics = self.tls.metrics();
        match &result {
            Ok(_) => metrics.handshake(Direction::Outbound, Ok(())),
            Err(e) => {
                let failure = match e {
                    OriginateError::Mismatch(_) => Failure::PeerIdentityMismatch,
                    OriginateError::Handshake { failure, .. } => *failure,
                    OriginateError::NoIdentity => Failure::NoIdentity,
                    OriginateError::Timeout(_) => Failure::Timeout,
                };
                metrics.handshake(Direction::Outbound, Err(failure));
                tracing::warn!(direction = "outbound", peer = ?peer, expected = %self.expected, reason = failure.as_str(), error = %e, "TLS handshake failed: {}", failure.describe());
            }
        }
        result
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
        alpn: Alpn,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, OriginateError> {
        let configs = self.configs().ok_or(OriginateError::NoIdentity)?;
        let config = match alpn {
            Alpn::Http1 => configs.http1.clone(),
            Alpn::Http2 => configs.http2.clone(),
            Alpn::Either => configs.either.clone(),
            Alpn::Tcp => configs.tcp.clone(),
        };
        // The verifier checks the SPIFFE ID, not this name; an IP name also sends no SNI.
        let name = ServerName::IpAddress(
            tcp.peer_addr()
                .map(|a| a.ip())
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())
                .into(),
        );
        let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => match verify::mismatch(&e) {
                Some(m) => Err(OriginateError::Mismatch(m.clone())),
                None => Err(OriginateError::Handshake {
                    failure: Failure::of(&e),
                    source: e,
                }),
            },
            Err(_) => Err(OriginateError::Timeout(timeout)),
        }
    }

    /// The configs for the identity in force, rebuilt when it has changed.
    fn configs(&self) -> Option<Arc<Configs>> {
        let generation = self.tls.generation();
        if let Some(c) = self.configs.load_full() {
            if c.generation == generation {
                return Some(c);
            }
        }
        let identity = self.tls.identity()?;
        let build = |alpn: &[&[u8]]| {
            let verifier =
                ServerIdentityVerifier::new(identity.roots().clone(), self.expected.clone());
            let mut config = ClientConfig::builder_with_provider(super::provider())
                .with_safe_default_protocol_versions()
                .expect("the provider supports the default versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_client_cert_resolver(client_resolver(identity.key().clone()));
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        };
        let configs = Arc::new(Configs {
            generation,
            http1: build(&[super::ALPN_HTTP1]),
            http2: build(&[super::ALPN_H2]),
            either: build(&[super::ALPN_H2, super::ALPN_HTTP1]),
            tcp: build(&[super::ALPN_TCP]),
        });
        self.configs.store(Some(configs.clone()));
        Some(configs)
    }
}
