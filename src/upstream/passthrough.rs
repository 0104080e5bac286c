//! Passthrough pools: one connection pool per authority for requests no route took, each
//! resolving its host by DNS for every new connection.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use super::{Pool, Target};

/// Distinct authorities kept before the passthrough pools are emptied and start over.
const MAX_PASSTHROUGH_POOLS: usize = 1024;

/// Idle timeout of passthrough connections.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Connection pools for passthrough, one per authority.
#[derive(Debug)]
pub struct Passthrough {
    pools: Mutex<HashMap<String, Pool>>,
    connect_timeout: Duration,
}

impl Passthrough {
    /// Pools with this connect timeout.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            pools: Mutex::default(),
            connect_timeout,
        }
    }

    /// The pool for `authority` (`host[:port]`, port 80 by default); `None` when the port is
    /// not a number.
    pub fn pool(&self, authority: &str) -> Option<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pools.get(authority) {
            return Some(p.clone());
        }
        let target = target(authority)?;
        if pools.len() >= MAX_PASSTHROUGH_POOLS {
            // Requests in flight keep their own handle; idle connections are closed.
            pools.clear();
        }
        let pool = Pool::new(target, self.connect_timeout, IDLE_TIMEOUT, None, None);
        pools.insert(authority.to_owned(), pool.clone());
        Some(pool)
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

/// `host[:port]` (port 80 by default; IPv6 in brackets) as a connection target; `None` when
/// the port is not a number.
pub fn target(authority: &str) -> Option<Target> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']')?;
            let port = if after.is_empty() {
                None
            } else {
                Some(after.strip_prefix(':')?)
            };
            (v6, port)
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        None => 80,
        Some(p) => p.parse().ok()?,
    };
    (!host.is_empty()).then(|| Target::Host {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16) -> Option<Target> {
        Some(Target::Host {
            host: host.into(),
            port,
        })
    }

    #[test]
    fn parses_authorities() {
        assert_eq!(target("a.b"), t("a.b", 80));
        assert_eq!(target("a.b:8080"), t("a.b", 8080));
        assert_eq!(target("[::1]:81"), t("::1", 81));
        assert_eq!(target("[::1]"), t("::1", 80));
        assert_eq!(target("h:notaport"), None);
        assert_eq!(target("h:"), None);
        assert_eq!(target(":80"), None);
    }
}
