//! The data path's listeners: the accept loop and connection handling (`server`), each
//! direction's stack (`outbound`, `inbound`), the layers only they use (`observe`: metrics,
//! rescue and the access log; `forward`: request preparation and the forwarding path every
//! backend shares; `authorize`), and `rescue`, the one place an
//! error becomes a response.

pub mod authorize;
pub mod forward;
pub mod inbound;
pub mod observe;
pub mod outbound;
mod rescue;
pub mod server;

use std::{convert::Infallible, sync::Arc};

use http::Request;
use hyper::body::Incoming;
use tower::{Layer, Service};

use crate::{
    body::ProxyBody,
    context::{stack_service, BoxFuture, Ctx, Req, Resp},
    metrics::Direction,
    runtime::Runtime,
};

pub use crate::context::ConnMeta;
pub use crate::error::ProxyError;
pub use rescue::rescue;

/// Answers one request on a data listener with its direction's stack from the snapshot in
/// force (read once, so the request sees one config).
pub async fn handle(rt: Arc<Runtime>, conn: ConnMeta, req: Request<Incoming>) -> Resp {
    let snap = rt.snapshot();
    let direction = conn.direction;
    let req = Req::new(req.map(ProxyBody::stream), Ctx::new(conn));
    let answer = match direction {
        Direction::Outbound => match &snap.outbound {
            Some(ob) => ob.stack.clone().call(req).await,
            None => unconfigured(&rt, direction, snap.access_log, req).await,
        },
        Direction::Inbound => match &snap.inbound {
            Some(ib) => ib.stack.clone().call(req).await,
            None => unconfigured(&rt, direction, snap.access_log, req).await,
        },
    };
    answer.unwrap_or_else(|never: Infallible| match never {})
}

/// Answers a request on a listener whose section the current config no longer has (404, as
/// no route can take it).
async fn unconfigured(
    rt: &Runtime,
    direction: Direction,
    access_log: bool,
    req: Req,
) -> Result<Resp, Infallible> {
    let fallback = rt.shared.metrics.request(direction, "", "");
    observe::ObserveLayer::new(fallback, None, access_log)
        .layer(Reject)
        .call(req)
        .await
}

/// Refuses every request with `no-route`.
#[derive(Debug, Clone, Copy)]
struct Reject;

impl Service<Req> for Reject {
    stack_service!();

    fn call(&mut self, _: Req) -> BoxFuture {
        Box::pin(std::future::ready(Err(ProxyError::NoRoute)))
    }
}
