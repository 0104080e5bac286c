//! The data path's listeners: the accept loop and connection handling (`server`), each
//! direction's stack (`outbound`, `inbound`) and [`Stacks`], both assembled from a config
//! snapshot, the layers only they use (`observe`: metrics, rescue and the access log;
//! `forward`: request preparation and the forwarding path every backend shares; `hygiene`:
//! what every request must satisfy before routing; `http_conn`: HTTP/1.1 and HTTP/2 on one
//! connection, parking idle HTTP/1.1 ones; `gated`: a connection's control waits, polled only
//! when woken), and
//! `rescue`, the one place an error becomes a response.

mod activity;
pub mod detect;
pub mod forward;
mod gated;
mod http_conn;
pub mod hygiene;
pub mod inbound;
pub mod observe;
pub mod orig_dst;
pub mod outbound;
mod rescue;
pub mod server;
pub mod tcp;

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{Request, Version};
use hyper::body::Incoming;
use tower::{Layer, Service};

use crate::{
    body::ProxyBody,
    context::{stack_service, BoxFuture, Ctx, Req, Resp},
    headers,
    metrics::{Direction, RequestMetrics},
    routing::tcp::PortSet,
    runtime::{Shared, Snapshot},
};
use tcp::TcpStack;

pub use crate::context::ConnMeta;
pub use crate::error::ProxyError;
pub use rescue::rescue;

/// Both directions' stacks for one snapshot, assembled once when it is put in force; each
/// request or opaque connection clones the one for its listener.
#[derive(Debug)]
pub struct Stacks {
    outbound: Side,
    inbound: Side,
}

/// One listener's stacks.
#[derive(Debug)]
struct Side {
    http: Stack,
    /// `None`: no section for this listener; opaque connections are closed.
    tcp: Option<TcpStack>,
    opaque_ports: PortSet,
}

impl Stacks {
    /// Assembles the stacks `snapshot` describes, bound to what outlives it in `shared`.
    /// `previous` (the stacks in force before a reload) hands on the stacks of the routes the
    /// reload kept.
    pub fn build(snapshot: &Snapshot, shared: &Shared, previous: Option<&Stacks>) -> Self {
        let (metrics, access_log) = (&shared.metrics, snapshot.access_log);
        let observing = observe::Observing {
            access_log,
            tracer: shared.tracer.clone(),
        };
        let limits = snapshot.startup.limits;
        let tcp_idle = (limits.tcp_idle_timeout, limits.header_read_timeout);
        let hygiene = hygiene::Rules {
            paths: snapshot.paths,
            max_headers: limits.max_headers,
        };
        let unconfigured = |d| Side {
            http: Stack::unconfigured(metrics.request(d, "", ""), observing.clone()),
            tcp: None,
            opaque_ports: PortSet::new(),
        };
        let before = previous.and_then(|p| match &p.outbound.http {
            Stack::Outbound(stack) => Some(stack),
            _ => None,
        });
        Self {
            outbound: match &snapshot.outbound {
                Some(ob) => Side {
                    http: Stack::Outbound(outbound::stack(
                        ob.table.clone(),
                        metrics,
                        &shared.passthrough,
                        observing.clone(),
                        hygiene,
                        before,
                    )),
                    tcp: Some(TcpStack::outbound(
                        ob.tcp.clone(),
                        metrics,
                        tcp_idle,
                        access_log,
                    )),
                    opaque_ports: ob.opaque_ports.clone(),
                },
                None => unconfigured(Direction::Outbound),
            },
            inbound: match &snapshot.inbound {
                Some(ib) => Side {
                    http: Stack::Inbound(inbound::stack(
                        ib,
                        metrics,
                        &shared.passthrough,
                        observing.clone(),
                        (hygiene, limits.underscores),
                    )),
                    tcp: Some(TcpStack::inbound(
                        ib.app.clone(),
                        ib.authorizer.clone(),
                        metrics,
                        tcp_idle,
                        access_log,
                    )),
                    opaque_ports: ib.opaque_ports.clone(),
                },
                None => unconfigured(Direction::Inbound),
            },
        }
    }

    fn side(&self, d: Direction) -> &Side {
        match d {
            Direction::Outbound => &self.outbound,
            Direction::Inbound => &self.inbound,
        }
    }

    /// The HTTP stack for requests on the `d` listener.
    pub fn get(&self, d: Direction) -> Stack {
        self.side(d).http.clone()
    }

    /// The opaque TCP stack of the `d` listener; `None` when its section is gone.
    pub fn tcp(&self, d: Direction) -> Option<TcpStack> {
        self.side(d).tcp.clone()
    }

    /// Whether connections to `port` on the `d` listener skip detection.
    pub fn opaque_port(&self, d: Direction, port: u16) -> bool {
        self.side(d).opaque_ports.contains(&port)
    }
}

/// A direction's stack, or what answers when the snapshot has no section for the listener a
/// request came in on.
#[derive(Debug, Clone)]
pub enum Stack {
    /// The outbound listener's stack.
    Outbound(outbound::OutboundStack),
    /// The inbound listener's stack.
    Inbound(inbound::InboundStack),
    /// No section for this listener: every request gets 404 `no-route`, recorded here.
    Unconfigured(observe::Observe<Reject>),
}

impl Stack {
    /// The stack for a listener whose section is gone, recording in `metrics`.
    pub fn unconfigured(metrics: RequestMetrics, observing: observe::Observing) -> Self {
        Stack::Unconfigured(observe::ObserveLayer::new(metrics, None, observing).layer(Reject))
    }
}

/// Answers one request on a data listener with `stack` (the listener's wiring takes it from
/// the stacks in force, once per request, so the request sees one config).
pub fn handle(stack: Stack, conn: ConnMeta, req: Request<Incoming>) -> Handled {
    // An HTTP/1 caller gets trailers only where the response declares them.
    let trailers = req.version() < Version::HTTP_2 && headers::accepts_trailers(req.headers());
    let req = Req::new(req.map(ProxyBody::stream), Ctx::new(conn));
    let answer = match stack {
        Stack::Outbound(mut s) => s.call(req),
        Stack::Inbound(mut s) => s.call(req),
        Stack::Unconfigured(mut s) => s.call(req),
    };
    Handled { answer, trailers }
}

/// One request's answer on its way. A named future, not an `async fn`'s: that one kept the
/// stack and the request beside the answer, and every move of it copied them.
pub struct Handled {
    answer: observe::Observed,
    trailers: bool,
}

impl Future for Handled {
    type Output = Resp;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Resp> {
        let answer = std::task::ready!(Pin::new(&mut self.answer).poll(cx));
        let mut resp = answer.unwrap_or_else(|never: Infallible| match never {});
        if self.trailers {
            headers::declare_grpc_trailers(resp.headers_mut());
        }
        Poll::Ready(resp)
    }
}

/// Refuses every request with `no-route`.
#[derive(Debug, Clone, Copy)]
pub struct Reject;

impl Service<Req> for Reject {
    stack_service!();

    fn call(&mut self, _: Req) -> BoxFuture {
        Box::pin(std::future::ready(Err(ProxyError::NoRoute)))
    }
}
