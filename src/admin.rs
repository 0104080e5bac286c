//! The admin listener: `/metrics` (Prometheus text format), `/live`, `/ready` (200 only when
//! the config is loaded, every listener is bound and the process is not draining),
//! `/config` (the effective config as YAML), `POST /reload` (reload the file now) and
//! `GET /reload` (the last reload's outcome).

use std::{convert::Infallible, sync::Arc};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    body::ProxyBody,
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
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let (rt, reloader, builder) = (rt.clone(), reloader.clone(), builder.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (rt, reloader) = (rt.clone(), reloader.clone());
                async move { Ok::<_, Infallible>(handle(&rt, reloader.as_deref(), req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// Answers one admin request.
pub async fn handle(
    rt: &Runtime,
    reloader: Option<&Reloader>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let path = req.uri().path();
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
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET (or POST /reload)\n",
        );
    }
    match path {
        "/metrics" => {
            let mut resp = text(StatusCode::OK, rt.metrics.encode());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if rt.is_ready() => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/config" => match serde_yaml::to_string(&rt.snapshot().file) {
            Ok(yaml) => {
                let mut resp = text(StatusCode::OK, yaml);
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/yaml"),
                );
                resp
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot render config: {e}\n"),
            ),
        },
        "/reload" => match reloader {
            Some(r) => reload_status(&r.status()),
            None => text(
                StatusCode::OK,
                "this Remora was not started from a file; nothing to reload\n",
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /ready, /live, /config, /reload\n",
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

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
