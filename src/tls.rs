//! Mutual TLS between sidecars, on rustls.
//!
//! - [`identity`]: this workload's trust anchors, certificate and key, read from PEM files,
//!   checked to fit together and made into rustls configs.
//! - [`verify`]: certificate checks by SPIFFE ID (a URI SAN), not by DNS name.
//! - [`accept`]: the inbound side: tells TLS from plaintext, terminates TLS, learns the
//!   caller's identity.
//! - [`connect`]: the outbound side: originates TLS and checks the peer's identity.
//! - [`watch`]: live rotation of the identity files.
//! - [`certs`]: a development CA and workload certificates (`remora certs`).
//! - [`spiffe`]: SPIFFE ID patterns (exact, prefix, any), for authorization and config checks.
//!
//! **Crypto provider: ring.** It builds with a C compiler alone (no cmake, no Go, no NASM),
//! which keeps a clean build and CI short, and its AES-GCM, ChaCha20-Poly1305, X25519 and
//! ECDSA are as fast as aws-lc-rs's for the small records a sidecar mostly moves. aws-lc-rs
//! would bring FIPS validation and post-quantum key exchange; neither is asked of Remora yet,
//! and the provider is chosen in one place ([`provider`]) should that change.

pub mod accept;
pub mod certs;
pub mod connect;
pub mod identity;
pub mod spiffe;
pub mod verify;
pub mod watch;

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, OnceLock,
};

use arc_swap::ArcSwapOption;
use prometheus::{Gauge, IntCounter, IntCounterVec, Opts};
use rustls::crypto::CryptoProvider;

pub use identity::{Identity, IdentityError, IdentityFiles};
pub use spiffe::SpiffeId;

use crate::metrics::{Direction, Metrics};

/// The crypto provider for every TLS config Remora builds.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// ALPN protocol ids.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN protocol id of opaque TCP between sidecars: after the handshake the TLS stream carries
/// the connection's bytes as they are, to the original destination's port on the far side.
pub const ALPN_TCP: &[u8] = b"remora-tcp/1";

/// `inbound.tls`: what the inbound listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only TLS with a client certificate from the trust anchors.
    Strict,
    /// TLS as in `Strict`, and plaintext on the same port (told apart by the first byte).
    Permissive,
    /// Plaintext only.
    Disabled,
}

/// Process-wide TLS state: the identity in force (replaced on rotation) and the TLS metrics.
#[derive(Debug)]
pub struct TlsContext {
    current: ArcSwapOption<Identity>,
    generation: AtomicU64,
    metrics: TlsMetrics,
}

impl TlsContext {
    /// A context without an identity; registers the TLS metrics on `metrics`.
    pub fn new(metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            metrics: TlsMetrics::new(metrics),
        })
    }

    /// The identity in force, if any.
    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.current.load_full()
    }

    /// Bumped at every identity change; outbound configs are rebuilt when it moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts `identity` in force for new handshakes (connections already open keep theirs).
    /// Returns `false` when it is the one already in force.
    pub fn install(&self, identity: Option<Identity>) -> bool {
        let current = self.current.load();
        let same = match (current.as_deref(), identity.as_ref()) {
            (Some(a), Some(b)) => a.fingerprint() == b.fingerprint(),
            (None, None) => true,
            _ => false,
        };
        if same {
            return false;
        }
        match &identity {
            Some(id) => {
                self.metrics.expiry.set(id.not_after() as f64);
                tracing::info!(
                    identity = id.id().as_str(),
                    not_after = id.not_after(),
                    certificate = %id.files().certificate.display(),
                    "TLS identity in force"
                );
            }
            None => self.metrics.expiry.set(0.0),
        }
        self.current.store(identity.map(Arc::new));
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// TLS metrics.
    pub fn metrics(&self) -> &TlsMetrics {
        &self.metrics
    }
}

/// `remora_tls_*` metrics.
#[derive(Debug, Clone)]
pub struct TlsMetrics {
    handshakes: IntCounterVec,
    success: [IntCounter; 2],
    rotations: IntCounterVec,
    expiry: Gauge,
}

impl TlsMetrics {
    fn new(metrics: &Metrics) -> Self {
        let handshakes = IntCounterVec::new(
            Opts::new(
                "remora_tls_handshakes_total",
                "TLS handshakes by listener side (inbound: terminated, outbound: originated) and result.",
            ),
            &["direction", "result"],
        )
        .expect("valid metric");
        let rotations = IntCounterVec::new(
            Opts::new(
                "remora_tls_identity_reloads_total",
                "Changes to the identity files, by result (success: in force; rejected: invalid, the previous identity stays).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let expiry = Gauge::new(
            "remora_tls_certificate_expiry_timestamp_seconds",
            "Unix time at which the certificate in force expires (0 without an identity).",
        )
        .expect("valid metric");
        metrics.register(Box::new(handshakes.clone()));
        metrics.register(Box::new(rotations.clone()));
        metrics.register(Box::new(expiry.clone()));
        for r in ["success", "rejected"] {
            rotations.with_label_values(&[r]);
        }
        let success = [Direction::Inbound, Direction::Outbound]
            .map(|d| handshakes.with_label_values(&[d.as_str(), "success"]));
        Self {
            handshakes,
            success,
            rotations,
            expiry,
        }
    }

    /// Counts a handshake; `result` is `success` or a failure reason from
    /// [`verify::Failure::as_str`].
    pub fn handshake(&self, direction: Direction, result: Result<(), verify::Failure>) {
        match result {
            Ok(()) => {
                let i = match direction {
                    Direction::Inbound => 0,
                    Direction::Outbound => 1,
                };
                self.success[i].inc()
            }
            Err(f) => self
                .handshakes
                .with_label_values(&[direction.as_str(), f.as_str()])
                .inc(),
        }
    }

    /// Counts a change of the identity files.
    pub fn rotation(&self, accepted: bool) {
        let r = if accepted { "success" } else { "rejected" };
        self.rotations.with_label_values(&[r]).inc();
    }
}
