//! Development certificates (`remora certs`): a CA and workload certificates whose only
//! name is a SPIFFE ID in a URI SAN, usable for both TLS client and server authentication,
//! ECDSA P-256. For demos and tests; production identities come from the mesh's CA.

use std::path::{Path, PathBuf};

use rcgen::{
    string::Ia5String, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// A certificate authority that signs workload certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate and key.
    pub pem: Issued,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// Validity period of a certificate.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Not valid before.
    pub not_before: OffsetDateTime,
    /// Not valid after.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (tolerating clock skew) to `days` from now.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }

    /// From `from` to `until`, both Unix times (tests make expired and future certificates).
    pub fn between(from: i64, until: i64) -> Self {
        let at = |t| OffsetDateTime::from_unix_timestamp(t).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Self {
            not_before: at(from),
            not_after: at(until),
        }
    }
}

impl Ca {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str, validity: Validity) -> Result<Ca, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, name.to_owned());
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        let pem = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Ca {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// A CA from its PEM certificate and key (to issue more workloads with an existing CA).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let pem = Issued {
            cert_pem: cert_pem.to_owned(),
            key_pem: key.serialize_pem(),
        };
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Ca { issuer, pem })
    }

    /// A workload certificate for `spiffe_id` (`None`: no URI SAN at all, for tests of that
    /// failure).
    pub fn issue(
        &self,
        spiffe_id: Option<&str>,
        validity: Validity,
    ) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(id) = spiffe_id {
            params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id)?)];
        } else {
            params
                .distinguished_name
                .push(DnType::CommonName, "no-spiffe-id");
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The file stem for a workload's files: the SPIFFE ID's last path segment (`.../sa/web` →
/// `web`), or the trust domain when the ID has no path.
pub fn file_stem(spiffe_id: &str) -> String {
    let rest = spiffe_id.strip_prefix("spiffe://").unwrap_or(spiffe_id);
    rest.rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("workload")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What [`write_dev_certs`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Whether the CA was created (`false`: the one in the directory was reused).
    pub new_ca: bool,
    /// For each SPIFFE ID, the certificate and key paths.
    pub workloads: Vec<(String, PathBuf, PathBuf)>,
}

/// Writes `ca.crt` and `ca.key` into `dir` (reusing them when both exist) and a certificate
/// and key per SPIFFE ID, named by [`file_stem`]. Keys are written readable by the owner only.
pub fn write_dev_certs(dir: &Path, ids: &[String], days: i64) -> Result<Written, String> {
    if ids.is_empty() {
        return Err("give at least one SPIFFE ID, e.g. spiffe://demo.local/ns/shop/sa/web".into());
    }
    for id in ids {
        match super::spiffe::IdPattern::parse(id) {
            Ok(super::spiffe::IdPattern::Exact(_)) => {}
            Ok(_) => return Err(format!("{id:?}: give exact SPIFFE IDs, not patterns")),
            Err(e) => return Err(e),
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (ca, new_ca) = if ca_cert.exists() && ca_key.exists() {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        let ca = Ca::from_pem(&read(&ca_cert)?, &read(&ca_key)?)
            .map_err(|e| format!("{}: not a usable CA: {e}", ca_cert.display()))?;
        (ca, false)
    } else {
        let ca = Ca::new("Remora development CA", Validity::days(days.max(1) * 2))
            .map_err(|e| e.to_string())?;
        write(&ca_cert, &ca.pem.cert_pem, false)?;
        write(&ca_key, &ca.pem.key_pem, true)?;
        (ca, true)
    };
    let mut workloads = Vec::new();
    for id in ids {
        let issued = ca
            .issue(Some(id), Validity::days(days))
            .map_err(|e| format!("{id}: {e}"))?;
        let stem = file_stem(id);
        let (crt, key) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        write(&crt, &issued.cert_pem, false)?;
        write(&key, &issued.key_pem, true)?;
        workloads.push((id.clone(), crt, key));
    }
    Ok(Written { new_ca, workloads })
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    use std::io::Write;
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(fail)
}
