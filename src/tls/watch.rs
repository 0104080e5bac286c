//! Live rotation: the identity files are read every second; a change that has stayed the same
//! for two reads (so a half-written set is not judged) is loaded and checked. A valid set is
//! put in force for new handshakes; an invalid one is logged and counted once, and the
//! identity in force stays. Connections already open are not touched.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use super::{
    identity::{fingerprint, Identity},
    TlsContext,
};

/// How often the files are read.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Watches the files of the identity in force until `tls` is dropped.
pub fn spawn(tls: &Arc<TlsContext>, period: Duration) {
    let weak = Arc::downgrade(tls);
    tokio::spawn(watch(weak, period));
}

/// The three identity files, each a bounded regular file, read off the workers within a
/// deadline (a hung mount or a FIFO cannot stall rotation for good).
async fn read_all(files: &super::IdentityFiles) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>), String> {
    let files = files.clone();
    let read = tokio::task::spawn_blocking(move || {
        let one = |p: &std::path::Path| {
            crate::files::read_bounded(p, crate::files::MAX_IDENTITY_BYTES)
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        Ok::<_, String>((
            one(&files.trust_anchors)?,
            one(&files.certificate)?,
            one(&files.private_key)?,
        ))
    });
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("reading the identity files took more than 5s".into()),
    }
}

async fn watch(tls: Weak<TlsContext>, period: Duration) {
    // The fingerprint seen at the previous read, the last one judged invalid, and whether
    // the last read failed (each trouble is reported once, not every second).
    let mut previous = None;
    let mut rejected = None;
    let mut unreadable = false;
    loop {
        tokio::time::sleep(period).await;
        let Some(tls) = tls.upgrade() else { return };
        let Some(current) = tls.identity() else {
            previous = None;
            continue;
        };
        let files = current.files().clone();
        let read = read_all(&files).await;
        let (anchors, cert, key) = match read {
            Ok(t) => t,
            Err(e) => {
                if !unreadable {
                    tracing::warn!(certificate = %files.certificate.display(), error = %e, "identity files unreadable; the identity in force stays");
                    tls.metrics().rotation(false);
                    unreadable = true;
                }
                continue;
            }
        };
        unreadable = false;
        let seen = fingerprint(&anchors, &cert, &key, &files);
        let stable = previous.replace(seen) == Some(seen);
        if seen == current.fingerprint() {
            rejected = None;
            continue;
        }
        if !stable || rejected == Some(seen) {
            continue;
        }
        match Identity::from_pem(&files, &anchors, &cert, &key) {
            Ok(identity) => {
                tracing::info!(
                    identity = identity.id().as_str(),
                    not_after = identity.not_after(),
                    "identity files changed; new handshakes use them"
                );
                tls.install(Some(identity));
                tls.metrics().rotation(true);
                rejected = None;
            }
            Err(e) => {
                tracing::error!(field = e.field.path(), path = %e.path.display(), error = %e.message, "identity files changed but are invalid; the identity in force stays");
                tls.metrics().rotation(false);
                rejected = Some(seen);
            }
        }
    }
}
