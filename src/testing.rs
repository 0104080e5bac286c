//! Test doubles for the layers' unit tests: a scripted inner service that records what it
//! was sent, and request builders with a context attached.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::Service;

use crate::{
    body::ProxyBody,
    context::{stack_service, BoxFuture, ConnMeta, Ctx, Req, Resp},
    error::ProxyError,
    metrics::Direction,
};

/// What the mock saw of one call.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method, URI, headers of the request.
    pub parts: http::request::Parts,
    /// The whole body, read by the mock.
    pub body: Bytes,
    /// The try's timeout, when the retry layer set one.
    pub try_timeout: Option<Duration>,
    /// Endpoints the context said to avoid.
    pub tried: Vec<SocketAddr>,
}

type Script = dyn Fn(usize) -> Result<Resp, ProxyError> + Send + Sync;

/// An inner service answering call `n` (from 0) with `script(n)`, after `delay`.
#[derive(Clone)]
pub struct Mock {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Script>,
    delay: Duration,
}

impl std::fmt::Debug for Mock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mock").finish_non_exhaustive()
    }
}

impl Mock {
    /// Answers with `script(n)` at once.
    pub fn new(script: impl Fn(usize) -> Result<Resp, ProxyError> + Send + Sync + 'static) -> Self {
        Self {
            seen: Arc::default(),
            script: Arc::new(script),
            delay: Duration::ZERO,
        }
    }

    /// Answers with these statuses in turn (the last one from then on).
    pub fn statuses(codes: &'static [u16]) -> Self {
        Self::new(move |n| Ok(status(codes[n.min(codes.len() - 1)])))
    }

    /// Waits `delay` before each answer.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The calls so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many calls so far.
    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Service<Req> for Mock {
    stack_service!();

    fn call(&mut self, req: Req) -> BoxFuture {
        let this = self.clone();
        Box::pin(async move {
            let ctx = req.ctx.clone();
            let tried = ctx.tags().tried.clone();
            // Each call is "sent to" endpoint 10.0.0.n:80, so retries can be seen avoiding it.
            let n = this.seen.lock().unwrap().len();
            ctx.set_endpoint(SocketAddr::from(([10, 0, 0, n as u8], 80)));
            let try_timeout = req.try_timeout;
            let (parts, body) = req.http.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            this.seen.lock().unwrap().push(Seen {
                parts,
                body,
                try_timeout,
                tried,
            });
            if !this.delay.is_zero() {
                tokio::time::sleep(this.delay).await;
            }
            (this.script)(n)
        })
    }
}

/// A response with this status and a small body.
pub fn status(code: u16) -> Resp {
    let mut r = Response::new(ProxyBody::full("body"));
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}

/// A request to `uri` with `body`, from 127.0.0.1 on the outbound listener.
pub fn request(method: &str, uri: &str, body: &'static str) -> Req {
    let http = Request::builder()
        .method(method)
        .uri(uri)
        .body(ProxyBody::full(body))
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], 40000));
    Req::new(
        http,
        Ctx::new(ConnMeta::plain(addr, addr, Direction::Outbound)),
    )
}

/// A connect failure, as the client reports one.
pub fn connect_failure() -> ProxyError {
    ProxyError::Connect {
        target: "10.0.0.1:80".into(),
        source: "connection refused".into(),
    }
}

/// A `DownstreamUpgrade`, as the listener puts on a request that asks to upgrade.
pub fn on_upgrade() -> crate::context::DownstreamUpgrade {
    crate::context::DownstreamUpgrade::Hyper(hyper::upgrade::on(Request::new(())))
}
