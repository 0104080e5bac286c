//! The data path's listeners: the accept loop and connection handling (`server`), each
//! direction's stack (`outbound`, `inbound`) and [`Stacks`], both assembled from a config
//! snapshot, the layers only they use (`observe`: metrics, rescue and the access log;
//! `forward`: request preparation and the forwarding path every backend shares), and
//! `rescue`, the one place an error becomes a response.

pub mod forward;
pub mod inbound;
pub mod observe;
pub mod outbound;
mod rescue;
pub mod server;

use std::convert::Infallible;

use http::Request;
use hyper::body::Incoming;
use tower::{Layer, Service};

use crate::{
    body::ProxyBody,
    context::{stack_service, BoxFuture, Ctx, Req, Resp},
    metrics::{Direction, RequestMetrics},
    runtime::{Shared, Snapshot},
};

pub use crate::context::ConnMeta;
pub use crate::error::ProxyError;
pub use rescue::rescue;

/// Both directions' stacks for one snapshot, assembled once when it is put in force; each
/// request clones the one for its listener.
#[derive(Debug)]
pub struct Stacks {
    outbound: Stack,
    inbound: Stack,
}

impl Stacks {
    /// Assembles the stacks `snapshot` describes, bound to what outlives it in `shared`.
    pub fn build(snapshot: &Snapshot, shared: &Shared) -> Self {
        let (metrics, access_log) = (&shared.metrics, snapshot.access_log);
        let unconfigured = |d| Stack::unconfigured(metrics.request(d, "", ""), access_log);
        Self {
            outbound: match &snapshot.outbound {
                Some(ob) => Stack::Outbound(outbound::stack(
                    ob.table.clone(),
                    metrics,
                    &shared.passthrough,
                    access_log,
                )),
                None => unconfigured(Direction::Outbound),
            },
            inbound: match &snapshot.inbound {
                Some(ib) => Stack::Inbound(inbound::stack(ib, metrics, access_log)),
                None => unconfigured(Direction::Inbound),
            },
        }
    }

    /// The stack for requests on the `d` listener.
    pub fn get(&self, d: Direction) -> Stack {
        match d {
            Direction::Outbound => self.outbound.clone(),
            Direction::Inbound => self.inbound.clone(),
        }
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
    pub fn unconfigured(metrics: RequestMetrics, access_log: bool) -> Self {
        Stack::Unconfigured(observe::ObserveLayer::new(metrics, None, access_log).layer(Reject))
    }
}

/// Answers one request on a data listener with `stack` (the listener's wiring takes it from
/// the stacks in force, once per request, so the request sees one config).
pub async fn handle(stack: Stack, conn: ConnMeta, req: Request<Incoming>) -> Resp {
    let req = Req::new(req.map(ProxyBody::stream), Ctx::new(conn));
    let answer = match stack {
        Stack::Outbound(mut s) => s.call(req).await,
        Stack::Inbound(mut s) => s.call(req).await,
        Stack::Unconfigured(mut s) => s.call(req).await,
    };
    answer.unwrap_or_else(|never: Infallible| match never {})
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
