//! Passthrough pools: one connection pool per authority for requests no route took, each
//! resolving its host by DNS for every new connection.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use super::{Pool, Target};
use crate::routing::host_without_port;

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
        let pool = Pool::new(target, self.connect_timeout, IDLE_TIMEOUT);
        pools.insert(authority.to_owned(), pool.clone());
        Some(pool)
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

/// `host[:port]` (port 80 by default) as a connection target.
pub fn target(authority: &str) -> Option<Target> {
    let host = host_without_port(authority);
    let port = match &authority[host.len()..] {
        "" => 80,
        rest => rest.strip_prefix(':')?.parse().ok()?,
    };
    Some(Target::Host {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    })
}
