//! Passthrough: requests no route took go to their own authority, through one connection
//! pool per authority, each resolving its host by DNS for every new connection.
//!
//! The pools sit in a copy-on-write map: a request reads it without a lock, and only a new
//! authority copies it (under a mutex held for the copy, never across I/O). An authority
//! unused for the idle timeout is dropped on its own by a sweeper; at the cap, the least
//! recently used one makes room. Requests in flight keep their pool's handle either way.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Once, Weak,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::time::Instant;
use tower::Service;

use super::{client, Pool, Target};
use crate::{
    context::{stack_service, BoxFuture, Req},
    error::ProxyError,
    headers,
    metrics::UpstreamMetrics,
};

/// Distinct authorities kept at once.
const MAX_PASSTHROUGH_POOLS: usize = 1024;

/// Idle timeout of passthrough connections, and of an authority's pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Connection pools for passthrough, one per authority.
#[derive(Debug)]
pub struct Passthrough {
    pools: ArcSwap<HashMap<String, Arc<Entry>>>,
    /// Serializes the copies of `pools` (a new authority, an eviction).
    writer: Mutex<()>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    start: Instant,
    sweeping: Once,
}

#[derive(Debug)]
struct Entry {
    pool: Pool,
    /// Milliseconds since `start` of the last request.
    last_used: AtomicU64,
}

impl Passthrough {
    /// Pools with this connect timeout.
    pub fn new(connect_timeout: Duration) -> Arc<Self> {
        Self::with_idle_timeout(connect_timeout, IDLE_TIMEOUT)
    }

    /// Pools with this connect timeout whose authorities are dropped after `idle_timeout`
    /// without a request.
    pub fn with_idle_timeout(connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            pools: ArcSwap::default(),
            writer: Mutex::new(()),
            connect_timeout,
            idle_timeout,
            start: Instant::now(),
            sweeping: Once::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The pool for `authority` (`host[:port]`, port 80 by default); `None` when the port is
    /// not a number.
    pub fn pool(self: &Arc<Self>, authority: &str) -> Option<Pool> {
        if let Some(e) = self.pools.load().get(authority) {
            e.last_used.store(self.now_ms(), Ordering::Relaxed);
            return Some(e.pool.clone());
        }
        let target = target(authority)?;
        let _writing = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.pools.load_full();
        if let Some(e) = current.get(authority) {
            return Some(e.pool.clone());
        }
        let mut next = HashMap::clone(&current);
        if next.len() >= MAX_PASSTHROUGH_POOLS {
            let oldest = next
                .iter()
                .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                next.remove(&k);
            }
        }
        // Passthrough speaks the caller's protocol where the peer does (`auto`).
        let pool = Pool::new(
            target,
            self.connect_timeout,
            self.idle_timeout,
            None,
            None,
            true,
        );
        next.insert(
            authority.to_owned(),
            Arc::new(Entry {
                pool: pool.clone(),
                last_used: AtomicU64::new(self.now_ms()),
            }),
        );
        self.pools.store(Arc::new(next));
        self.start_sweeper();
        Some(pool)
    }

    /// Authorities with a pool now.
    pub fn authorities(&self) -> usize {
        self.pools.load().len()
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Drops the authorities unused for the idle timeout, until `self` is dropped.
    fn start_sweeper(self: &Arc<Self>) {
        self.sweeping.call_once(|| {
            let weak: Weak<Self> = Arc::downgrade(self);
            let period = (self.idle_timeout / 2).max(Duration::from_millis(100));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(period).await;
                    let Some(p) = weak.upgrade() else { return };
                    p.sweep();
                }
            });
        });
    }

    fn sweep(&self) {
        let idle = self.idle_timeout.as_millis() as u64;
        let now = self.now_ms();
        let stale = |e: &Entry| now.saturating_sub(e.last_used.load(Ordering::Relaxed)) >= idle;
        if !self.pools.load().values().any(|e| stale(e)) {
            return;
        }
        let _writing = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::clone(&self.pools.load_full());
        next.retain(|_, e| !stale(e));
        self.pools.store(Arc::new(next));
    }
}

/// The bottom of the passthrough stack: sends a request to its own authority.
#[derive(Debug, Clone)]
pub struct PassthroughClient {
    pools: Arc<Passthrough>,
    metrics: UpstreamMetrics,
    to: To,
}

/// Where a passed-through request goes.
#[derive(Debug, Clone, Copy)]
enum To {
    /// Outbound: the connection's original destination (transparent mode), else the
    /// request's own authority (explicit mode).
    Destination,
    /// Inbound, transparent: the app on `127.0.0.1` at the original destination's port.
    LocalPort,
}

impl PassthroughClient {
    /// Sends each request to where its caller was connecting (its original destination)
    /// or, with none, to its own authority, through `pools`, counting attempts in `metrics`.
    pub fn new(pools: Arc<Passthrough>, metrics: UpstreamMetrics) -> Self {
        Self {
            pools,
            metrics,
            to: To::Destination,
        }
    }

    /// Sends each request to `127.0.0.1` at its original destination's port (the inbound
    /// side of transparent mode: an app listening on several ports gets each).
    pub fn local_ports(pools: Arc<Passthrough>, metrics: UpstreamMetrics) -> Self {
        Self {
            pools,
            metrics,
            to: To::LocalPort,
        }
    }
}

impl Service<Req> for PassthroughClient {
    stack_service!();

    fn call(&mut self, req: Req) -> BoxFuture {
        let original = req.ctx.conn().original_dst;
        let pool = match (self.to, original) {
            (To::Destination, Some(dst)) => self.pools.pool(&dst.to_string()),
            (To::LocalPort, Some(dst)) => self.pools.pool(&format!("127.0.0.1:{}", dst.port())),
            (_, None) => {
                headers::authority(req.uri(), req.headers()).and_then(|a| self.pools.pool(a))
            }
        };
        let Some(pool) = pool else {
            let err = ProxyError::BadRequest("invalid port in authority");
            return Box::pin(std::future::ready(Err(err)));
        };
        let metrics = self.metrics.clone();
        Box::pin(async move { client::send(&pool, req, &metrics).await })
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

    #[tokio::test(start_paused = true)]
    async fn idle_authorities_leave_one_by_one() {
        let p = Passthrough::with_idle_timeout(Duration::from_secs(1), Duration::from_secs(10));
        let a = p.pool("a:80").unwrap();
        assert!(
            p.pool("a:80").unwrap().same_as(&a),
            "one pool per authority"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        p.pool("b:80").unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        p.sweep();
        assert_eq!(p.authorities(), 1, "a idled out, b stays");
        assert!(
            !p.pool("a:80").unwrap().same_as(&a),
            "a comes back with a new pool"
        );
        assert!(p.pool("x:notaport").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_least_recently_used_makes_room() {
        let p = Passthrough::new(Duration::from_secs(1));
        for i in 0..MAX_PASSTHROUGH_POOLS {
            p.pool(&format!("h{i}:80")).unwrap();
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        p.pool("h0:80").unwrap(); // h0 is used again: h1 is now the oldest
        tokio::time::advance(Duration::from_millis(1)).await;
        p.pool("new:80").unwrap();
        assert_eq!(p.authorities(), MAX_PASSTHROUGH_POOLS);
        let pools = p.pools.load();
        assert!(pools.contains_key("h0:80") && pools.contains_key("new:80"));
        assert!(!pools.contains_key("h1:80"));
    }
}
