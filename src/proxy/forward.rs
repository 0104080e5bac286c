//! Sending a request upstream: builds the upstream request (URI with the caller's authority,
//! protocol version, hop-by-hop hygiene, `x-forwarded-*`), sends it through a connection pool
//! within the timeout, classifies failures, and tunnels upgraded connections.

use std::{sync::Arc, time::Duration};

use http::{
    header,
    uri::{Authority, PathAndQuery, Scheme},
    HeaderValue, Request, Response, Uri, Version,
};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::{error::ProxyError, headers, ConnMeta};
use crate::{
    body::ProxyBody,
    config::file::Protocol,
    metrics::{AttemptResult, UpstreamMetrics},
    resilience::breaker::RequestPermit,
    tls::connect::OriginateError,
    upstream::{Endpoint, Pool, PoolError},
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
/// HTTP/1.1 requests carry the origin form and `Host`; HTTP/2 ones the absolute URI (its
/// authority becomes `:authority`).
pub fn prepare(
    req: Request<ProxyBody>,
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
    let proto = if conn.tls { "https" } else { "http" };
    headers::add_forwarded(&mut parts.headers, conn.peer.ip(), proto);

    let pq = match path_and_query {
        Some(s) => PathAndQuery::try_from(s)
            .map_err(|_| ProxyError::BadRequest("rewritten path is not a valid URI"))?,
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    parts.version = match protocol {
        _ if upgrade => Version::HTTP_11,
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 => Version::HTTP_2,
        Protocol::Auto if downstream_version == Version::HTTP_2 => Version::HTTP_2,
        Protocol::Auto => Version::HTTP_11,
    };
    let authority = || -> Result<Authority, ProxyError> {
        match parts.uri.authority() {
            Some(a) => Ok(a.clone()),
            None => match parts.headers.get(header::HOST) {
                Some(h) => Authority::try_from(h.as_bytes())
                    .map_err(|_| ProxyError::BadRequest("invalid host header")),
                None => fallback_authority
                    .and_then(|ep| Authority::try_from(ep.addr().to_string()).ok())
                    .ok_or(ProxyError::NoRoute),
            },
        }
    };
    if parts.version == Version::HTTP_2 {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority()?);
        uri.path_and_query = Some(pq);
        parts.uri =
            Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
        // HTTP/2 carries the authority in `:authority`; a second copy in Host must not differ.
        parts.headers.remove(header::HOST);
    } else {
        if !parts.headers.contains_key(header::HOST) {
            let host = HeaderValue::from_str(authority()?.as_str())
                .map_err(|_| ProxyError::BadRequest("invalid authority"))?;
            parts.headers.insert(header::HOST, host);
        }
        parts.uri = Uri::from(pq);
    }
    Ok(Prepared {
        request: Request::from_parts(parts, body),
        on_upgrade,
    })
}

/// Sends `prepared` through `pool` and waits at most `timeout` for response headers.
pub async fn send(
    pool: &Pool,
    prepared: Prepared,
    endpoint: Option<&Arc<Endpoint>>,
    permit: Option<RequestPermit>,
    timeout: Duration,
    metrics: &UpstreamMetrics,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Prepared {
        request,
        on_upgrade,
    } = prepared;
    let in_flight = endpoint.map(|e| e.start());
    let result = tokio::time::timeout(timeout, pool.send(request)).await;
    let target = || pool.target().to_string();
    let (mut resp, lease) = match result {
        Err(_) => {
            metrics.attempt(AttemptResult::Timeout);
            return Err(ProxyError::Timeout(timeout));
        }
        Ok(Err(PoolError::Connect(e))) => {
            metrics.attempt(AttemptResult::ConnectFailure);
            return Err(ProxyError::Connect {
                target: target(),
                source: Box::new(e),
            });
        }
        Ok(Err(PoolError::Tls(OriginateError::Mismatch(m)))) => {
            metrics.attempt(AttemptResult::ConnectFailure);
            return Err(ProxyError::PeerIdentityMismatch {
                target: target(),
                source: Box::new(m),
            });
        }
        Ok(Err(PoolError::Tls(e))) => {
            metrics.attempt(AttemptResult::ConnectFailure);
            return Err(ProxyError::Connect {
                target: target(),
                source: Box::new(e),
            });
        }
        Ok(Err(PoolError::Overloaded(limit))) => {
            return Err(ProxyError::Overloaded(limit.as_str()));
        }
        Ok(Err(PoolError::Http(e))) => {
            metrics.attempt(AttemptResult::Reset);
            return Err(ProxyError::Reset {
                target: target(),
                source: Box::new(e),
            });
        }
        Ok(Ok(pair)) => pair,
    };
    metrics.attempt(AttemptResult::Success);

    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let Some(downstream) = on_upgrade {
            tunnel(downstream, hyper::upgrade::on(&mut resp));
        }
    }
    headers::strip_hop_by_hop(resp.headers_mut(), switching);
    Ok(resp.map(|body| ProxyBody::upstream(body, in_flight, permit, lease)))
}

/// What a forwarding result says about the endpoint, for outlier detection: `Some(false)`
/// for a 5xx or a connect failure, reset or timeout; `Some(true)` for any other response;
/// `None` when the request never reached it (a breaker, a malformed request).
pub fn endpoint_health(result: &Result<Response<ProxyBody>, ProxyError>) -> Option<bool> {
    match result {
        Ok(resp) => Some(!resp.status().is_server_error()),
        Err(ProxyError::Connect { .. } | ProxyError::Reset { .. } | ProxyError::Timeout(_)) => {
            Some(false)
        }
        Err(_) => None,
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
