//! Shaping a request for its upstream and a response for its caller. `Prepare` turns the
//! caller's request into the upstream request once, before the tries: hop-by-hop hygiene,
//! `x-forwarded-*`, the route's path rewrite and request header edits, and the protocol
//! version the service speaks (HTTP/1.1 in origin form with `Host`, HTTP/2 with the absolute
//! URI); the client strips the response's hop-by-hop headers on the way back. `ResponseEdits`
//! applies a route's response header edits to every answer the route gives.
//!
//! Between sidecars (a service called over mTLS, `tls.identity`), an HTTP/1.1 request travels
//! as HTTP/2, so that all of a caller's requests to one peer endpoint share one multiplexed
//! mTLS connection, with `x-remora-orig-proto: HTTP/1.1` telling the receiving sidecar to
//! restore it for its app (as linkerd2-proxy's `l5d-orig-proto` does). The header is removed
//! from every request that comes in, and honoured only from an mTLS caller.

use std::sync::Arc;

use crate::context::DownstreamUpgrade;
use http::{
    header,
    uri::{Authority, PathAndQuery, Scheme},
    HeaderValue, Request, Uri, Version,
};
use tower::{Layer, Service, ServiceBuilder};

use crate::{
    body::{Meter, ProxyBody},
    context::{stack_service, BoxFuture, ConnMeta, Req, Stage},
    error::ProxyError,
    headers,
    metrics::Flow,
    resilience::retry::{Retry, RetryLayer},
    routing::{HeaderEdits, Rewrite},
    upstream::{self, Balance, Protocol},
};

/// The forwarding path to one service: preparation → tries → balancer → pooled client.
pub type Forward = Prepare<Retry<Balance>>;

use headers::ORIG_PROTO;

/// Who the upstream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// An app or an outside server: it gets the protocol `Protocol` says.
    Server,
    /// Another sidecar, over mTLS: HTTP/1.1 goes as HTTP/2 with the original protocol noted.
    Sidecar,
}

/// The forwarding path to `service`, with a route's `rewrite` and request `edits` (none for
/// the inbound app) and its `tries`. Routes, their mirrors and the inbound app all send
/// through it.
pub fn to_service(
    service: &Arc<upstream::Service>,
    rewrite: Option<Rewrite>,
    edits: HeaderEdits,
    tries: RetryLayer,
) -> Forward {
    let peer = match service.spec().tls {
        Some(_) => Peer::Sidecar,
        None => Peer::Server,
    };
    path(
        service.spec().protocol,
        peer,
        rewrite,
        edits,
        tries,
        Balance::new(service.clone()),
    )
}

/// Preparation and tries over any client (a service's balancer, or the passthrough pools).
pub fn path<C>(
    protocol: Protocol,
    peer: Peer,
    rewrite: Option<Rewrite>,
    edits: HeaderEdits,
    tries: RetryLayer,
    client: C,
) -> Prepare<Retry<C>> {
    ServiceBuilder::new()
        .layer(PrepareLayer::new(protocol, peer, rewrite, edits))
        .layer(tries)
        .service(client)
}

/// How requests to one backend are shaped.
#[derive(Debug, Clone)]
pub struct PrepareLayer(Arc<Shape>);

#[derive(Debug)]
struct Shape {
    protocol: Protocol,
    peer: Peer,
    rewrite: Option<Rewrite>,
    edits: HeaderEdits,
}

impl PrepareLayer {
    /// Requests for `peer` speaking `protocol`, rewritten by `rewrite` and edited by `edits`
    /// (a route's; none for the inbound app and passthrough).
    pub fn new(
        protocol: Protocol,
        peer: Peer,
        rewrite: Option<Rewrite>,
        edits: HeaderEdits,
    ) -> Self {
        Self(Arc::new(Shape {
            protocol,
            peer,
            rewrite,
            edits,
        }))
    }
}

impl<S> Layer<S> for PrepareLayer {
    type Service = Prepare<S>;

    fn layer(&self, inner: S) -> Prepare<S> {
        Prepare {
            shape: self.0.clone(),
            inner,
        }
    }
}

/// Shapes the request, then sends it on through `S`.
#[derive(Debug, Clone)]
pub struct Prepare<S> {
    shape: Arc<Shape>,
    inner: S,
}

impl<S> Service<Req> for Prepare<S>
where
    S: Stage,
{
    stack_service!();

    fn call(&mut self, req: Req) -> BoxFuture {
        let Req {
            http,
            ctx,
            try_timeout,
        } = req;
        let mut http = match prepare(http, ctx.conn(), &self.shape) {
            Ok(r) => r,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        self.shape.edits.apply(http.headers_mut());
        // The caller's body is counted as it streams, under the route and service taking it.
        if !http_body::Body::is_end_stream(http.body()) {
            if let Some(metrics) = ctx.tags().metrics.clone() {
                let tally = ctx.clone();
                let meter = Meter::new(
                    metrics.bytes(Flow::Request),
                    Some(Box::new(move |n| tally.set_received(n))),
                );
                http = http.map(|b| b.metered(meter));
            }
        }
        self.inner.call(Req {
            http,
            ctx,
            try_timeout,
        })
    }
}

/// The upstream request for `req`. An upgrade keeps the caller's `OnUpgrade` for the client
/// to tunnel with; any other request loses it, which tells the layers below it is not one.
fn prepare(
    req: Request<ProxyBody>,
    conn: &ConnMeta,
    shape: &Shape,
) -> Result<Request<ProxyBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let upgrade = headers::is_upgrade(parts.version, &parts.method, &parts.headers);
    if !upgrade {
        parts.extensions.remove::<DownstreamUpgrade>();
    }
    // The caller's protocol: a sidecar's HTTP/2 hop may stand for HTTP/1.1. Only an mTLS
    // caller is asked; hop-by-hop stripping removes the header from every request.
    let restored = conn.tls
        && parts
            .headers
            .get(ORIG_PROTO)
            .is_some_and(|v| v == "HTTP/1.1");
    let downstream_version = if restored {
        Version::HTTP_11
    } else {
        parts.version
    };
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let proto = if conn.tls { "https" } else { "http" };
    headers::add_forwarded(&mut parts.headers, &conn.forwarded_for, proto);

    let pq = match &shape.rewrite {
        Some(rw) => PathAndQuery::try_from(rw.apply(parts.uri.path(), parts.uri.query()))
            .map_err(|_| ProxyError::BadRequest("rewritten path is not a valid URI"))?,
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    parts.version = match shape.protocol {
        _ if upgrade => Version::HTTP_11,
        // Configured HTTP/1.1 stays so; otherwise one multiplexed connection per peer.
        Protocol::Auto | Protocol::Http2 if shape.peer == Peer::Sidecar => {
            if downstream_version != Version::HTTP_2 {
                parts
                    .headers
                    .insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
            }
            Version::HTTP_2
        }
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 => Version::HTTP_2,
        // The caller's protocol, falling back in the pool where the peer lacks HTTP/2; gRPC
        // needs HTTP/2 whatever the caller spoke.
        Protocol::Auto if downstream_version == Version::HTTP_2 => Version::HTTP_2,
        Protocol::Auto if headers::is_grpc(&parts.headers) => Version::HTTP_2,
        Protocol::Auto => Version::HTTP_11,
    };
    // Without an authority in the URI or a Host, the client fills in the endpoint's address.
    if parts.version == Version::HTTP_2 {
        let authority = match (parts.uri.authority(), parts.headers.get(header::HOST)) {
            (Some(a), _) => Some(a.clone()),
            (None, Some(h)) => Some(
                Authority::try_from(h.as_bytes())
                    .map_err(|_| ProxyError::BadRequest("invalid host header"))?,
            ),
            (None, None) => None,
        };
        let mut uri = http::uri::Parts::default();
        if let Some(a) = authority {
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(a);
        }
        uri.path_and_query = Some(pq);
        parts.uri =
            Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
        // HTTP/2 carries the authority in `:authority`; a second copy in Host must not differ.
        parts.headers.remove(header::HOST);
    } else {
        // An absolute target's authority wins over `Host` (RFC 9112 §3.2.2): the upstream
        // gets the host the request was routed by.
        if let Some(a) = parts.uri.authority() {
            let host = HeaderValue::from_str(a.as_str())
                .map_err(|_| ProxyError::BadRequest("invalid authority"))?;
            parts.headers.insert(header::HOST, host);
        }
        parts.uri = Uri::from(pq);
    }
    // The caller's verified identity, last, so nothing the caller sent can remove it.
    if let Some(id) = &conn.client_id {
        parts
            .headers
            .insert(headers::CLIENT_ID, id.header().clone());
    }
    Ok(Request::from_parts(parts, body))
}

// === impl ResponseEditsLayer ===

/// A route's response header edits.
#[derive(Debug, Clone)]
pub struct ResponseEditsLayer(Arc<HeaderEdits>);

impl ResponseEditsLayer {
    /// Applies `edits` to every response.
    pub fn new(edits: HeaderEdits) -> Self {
        Self(Arc::new(edits))
    }
}

impl<S> Layer<S> for ResponseEditsLayer {
    type Service = ResponseEdits<S>;

    fn layer(&self, inner: S) -> ResponseEdits<S> {
        ResponseEdits {
            edits: self.0.clone(),
            inner,
        }
    }
}

/// Edits the headers of the responses `S` gives (not of errors, which the rescue answers).
#[derive(Debug, Clone)]
pub struct ResponseEdits<S> {
    edits: Arc<HeaderEdits>,
    inner: S,
}

impl<S> Service<Req> for ResponseEdits<S>
where
    S: Stage,
{
    stack_service!();

    fn call(&mut self, req: Req) -> BoxFuture {
        let fut = self.inner.call(req);
        if self.edits.is_empty() {
            return fut;
        }
        let edits = self.edits.clone();
        Box::pin(async move {
            let mut resp = fut.await?;
            edits.apply(resp.headers_mut());
            Ok(resp)
        })
    }
}
