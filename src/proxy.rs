//! The data path: accept loop and connection handling (`server`), the two listeners'
//! request handlers (`outbound`, `inbound`), upstream forwarding (`forward`), header hygiene
//! (`headers`), and errors with the one place they become responses (`error`).

pub mod authorize;
pub mod error;
mod forward;
pub mod headers;
pub mod inbound;
mod mirroring;
pub mod outbound;
mod retrying;
pub mod server;

use std::net::SocketAddr;

use http::{header, Method, Request, Response};
use tokio::time::Instant;

use crate::{
    body::ProxyBody,
    metrics::{Direction, RequestMetrics},
    runtime::Runtime,
    tls::accept::ClientId,
};

pub use error::{rescue, ProxyError};

/// What the handlers know about the downstream connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    /// The caller's address.
    pub peer: SocketAddr,
    /// The local address the caller connected to.
    pub local: SocketAddr,
    /// Which listener.
    pub direction: Direction,
    /// Whether the connection is TLS (terminated here).
    pub tls: bool,
    /// The caller's SPIFFE ID, verified in the mTLS handshake.
    pub client_id: Option<ClientId>,
}

impl ConnMeta {
    /// A plaintext connection from `peer` to `local`.
    pub fn plain(peer: SocketAddr, local: SocketAddr, direction: Direction) -> Self {
        Self {
            peer,
            local,
            direction,
            tls: false,
            client_id: None,
        }
    }
}

/// What one request turned into, for metrics and the access log.
#[derive(Debug, Default)]
pub struct Tags<'a> {
    /// Route name ("" when none).
    pub route: &'a str,
    /// Service name ("" when none).
    pub service: &'a str,
    /// Endpoint the request was sent to.
    pub endpoint: Option<SocketAddr>,
    /// Metric handles to record the answer with.
    pub metrics: Option<&'a RequestMetrics>,
}

/// The request line, kept only when the access log is on.
#[derive(Debug)]
pub struct AccessLine {
    method: Method,
    authority: String,
    path: String,
    request_bytes: Option<u64>,
}

impl AccessLine {
    /// Captures what the access log needs before the request is consumed.
    pub fn capture<B>(req: &Request<B>) -> Self {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("")
            .to_owned();
        Self {
            method: req.method().clone(),
            authority,
            path: req.uri().path().to_owned(),
            request_bytes: content_length(req.headers()),
        }
    }
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Turns the handler's result into the response, records metrics and writes the access log.
pub fn finish(
    conn: &ConnMeta,
    started: Instant,
    tags: Tags<'_>,
    fallback: &RequestMetrics,
    result: Result<Response<ProxyBody>, ProxyError>,
    access: Option<AccessLine>,
) -> Response<ProxyBody> {
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            if e.is_downstream() {
                tracing::debug!(direction = conn.direction.as_str(), route = tags.route, error = %e, "request refused");
            } else {
                tracing::warn!(direction = conn.direction.as_str(), route = tags.route, service = tags.service, error = %e, "request failed");
            }
            rescue(&e)
        }
    };
    let elapsed = started.elapsed();
    tags.metrics
        .unwrap_or(fallback)
        .record(resp.status(), elapsed);
    if let Some(line) = access {
        tracing::info!(
            target: "remora::access",
            direction = conn.direction.as_str(),
            client = %conn.peer.ip(),
            client_id = conn.client_id.as_ref().map(ClientId::as_str),
            method = %line.method,
            authority = %line.authority,
            path = %line.path,
            status = resp.status().as_u16(),
            route = tags.route,
            service = tags.service,
            endpoint = tags.endpoint.map(|e| e.to_string()),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            request_bytes = line.request_bytes,
            response_bytes = content_length(resp.headers()),
            error = resp.headers().get("x-remora-error").and_then(|v| v.to_str().ok()),
        );
    }
    resp
}

/// Answers a request on a listener whose section the current config no longer has (404, as
/// no route can take it).
pub fn unconfigured(
    rt: &Runtime,
    conn: &ConnMeta,
    started: Instant,
    access: Option<AccessLine>,
) -> Response<ProxyBody> {
    let fallback = rt.shared.metrics.request(conn.direction, "", "");
    finish(
        conn,
        started,
        Tags::default(),
        &fallback,
        Err(ProxyError::NoRoute),
        access,
    )
}
