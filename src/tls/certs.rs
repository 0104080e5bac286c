//! Development certificates (`remora certs`): a CA and workload certificates whose only
//! name is a SPIFFE ID in a URI SAN, usable for both TLS client and server authentication,
//! ECDSA P-256. For demos and tests; production identities come from the mesh's CA.

use std::path::{Path, PathBuf};

use rcgen::{
    string::Ia5String, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
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

/// Why an existing CA cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    /// The private key does not parse.
    #[error("not a usable private key: {0}")]
    Key(String),
    /// The certificate does not parse or is not a CA.
    #[error("not a usable CA certificate: {0}")]
    Cert(String),
    /// The key is not the certificate's.
    #[error("the key does not belong to the certificate")]
    Mismatch,
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
    /// The error names the part at fault: the key, the certificate, or the pair.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Key(e.to_string()))?;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CaError::Cert(format!("no PEM certificate ({e})")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| CaError::Cert(e.to_string()))?;
        if !parsed.is_ca() {
            return Err(CaError::Cert("the certificate is not a CA".into()));
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::Mismatch);
        }
        let pem = Issued {
            cert_pem: cert_pem.to_owned(),
            key_pem: key.serialize_pem(),
        };
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| CaError::Cert(e.to_string()))?;
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
        // An ECDSA key signs; keyEncipherment is for RSA key transport (RFC 5480, 3).
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
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

/// The file stems for the workloads' files, one per ID and never two alike: an ID's last
/// path segment (`.../sa/web` → `web`); where two IDs share it, or it is `ca`, the whole path
/// (`ns-shop-sa-web`); where those still meet, the trust domain before it. Characters other
/// than letters, digits, `-`, `_` and `.` become `_`.
pub fn file_stems(ids: &[&str]) -> Result<Vec<String>, String> {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let parts = |id: &str| {
        let rest = id.strip_prefix("spiffe://").unwrap_or(id);
        let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        (
            domain.to_owned(),
            path.split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        )
    };
    // The name at each level of detail: last segment, whole path, trust domain and path.
    let form = |level: usize, domain: &str, path: &[String]| match (level, path.last()) {
        (0, Some(last)) => last.clone(),
        (1, Some(_)) => path.join("-"),
        (2, Some(_)) => format!("{domain}-{}", path.join("-")),
        _ => domain.to_owned(),
    };
    let mut stems: Vec<Option<String>> = vec![None; ids.len()];
    for level in 0..3 {
        let candidates: Vec<String> = ids
            .iter()
            .map(|id| {
                let (domain, path) = parts(id);
                clean(&form(level, &domain, &path))
            })
            .collect();
        for (i, c) in candidates.iter().enumerate() {
            if stems[i].is_some() {
                continue;
            }
            let shared = candidates
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && o == c && ids[j] != ids[i]);
            if !shared && c != "ca" {
                stems[i] = Some(c.clone());
            }
        }
    }
    ids.iter()
        .zip(stems)
        .map(|(id, stem)| stem.ok_or_else(|| format!("{id}: no file name of its own (another ID differs from it only in characters a file name cannot hold)")))
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
/// and key per SPIFFE ID, named by [`file_stems`]. Keys are written readable by the owner
/// only. A certificate already in `dir` under a name this run uses is replaced only when it
/// holds the same ID.
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
    let mut unique: Vec<&str> = Vec::new();
    for id in ids {
        if !unique.contains(&id.as_str()) {
            unique.push(id);
        }
    }
    let stems = file_stems(&unique)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    // A workload file this run would overwrite must hold the same ID (a renewal).
    for (id, stem) in unique.iter().zip(&stems) {
        let crt = dir.join(format!("{stem}.crt"));
        if crt.exists() {
            let text = read(&crt)?;
            let held = rustls::pki_types::CertificateDer::from_pem_slice(text.as_bytes())
                .ok()
                .and_then(|der| super::verify::spiffe_id(&der).ok());
            match held {
                Some(held) if held.as_str() == *id => {}
                Some(held) => {
                    return Err(format!(
                        "{}: holds {held}, not {id}; remove it or write into another --out",
                        crt.display()
                    ))
                }
                None => {
                    return Err(format!(
                        "{}: exists and is not a workload certificate; remove it or write into another --out",
                        crt.display()
                    ))
                }
            }
        }
    }
    let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (ca, new_ca) = if ca_cert.exists() || ca_key.exists() {
        for (p, other) in [(&ca_cert, &ca_key), (&ca_key, &ca_cert)] {
            if !p.exists() {
                return Err(format!(
                    "{}: missing, but {} is there; restore it, or remove both for a new CA",
                    p.display(),
                    other.display()
                ));
            }
        }
        let ca = Ca::from_pem(&read(&ca_cert)?, &read(&ca_key)?).map_err(|e| match e {
            CaError::Key(_) => format!("{}: {e}", ca_key.display()),
            CaError::Cert(_) => format!("{}: {e}", ca_cert.display()),
            CaError::Mismatch => format!(
                "{}: the key does not belong to {}",
                ca_key.display(),
                ca_cert.display()
            ),
        })?;
        (ca, false)
    } else {
        let ca = Ca::new("Remora development CA", Validity::days(days.max(1) * 2))
            .map_err(|e| e.to_string())?;
        write(&ca_cert, &ca.pem.cert_pem, false)?;
        write(&ca_key, &ca.pem.key_pem, true)?;
        (ca, true)
    };
    let mut workloads = Vec::new();
    for (id, stem) in unique.iter().zip(&stems) {
        let issued = ca
            .issue(Some(id), Validity::days(days))
            .map_err(|e| format!("{id}: {e}"))?;
        let (crt, key) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        write(&crt, &issued.cert_pem, false)?;
        write(&key, &issued.key_pem, true)?;
        workloads.push((id.to_string(), crt, key));
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
