//! Sending a route's mirror copy: the same request to the shadow service, with `-shadow`
//! appended to the host, once the caller's body has been read. Runs on its own task: the
//! caller never waits for it, and its answer is read and dropped.

use std::time::Duration;

use http::{header, HeaderValue, Request};
use http_body::Body;
use http_body_util::BodyExt;

use super::{forward, ConnMeta};
use crate::{
    body::ProxyBody,
    resilience::mirror::Tee,
    routing::{host_without_port, Route},
};

/// Copies `req` to the route's shadow service, if the route mirrors and this request is drawn.
pub fn start(route: &Route, req: &mut Request<ProxyBody>, conn: &ConnMeta, timeout: Duration) {
    let (Some(target), Some(spec)) = (&route.mirror, &route.spec.mirror) else {
        return;
    };
    if !spec.hit() {
        return;
    }
    let Some(slot) = target.limiter.try_acquire() else {
        target.dropped.inc();
        return;
    };
    let body = if req.body().is_end_stream() {
        None
    } else {
        let inner = std::mem::replace(req.body_mut(), ProxyBody::empty());
        let (tee, rx) = Tee::new(inner);
        *req.body_mut() = ProxyBody::Tee(tee);
        Some(rx)
    };
    let rewritten = route
        .spec
        .rewrite
        .as_ref()
        .map(|rw| rw.apply(req.uri().path(), req.uri().query()));
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    shadow_host(&mut copy);
    let service = target.service.clone();
    let (sent, failed, dropped) = (
        target.sent.clone(),
        target.failed.clone(),
        target.dropped.clone(),
    );
    let edits = route.spec.request_headers.clone();
    let conn = conn.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let bytes = match body {
            None => bytes::Bytes::new(),
            Some(rx) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(b)) => b,
                // Larger than the copy keeps, broken off, or too slow: no mirror.
                _ => {
                    dropped.inc();
                    return;
                }
            },
        };
        let Some(endpoint) = service.pick(copy.headers()) else {
            failed.inc();
            return;
        };
        let req = copy.map(|()| ProxyBody::full(bytes));
        let Ok(mut prepared) = forward::prepare(
            req,
            &conn,
            service.spec().protocol,
            rewritten,
            Some(&endpoint),
        ) else {
            failed.inc();
            return;
        };
        edits.apply(prepared.request.headers_mut());
        match forward::send(
            endpoint.pool(),
            prepared,
            Some(&endpoint),
            None,
            timeout,
            service.metrics(),
        )
        .await
        {
            Ok(resp) => {
                let _ = tokio::time::timeout(timeout, resp.into_body().collect()).await;
                sent.inc();
            }
            Err(_) => failed.inc(),
        }
    });
}

/// `host` → `host-shadow` (port kept), in the URI authority and the `Host` header.
fn shadow_host<B>(req: &mut Request<B>) {
    let shadow = |authority: &str| {
        let host = host_without_port(authority);
        format!("{host}-shadow{}", &authority[host.len()..])
    };
    if let Some(a) = req.uri().authority().map(|a| a.as_str().to_owned()) {
        let mut parts = req.uri().clone().into_parts();
        parts.authority = shadow(&a).parse().ok();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    if let Some(h) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        if let Ok(v) = HeaderValue::from_str(&shadow(h)) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
}
