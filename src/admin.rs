//! The admin listener: `/metrics` (Prometheus text format), `/live`, `/ready` (200 only when
//! the config is loaded, every listener is bound and the process is not draining),
//! `/config` (the effective config as YAML), `POST /reload` (reload the file now),
//! `GET /reload` (the last reload's outcome) and `POST /shutdown` (stop gracefully, as on
//! SIGTERM: how a Job ends a sidecar that runs as an ordinary container).
//!
//! It listens where Prometheus scrapes, so it is closed to abuse: the control endpoints
//! (`/reload`, `/config`, `/debug/route`, `/shutdown`) answer only loopback callers unless
//! `admin.remote_control` says otherwise; it speaks HTTP/1.1 only, one request per
//! connection, with a deadline for the request head from accept, and at most
//! `MAX_CONNECTIONS` at once. At the cap, the oldest connection still waiting for its request
//! head is closed to make room, so a flood of silent connections cannot keep a scrape out.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{watch, Semaphore},
};

use crate::{
    body::ProxyBody,
    explain::{explain, Probe},
    reload::{Reloader, Status, Trigger},
    runtime::Runtime,
};

/// Serves the admin endpoints until `stop` becomes true.
pub async fn serve(
    listener: TcpListener,
    rt: Arc<Runtime>,
    reloader: Option<Arc<Reloader>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .keep_alive(false);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let waiting = Arc::new(std::sync::Mutex::new(Waiting::default()));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Full: the oldest silent connection makes room (its task ends, and with it
                // its permit); with none silent, wait for an exchange to end.
                evict_oldest_silent(&waiting);
                let Ok(p) = permits.clone().acquire_owned().await else {
                    return;
                };
                p
            }
        };
        let id = {
            let mut w = lock(&waiting);
            w.next += 1;
            w.next
        };
        let (rt, reloader, builder) = (rt.clone(), reloader.clone(), builder.clone());
        let served = waiting.clone();
        let evict = Arc::new(tokio::sync::Notify::new());
        let evicted = evict.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                // A request head came: no longer silent.
                lock(&served).conns.retain(|(i, _)| *i != id);
                let (rt, reloader) = (rt.clone(), reloader.clone());
                async move { Ok::<_, Infallible>(handle(&rt, reloader.as_deref(), peer, req).await) }
            });
            // The whole exchange, not only the head, must end in time.
            let serving = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, serving) => {}
                _ = evicted.notified() => {}
            }
        });
        let mut w = lock(&waiting);
        w.conns.push_back((id, evict));
        // Connections that ended silent leave their entries behind (a `Notify` each, not
        // their tasks): drop them now and then.
        if w.conns.len() > MAX_CONNECTIONS {
            w.conns.retain(|(_, evict)| Arc::strong_count(evict) > 1);
        }
    }
}

/// Admin connections still waiting for their request head, oldest first.
#[derive(Debug, Default)]
struct Waiting {
    next: u64,
    /// Each with the `Notify` that closes it; its task holds the other clone while it runs.
    conns: std::collections::VecDeque<(u64, Arc<tokio::sync::Notify>)>,
}

/// Closes the oldest connection still waiting for its request head, if any.
fn evict_oldest_silent(waiting: &std::sync::Mutex<Waiting>) {
    let mut w = lock(waiting);
    while let Some((_, evict)) = w.conns.pop_front() {
        if Arc::strong_count(&evict) > 1 {
            tracing::debug!("admin connection limit reached; closing the oldest silent one");
            evict.notify_one();
            return;
        }
    }
}

fn lock(w: &std::sync::Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// Admin connections open at once; past it, new ones are closed at once.
pub const MAX_CONNECTIONS: usize = 256;

/// Time from accept to a complete request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a whole admin exchange may take (a reload of a large file included).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `peer` may use the control endpoints under the config in force.
fn may_control(rt: &Runtime, peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback() || rt.snapshot().admin_remote_control
}

fn forbidden(path: &str) -> Response<ProxyBody> {
    text(
        StatusCode::FORBIDDEN,
        format!("{path} answers only callers on loopback (admin.remote_control: true opens it)\n"),
    )
}

/// Answers one admin request.
pub async fn handle(
    rt: &Runtime,
    reloader: Option<&Reloader>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let path = req.uri().path();
    if matches!(
        path,
        "/reload" | "/config" | "/debug/route" | "/shutdown" | "/cache/purge"
    ) && !may_control(rt, peer)
    {
        return forbidden(path);
    }
    let dry_run = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "dry_run=true" || kv == "dry_run")
    });
    if req.method() == Method::POST && path == "/reload" && dry_run {
        return match reloader {
            Some(r) => match r.dry_run().await {
                Ok((diff, restart)) if restart.is_empty() => {
                    text(StatusCode::OK, format!("a reload would apply:\n{diff}"))
                }
                Ok((diff, restart)) => text(
                    StatusCode::CONFLICT,
                    format!(
                        "a reload would be refused: changes need a restart: {}\n{diff}",
                        restart.join(", ")
                    ),
                ),
                Err(errors) => text(StatusCode::BAD_REQUEST, format!("{errors}\n")),
            },
            None => text(
                StatusCode::CONFLICT,
                "this Remora was not started from a file\n",
            ),
        };
    }
    if req.method() == Method::POST && path == "/reload" {
        return match reloader {
            Some(r) => match r.reload(Trigger::Admin).await {
                Ok(changes) => text(StatusCode::OK, format!("reloaded: {changes}\n")),
                Err(errors) => text(StatusCode::BAD_REQUEST, format!("{errors}\n")),
            },
            None => text(
                StatusCode::CONFLICT,
                "this Remora was not started from a file\n",
            ),
        };
    }
    if req.method() == Method::POST && path == "/cache/purge" {
        return purge(rt, req.uri().query().unwrap_or(""));
    }
    if req.method() == Method::POST && path == "/shutdown" {
        rt.request_stop();
        return text(StatusCode::OK, "stopping\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET (or POST /reload, POST /cache/purge, POST /shutdown)\n",
        );
    }
    match path {
        "/metrics" => {
            // Prometheus asks for OpenMetrics (which carries exemplars) in its Accept header.
            let open = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            let (body, ctype) = if open {
                (
                    rt.shared.metrics.encode_openmetrics(),
                    crate::metrics::openmetrics::CONTENT_TYPE,
                )
            } else {
                (
                    rt.shared.metrics.encode(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            };
            let mut resp = text(StatusCode::OK, body);
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            resp
        }
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if rt.is_ready() => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/config" => {
            // Rendering a large file takes as long as compiling it: off the workers.
            let effective = rt.snapshot().effective.clone();
            let yaml = tokio::task::spawn_blocking(move || effective.render())
                .await
                .unwrap_or_default();
            let mut resp = text(StatusCode::OK, yaml);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/yaml"),
            );
            resp
        }
        "/debug/route" => debug_route(rt, req.uri().query().unwrap_or("")),
        "/shutdown" => text(StatusCode::METHOD_NOT_ALLOWED, "use POST /shutdown\n"),
        "/reload" => match reloader {
            Some(r) => reload_status(&r.status()),
            None => text(
                StatusCode::OK,
                "this Remora was not started from a file; nothing to reload\n",
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /ready, /live, /config, /reload, /debug/route, POST /shutdown\n",
        ),
    }
}

/// `GET /reload`: the last reload's outcome; 200 when it succeeded, 500 with its errors when
/// it was refused (the previous config is still in force).
fn reload_status(status: &Status) -> Response<ProxyBody> {
    let at = status
        .at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let how = status.trigger.map_or("start".to_owned(), |t| t.to_string());
    match &status.result {
        Ok(changes) => text(StatusCode::OK, format!("last reload: ok (trigger {how}, unix time {at}): {changes}\n")),
        Err(errors) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("last reload: refused (trigger {how}, unix time {at}); the previous config is in force:\n{errors}\n"),
        ),
    }
}

/// `GET /debug/route?method=GET&url=http://svc/path&header=name:value[&format=json]`:
/// `remora explain` on the live config.
/// `POST /cache/purge[?route=NAME][&prefix=/PATH]`: drops stored responses, of one route or
/// every caching route, under a path prefix or all of them.
fn purge(rt: &Runtime, query: &str) -> Response<ProxyBody> {
    let (mut route, mut prefix) = (None, String::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "route" => route = Some(percent_decode(v)),
            "prefix" => prefix = percent_decode(v),
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {k:?}; give route=NAME and/or prefix=/PATH\n"),
                )
            }
        }
    }
    let snap = rt.snapshot();
    let routes = snap
        .outbound
        .as_ref()
        .map(|ob| ob.table.routes.as_slice())
        .unwrap_or(&[]);
    let caching: Vec<_> = routes
        .iter()
        .filter(|r| route.as_deref().is_none_or(|n| *r.spec.name == *n))
        .filter_map(|r| Some((&r.spec.name, r.cache.as_ref()?)))
        .collect();
    if caching.is_empty() {
        let why = match route {
            Some(n) => format!("no route {n:?} with a cache\n"),
            None => "no route has a cache\n".to_owned(),
        };
        return text(StatusCode::NOT_FOUND, why);
    }
    let mut out = String::new();
    for (name, store) in caching {
        out.push_str(&format!("{name}: {} purged\n", store.purge(&prefix)));
    }
    text(StatusCode::OK, out)
}

fn debug_route(rt: &Runtime, query: &str) -> Response<ProxyBody> {
    let (mut method, mut url, mut headers, mut json) = ("GET".to_owned(), None, Vec::new(), false);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "method" => method = v,
            "url" => url = Some(v),
            "header" => headers.push(v),
            "format" => json = v == "json",
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {k:?}\n"),
                )
            }
        }
    }
    let Some(url) = url else {
        return text(
            StatusCode::BAD_REQUEST,
            "give url=..., e.g. /debug/route?method=GET&url=http://inventory/api\n",
        );
    };
    let probe = match Probe::new(&method, &url, headers.iter().map(String::as_str)) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let snap = rt.snapshot();
    let Some(ob) = &snap.outbound else {
        return text(StatusCode::NOT_FOUND, "no outbound section, so no routes\n");
    };
    let routes = ob.table.routes.iter().map(|r| &r.spec);
    let explanation = explain(&probe, routes, ob.table.unmatched, &snap.services);
    if json {
        let mut resp = text(
            StatusCode::OK,
            serde_json::to_string_pretty(&explanation).unwrap_or_default(),
        );
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    } else {
        text(StatusCode::OK, explanation.to_string())
    }
}

/// Decodes `%XX` escapes and `+` (space) in a query parameter value.
fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', h, l]) => hex(*h).zip(hex(*l)).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_query_values() {
        assert_eq!(
            percent_decode("http%3A%2F%2Fsvc%2Fa%3Fb%3D1"),
            "http://svc/a?b=1"
        );
        assert_eq!(percent_decode("x-canary%3A+true"), "x-canary: true");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }
}
