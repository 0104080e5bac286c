//! Sending a request upstream: builds the upstream request (URI with the caller's authority,
//! protocol version, hop-by-hop hygiene, `x-forwarded-*`), sends it on a pooled connection
//! within the timeout, classifies failures, and tunnels upgraded connections.

use std::{sync::Arc, time::Duration};

use http::{
    header,
    uri::{Authority, PathAndQuery, Scheme},
    Request, Response, Uri, Version,
};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::rt::TokioIo;

use super::{error::ProxyError, headers, ConnMeta};
use crate::{
    body::ProxyBody,
    config::file::Protocol,
    metrics::{AttemptResult, UpstreamMetrics},
    upstream::{Endpoint, HttpClient},
};

/// A request made ready for its upstream, with the caller's side of a pending upgrade.
pub struct Prepared {
    /// The upstream request.
    pub request: Request<ProxyBody>,
    /// The caller's connection, once the upstream agrees to upgrade.
    pub on_upgrade: Option<OnUpgrade>,
}

/// Turns the caller's request into the upstream request: `path_and_query` replaces the
/// original when a route rewrote it; `fallback_authority` is used when the caller sent none.
pub fn prepare(
    req: Request<Incoming>,
    conn: &ConnMeta,
    protocol: Protocol,
    path_and_query: Option<String>,
    fallback_authority: Option<&Endpoint>,
) -> Result<Prepared, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let upgrade = headers::is_upgrade(parts.version, &parts.method, &parts.headers);
    let on_upgrade = if upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    let downstream_version = parts.version;
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::add_forwarded(&mut parts.headers, conn.peer.ip(), "http");

    let authority = match parts.uri.authority() {
        Some(a) => a.clone(),
        None => match parts.headers.get(header::HOST) {
            Some(h) => Authority::try_from(h.as_bytes())
                .map_err(|_| ProxyError::BadRequest("invalid host header"))?,
            None => match fallback_authority {
                Some(ep) => {
                    Authority::try_from(ep.addr().to_string()).map_err(|_| ProxyError::NoRoute)?
                }
                None => return Err(ProxyError::NoRoute),
            },
        },
    };
    let pq = match path_and_query {
        Some(s) => PathAndQuery::try_from(s)
            .map_err(|_| ProxyError::BadRequest("rewritten path is not a valid URI"))?,
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    uri.path_and_query = Some(pq);
    parts.uri =
        Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("invalid request target"))?;

    parts.version = match protocol {
        _ if upgrade => Version::HTTP_11,
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 => Version::HTTP_2,
        Protocol::Auto if downstream_version == Version::HTTP_2 => Version::HTTP_2,
        Protocol::Auto => Version::HTTP_11,
    };
    if parts.version == Version::HTTP_2 {
        // HTTP/2 carries the authority in `:authority`; a second copy in Host must not differ.
        parts.headers.remove(header::HOST);
    }
    Ok(Prepared {
        request: Request::from_parts(parts, ProxyBody::stream(body)),
        on_upgrade,
    })
}

/// Sends `prepared` on `client` and waits at most `timeout` for response headers.
pub async fn send(
    client: &HttpClient,
    prepared: Prepared,
    endpoint: Option<&Arc<Endpoint>>,
    target: &(dyn std::fmt::Display + Sync),
    timeout: Duration,
    metrics: &UpstreamMetrics,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Prepared {
        request,
        on_upgrade,
    } = prepared;
    let in_flight = endpoint.map(|e| e.start());
    let result = tokio::time::timeout(timeout, client.request(request)).await;
    let mut resp = match result {
        Err(_) => {
            metrics.attempt(AttemptResult::Timeout);
            return Err(ProxyError::Timeout(timeout));
        }
        Ok(Err(e)) if e.is_connect() => {
            metrics.attempt(AttemptResult::ConnectFailure);
            return Err(ProxyError::Connect {
                target: target.to_string(),
                source: cause(e),
            });
        }
        Ok(Err(e)) => {
            metrics.attempt(AttemptResult::Reset);
            return Err(ProxyError::Reset {
                target: target.to_string(),
                source: cause(e),
            });
        }
        Ok(Ok(resp)) => resp,
    };
    metrics.attempt(AttemptResult::Success);

    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let Some(downstream) = on_upgrade {
            tunnel(downstream, hyper::upgrade::on(&mut resp));
        }
    }
    headers::strip_hop_by_hop(resp.headers_mut(), switching);
    Ok(resp.map(|body| ProxyBody::Stream { body, in_flight }))
}

/// The error's own cause (hyper-util wraps it): the connect error or the hyper error.
fn cause(e: hyper_util::client::legacy::Error) -> super::error::BoxError {
    use std::error::Error;
    match e.source() {
        Some(s) => s.to_string().into(),
        None => Box::new(e),
    }
}

/// Copies bytes both ways between an upgraded caller and upstream until either side closes.
fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}
