//! One upstream endpoint: its address, its pooled connections (HTTP/1.1 and HTTP/2), and the
//! count of requests in flight that the least-request balancer reads.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use http::Version;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioTimer},
};

use super::connector::Connector;
use crate::body::ProxyBody;

/// A pooled HTTP client whose connections all go where its connector says.
pub type HttpClient = Client<Connector, ProxyBody>;

/// An upstream endpoint with its connection pools.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    in_flight: AtomicUsize,
    http1: HttpClient,
    http2: HttpClient,
}

impl Endpoint {
    /// An endpoint at `addr`; connections are opened lazily.
    pub fn new(addr: SocketAddr, connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        let connector = Connector::fixed(addr, connect_timeout);
        Arc::new(Self {
            addr,
            in_flight: AtomicUsize::new(0),
            http1: client(connector.clone(), idle_timeout, false),
            http2: client(connector, idle_timeout, true),
        })
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests in flight (from send until the response body ends).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The pool for this protocol version (HTTP/2 prior knowledge, else HTTP/1.1).
    pub fn client(&self, version: Version) -> &HttpClient {
        if version == Version::HTTP_2 {
            &self.http2
        } else {
            &self.http1
        }
    }
}

/// Builds a pooled client. A request that fails on a reused connection before any byte was
/// written is retried on a fresh one (hyper-util's `retry_canceled_requests`, on by default).
pub fn client(connector: Connector, idle_timeout: Duration, http2_only: bool) -> HttpClient {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(http2_only)
        // The caller's Host header is kept; the URI carries the same authority.
        .set_host(true);
    if http2_only {
        b.http2_adaptive_window(true);
    }
    b.build(connector)
}

/// Keeps one request counted as in flight on an endpoint.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
