//! DNS discovery: re-resolves a service's `NAME:PORT` every `dns_refresh` and publishes the
//! addresses. A failed lookup keeps the last good set (a DNS blip must not empty a service).

use std::{
    net::SocketAddr,
    sync::{Arc, Weak},
    time::Duration,
};

use super::Service;

/// Resolves until the service is dropped.
pub async fn watch(service: Weak<Service>, host: String, port: u16, refresh: Duration) {
    loop {
        let resolved = tokio::net::lookup_host((host.as_str(), port)).await;
        let Some(svc) = service.upgrade() else { return };
        match resolved {
            Ok(addrs) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.sort_unstable();
                addrs.dedup();
                if addrs.is_empty() {
                    tracing::warn!(service = %svc.name(), %host, "dns returned no addresses; keeping the last set");
                } else {
                    svc.set_endpoints(&addrs);
                }
            }
            Err(e) => {
                tracing::warn!(service = %svc.name(), %host, error = %e, "dns lookup failed; keeping the last set");
            }
        }
        drop(svc);
        tokio::time::sleep(refresh).await;
    }
}

/// Starts the resolver task for `svc`.
pub fn spawn(svc: &Arc<Service>, host: String, port: u16, refresh: Duration) {
    tokio::spawn(watch(Arc::downgrade(svc), host, port, refresh));
}
