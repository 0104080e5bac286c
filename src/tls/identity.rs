//! This workload's identity: trust anchors, certificate chain and private key, read from PEM
//! files and checked to fit together before anything uses them: the key must match the
//! certificate, the certificate must carry a SPIFFE ID, be valid now, and chain to the trust
//! anchors for both client and server use. The result holds the rustls server config the
//! inbound listener terminates with and the parts outbound configs are built from.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, UnixTime},
    sign::CertifiedKey,
    RootCertStore, ServerConfig,
};

use super::{
    verify::{self, CallerVerifier},
    SpiffeId,
};

/// The three files of an identity, as the control file names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentityFiles {
    /// PEM bundle of CA certificates peers' certificates must chain to.
    pub trust_anchors: PathBuf,
    /// PEM certificate chain, this workload's certificate first.
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

/// Which file a problem is in, as the control file's field names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `identity.trust_anchors`.
    TrustAnchors,
    /// `identity.certificate`.
    Certificate,
    /// `identity.private_key`.
    PrivateKey,
}

impl Field {
    /// The field's path in the control file.
    pub fn path(self) -> &'static str {
        match self {
            Field::TrustAnchors => "identity.trust_anchors",
            Field::Certificate => "identity.certificate",
            Field::PrivateKey => "identity.private_key",
        }
    }
}

/// Why an identity cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", .path.display())]
pub struct IdentityError {
    /// The file at fault.
    pub field: Field,
    /// Its path.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// A loaded, checked identity.
#[derive(Debug)]
pub struct Identity {
    files: IdentityFiles,
    id: SpiffeId,
    not_after: i64,
    fingerprint: u64,
    roots: Arc<RootCertStore>,
    key: Arc<CertifiedKey>,
    server: Arc<ServerConfig>,
}

impl Identity {
    /// Reads and checks the files.
    pub fn load(files: &IdentityFiles) -> Result<Identity, IdentityError> {
        let read = |field: Field, path: &Path| {
            crate::files::read_bounded(path, crate::files::MAX_IDENTITY_BYTES).map_err(|message| {
                IdentityError {
                    field,
                    path: path.to_owned(),
                    message,
                }
            })
        };
        let anchors = read(Field::TrustAnchors, &files.trust_anchors)?;
        let cert = read(Field::Certificate, &files.certificate)?;
        let key = read(Field::PrivateKey, &files.private_key)?;
        Self::from_pem(files, &anchors, &cert, &key)
    }

    /// Checks PEM contents that were read from `files`.
    pub fn from_pem(
        files: &IdentityFiles,
        anchors: &[u8],
        cert: &[u8],
        key_pem: &[u8],
    ) -> Result<Identity, IdentityError> {
        let fail = |field: Field, message: String| IdentityError {
            field,
            path: match field {
                Field::TrustAnchors => files.trust_anchors.clone(),
                Field::Certificate => files.certificate.clone(),
                Field::PrivateKey => files.private_key.clone(),
            },
            message,
        };
        let certs = |field: Field, pem: &[u8]| -> Result<Vec<CertificateDer<'static>>, _> {
            let list = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(field, format!("invalid PEM: {e}")))?;
            if list.is_empty() {
                return Err(fail(field, "no CERTIFICATE block in the file".into()));
            }
            Ok(list)
        };

        let mut roots = RootCertStore::empty();
        for (i, ca) in certs(Field::TrustAnchors, anchors)?.into_iter().enumerate() {
            roots.add(ca).map_err(|e| {
                fail(
                    Field::TrustAnchors,
                    format!("certificate {} is not a usable trust anchor: {e}", i + 1),
                )
            })?;
        }
        let roots = Arc::new(roots);

        let chain = certs(Field::Certificate, cert)?;
        let private = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| fail(Field::PrivateKey, format!("no usable private key: {e}")))?;
        let certified = CertifiedKey::from_der(chain.clone(), private, &super::provider())
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => fail(
                    Field::PrivateKey,
                    format!(
                        "does not match the certificate in {}",
                        files.certificate.display()
                    ),
                ),
                other => fail(Field::PrivateKey, format!("unusable private key: {other}")),
            })?;

        let leaf = &chain[0];
        let id = verify::spiffe_id(leaf).map_err(|e| fail(Field::Certificate, e.to_string()))?;
        let (_, not_after) =
            verify::validity(leaf).map_err(|e| fail(Field::Certificate, e.to_string()))?;
        let end_entity = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| fail(Field::Certificate, format!("unusable certificate: {e}")))?;
        let algorithms = super::provider().signature_verification_algorithms.all;
        for (usage, name) in [
            (webpki::KeyUsage::client_auth(), "client"),
            (webpki::KeyUsage::server_auth(), "server"),
        ] {
            end_entity
                .verify_for_usage(
                    algorithms,
                    &roots.roots,
                    &chain[1..],
                    UnixTime::now(),
                    usage,
                    None,
                    None,
                )
                .map_err(|e| {
                    let why = match e {
                        webpki::Error::CertExpired { .. } => "has expired".to_owned(),
                        webpki::Error::CertNotValidYet { .. } => "is not valid yet".to_owned(),
                        webpki::Error::UnknownIssuer => format!(
                            "does not chain to the trust anchors in {}",
                            files.trust_anchors.display()
                        ),
                        webpki::Error::RequiredEkuNotFoundContext(_) => {
                            format!(
                                "is not allowed for TLS {name} authentication (extended key usage)"
                            )
                        }
                        other => format!("is not valid for TLS {name} authentication: {other}"),
                    };
                    fail(Field::Certificate, format!("certificate {id} {why}"))
                })?;
        }

        let verifier = CallerVerifier::new(roots.clone())
            .map_err(|e| fail(Field::TrustAnchors, e.to_string()))?;
        let key = Arc::new(certified);
        let mut server = ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(Field::Certificate, e.to_string()))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(Single(key.clone())));
        server.alpn_protocols = vec![
            super::ALPN_H2.to_vec(),
            super::ALPN_HTTP1.to_vec(),
            super::ALPN_TCP.to_vec(),
        ];

        Ok(Identity {
            files: files.clone(),
            id,
            not_after,
            fingerprint: fingerprint(anchors, cert, key_pem, files),
            roots,
            key,
            server: Arc::new(server),
        })
    }

    /// The files it was read from.
    pub fn files(&self) -> &IdentityFiles {
        &self.files
    }

    /// This workload's SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// When the certificate expires (Unix time).
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Identifies the contents; equal for the same files and bytes.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The trust anchors.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// The certificate chain and key.
    pub fn key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }

    /// The inbound listener's TLS config: client certificates required, ALPN h2, http/1.1.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server
    }
}

/// A hash of what makes an identity: the paths and the bytes of the three files.
pub fn fingerprint(anchors: &[u8], cert: &[u8], key: &[u8], files: &IdentityFiles) -> u64 {
    let mut h = DefaultHasher::new();
    (anchors, cert, key, files).hash(&mut h);
    h.finish()
}

/// Serves the one certificate whatever the client asks for.
#[derive(Debug)]
struct Single(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Single {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for Single {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The client-side resolver for `key`.
pub fn client_resolver(key: Arc<CertifiedKey>) -> Arc<dyn rustls::client::ResolvesClientCert> {
    Arc::new(Single(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::{Ca, Validity};

    const ID: &str = "spiffe://test.local/ns/a/sa/web";

    fn files() -> IdentityFiles {
        IdentityFiles {
            trust_anchors: "ca.crt".into(),
            certificate: "web.crt".into(),
            private_key: "web.key".into(),
        }
    }

    fn load(ca: &Ca, cert: &str, key: &str) -> Result<Identity, IdentityError> {
        Identity::from_pem(
            &files(),
            ca.pem.cert_pem.as_bytes(),
            cert.as_bytes(),
            key.as_bytes(),
        )
    }

    #[test]
    fn a_valid_set_loads_with_its_id_and_expiry() {
        let ca = Ca::new("t", Validity::days(2)).unwrap();
        let w = ca.issue(Some(ID), Validity::days(1)).unwrap();
        let id = load(&ca, &w.cert_pem, &w.key_pem).unwrap();
        assert_eq!(id.id().as_str(), ID);
        let now = UnixTime::now().as_secs() as i64;
        assert!((now + 86_000..now + 87_000).contains(&id.not_after()));
        let again = load(&ca, &w.cert_pem, &w.key_pem).unwrap();
        assert_eq!(id.fingerprint(), again.fingerprint());
        let other = ca.issue(Some(ID), Validity::days(1)).unwrap();
        let next = load(&ca, &other.cert_pem, &other.key_pem).unwrap();
        assert_ne!(id.fingerprint(), next.fingerprint());
        assert_eq!(
            id.server_config().alpn_protocols,
            vec![
                b"h2".to_vec(),
                b"http/1.1".to_vec(),
                b"remora-tcp/1".to_vec()
            ]
        );
    }

    #[test]
    fn each_problem_names_its_file() {
        let ca = Ca::new("t", Validity::days(2)).unwrap();
        let good = ca.issue(Some(ID), Validity::days(1)).unwrap();
        let now = UnixTime::now().as_secs() as i64;
        let cases = [
            (
                ca.issue(None, Validity::days(1)).unwrap(),
                None,
                Field::Certificate,
                "no spiffe:// URI SAN",
            ),
            (
                ca.issue(Some(ID), Validity::between(now - 100, now - 10))
                    .unwrap(),
                None,
                Field::Certificate,
                "has expired",
            ),
            (
                ca.issue(Some(ID), Validity::between(now + 100, now + 1000))
                    .unwrap(),
                None,
                Field::Certificate,
                "is not valid yet",
            ),
            (
                good.clone(),
                Some(ca.issue(Some(ID), Validity::days(1)).unwrap().key_pem),
                Field::PrivateKey,
                "does not match the certificate in web.crt",
            ),
            (
                good.clone(),
                Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into()),
                Field::PrivateKey,
                "unusable private key",
            ),
        ];
        for (issued, key, field, message) in cases {
            let key = key.unwrap_or(issued.key_pem.clone());
            let e = load(&ca, &issued.cert_pem, &key).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(message), "{message:?} in {e}");
        }
        let e = Identity::from_pem(
            &files(),
            b"",
            good.cert_pem.as_bytes(),
            good.key_pem.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.field, Field::TrustAnchors);
        assert!(
            e.to_string().starts_with("ca.crt: no CERTIFICATE block"),
            "{e}"
        );
        let stranger = Ca::new("other", Validity::days(2)).unwrap();
        let e = load(&stranger, &good.cert_pem, &good.key_pem).unwrap_err();
        assert!(
            e.message
                .contains("does not chain to the trust anchors in ca.crt"),
            "{e}"
        );
    }
}
