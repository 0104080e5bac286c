//! Certificate checks for a mesh: a peer is known by the SPIFFE ID in its certificate's URI
//! SAN, not by a DNS name. Inbound, the caller's certificate must chain to the trust anchors
//! and carry a SPIFFE ID; outbound, the server's must chain to them and carry exactly the ID
//! the service names. Failures are classified ([`Failure`]) for logs and metrics.

use std::{fmt, io, sync::Arc};

use super::SpiffeId;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

/// The SPIFFE ID in `cert` (its first `spiffe://` URI SAN), or why there is none or it is
/// not a valid one.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Result<SpiffeId, PeerError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| PeerError::Unparsable(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| PeerError::Unparsable(e.to_string()))?;
    let uri = san
        .into_iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                Some(*uri)
            }
            _ => None,
        })
        .ok_or(PeerError::MissingSpiffeId)?;
    SpiffeId::parse(uri).map_err(PeerError::InvalidSpiffeId)
}

/// The validity period of `cert` as Unix times.
pub fn validity(cert: &CertificateDer<'_>) -> Result<(i64, i64), PeerError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| PeerError::Unparsable(e.to_string()))?;
    let v = parsed.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// What is wrong with a peer's certificate beyond what rustls names itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// No `spiffe://` URI SAN.
    #[error("certificate has no spiffe:// URI SAN")]
    MissingSpiffeId,
    /// A `spiffe://` URI SAN that is not a valid SPIFFE ID.
    #[error("certificate's SPIFFE ID is invalid: {0}")]
    InvalidSpiffeId(String),
    /// The server is not the one the service names.
    #[error("peer identity is {found}, expected {expected}")]
    Mismatch {
        /// The service's `tls.identity`.
        expected: SpiffeId,
        /// The SPIFFE ID the server presented.
        found: SpiffeId,
    },
    /// The certificate is not valid DER.
    #[error("certificate cannot be parsed: {0}")]
    Unparsable(String),
}

impl From<PeerError> for rustls::Error {
    fn from(e: PeerError) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

/// Why a handshake failed: the `result` label of `remora_tls_handshakes_total` and the
/// `reason` of the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The peer's certificate has expired.
    Expired,
    /// The peer's certificate is not valid yet.
    NotYetValid,
    /// The peer's certificate does not chain to the trust anchors.
    UnknownCa,
    /// The peer's certificate carries no SPIFFE ID.
    MissingSpiffeId,
    /// The peer's certificate carries a `spiffe://` URI that is not a valid SPIFFE ID.
    InvalidSpiffeId,
    /// The server's SPIFFE ID is not the one the service names.
    PeerIdentityMismatch,
    /// The caller sent no client certificate.
    NoClientCertificate,
    /// The peer refused our certificate or the handshake (an alert).
    PeerRejected,
    /// A plaintext caller on a `strict` listener.
    Plaintext,
    /// This side has no identity to offer (its files never loaded).
    NoIdentity,
    /// The handshake did not finish in time.
    Timeout,
    /// Anything else: a bad signature, a protocol error, the connection closing.
    Other,
}

impl Failure {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Expired => "expired",
            Failure::NotYetValid => "not-yet-valid",
            Failure::UnknownCa => "unknown-ca",
            Failure::MissingSpiffeId => "missing-spiffe-id",
            Failure::InvalidSpiffeId => "invalid-spiffe-id",
            Failure::PeerIdentityMismatch => "peer-identity-mismatch",
            Failure::NoClientCertificate => "no-client-certificate",
            Failure::PeerRejected => "peer-rejected",
            Failure::Plaintext => "plaintext-refused",
            Failure::NoIdentity => "no-identity",
            Failure::Timeout => "timeout",
            Failure::Other => "error",
        }
    }

    /// One sentence saying what went wrong, for the log line.
    pub fn describe(self) -> &'static str {
        match self {
            Failure::Expired => "the peer's certificate has expired",
            Failure::NotYetValid => "the peer's certificate is not valid yet",
            Failure::UnknownCa => "the peer's certificate is not issued by a trusted CA",
            Failure::MissingSpiffeId => "the peer's certificate has no SPIFFE ID (URI SAN)",
            Failure::InvalidSpiffeId => "the peer's certificate has an invalid SPIFFE ID",
            Failure::PeerIdentityMismatch => "the peer is not the identity the service names",
            Failure::NoClientCertificate => "the caller sent no client certificate",
            Failure::PeerRejected => "the peer refused the handshake",
            Failure::Plaintext => "plaintext connection refused",
            Failure::NoIdentity => "this proxy has no identity loaded",
            Failure::Timeout => "the handshake timed out",
            Failure::Other => "handshake error",
        }
    }

    /// Classifies the error of a failed handshake.
    pub fn of(e: &io::Error) -> Failure {
        if e.kind() == io::ErrorKind::TimedOut {
            return Failure::Timeout;
        }
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return Failure::Other;
        };
        match tls {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Failure::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Failure::NotYetValid
                }
                CertificateError::UnknownIssuer => Failure::UnknownCa,
                CertificateError::Other(OtherError(inner)) => {
                    match inner.downcast_ref::<PeerError>() {
                        Some(PeerError::MissingSpiffeId) => Failure::MissingSpiffeId,
                        Some(PeerError::InvalidSpiffeId(_)) => Failure::InvalidSpiffeId,
                        Some(PeerError::Mismatch { .. }) => Failure::PeerIdentityMismatch,
                        _ => Failure::Other,
                    }
                }
                _ => Failure::Other,
            },
            rustls::Error::NoCertificatesPresented => Failure::NoClientCertificate,
            rustls::Error::AlertReceived(_) => Failure::PeerRejected,
            _ => Failure::Other,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The peer-identity mismatch inside a handshake error, if that is what it is.
pub fn mismatch(e: &io::Error) -> Option<&PeerError> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => inner
            .downcast_ref::<PeerError>()
            .filter(|p| matches!(p, PeerError::Mismatch { .. })),
        _ => None,
    }
}

/// Inbound: a caller's certificate must chain to the trust anchors (rustls' WebPKI client
/// verifier) and carry a SPIFFE ID.
#[derive(Debug)]
pub struct CallerVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl CallerVerifier {
    /// A verifier trusting `roots`.
    pub fn new(roots: Arc<RootCertStore>) -> Result<Self, rustls::Error> {
        let inner =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, super::provider())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(Self { inner })
    }
}

impl ClientCertVerifier for CallerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        spiffe_id(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Outbound: the server's certificate must chain to the trust anchors and carry exactly the
/// expected SPIFFE ID. The name the connection was opened with plays no part.
#[derive(Debug)]
pub struct ServerIdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerIdentityVerifier {
    /// A verifier trusting `roots` and expecting `expected`.
    pub fn new(roots: Arc<RootCertStore>, expected: SpiffeId) -> Self {
        Self {
            roots,
            expected,
            algorithms: super::provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(pki_error)?;
        let found = spiffe_id(end_entity)?;
        if found != self.expected {
            return Err(PeerError::Mismatch {
                expected: self.expected.clone(),
                found,
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// WebPKI's verdict in rustls' terms (the cases a mesh meets; the rest by message).
pub fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    let c = match e {
        W::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        W::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        W::InvalidCertValidity => CertificateError::Expired,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::BadDer | W::BadDerTime | W::TrailingData(_) => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(c)
}
