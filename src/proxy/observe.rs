//! The outermost layer of each direction's stack: it times the request, turns an error from
//! the layers below into the caller's response (through `rescue`, the one place that
//! happens), records the answer in the most specific request metrics the stack tagged, and
//! writes the access log line. Outermost, so Remora's own answers are counted too.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{header, Method};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::rescue;
use crate::{
    context::{BoxFuture, Ctx, Req, Resp, Stage},
    headers,
    metrics::RequestMetrics,
    tls::accept::ClientId,
};

/// What the outermost layer records with.
#[derive(Debug, Clone)]
pub struct ObserveLayer(Arc<Settings>);

#[derive(Debug)]
struct Settings {
    /// Metrics for a request the stack tagged with none (no route took it).
    fallback: RequestMetrics,
    /// The service label of the access log when the stack names none.
    service: Option<Arc<str>>,
    access_log: bool,
}

impl ObserveLayer {
    /// Records untagged requests in `fallback`, logs `service` for them, and writes an
    /// access log line per request when `access_log` is on.
    pub fn new(fallback: RequestMetrics, service: Option<Arc<str>>, access_log: bool) -> Self {
        Self(Arc::new(Settings {
            fallback,
            service,
            access_log,
        }))
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            settings: self.0.clone(),
            inner,
        }
    }
}

/// Answers every request: with `S`'s response, or with the rescue of its error.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    settings: Arc<Settings>,
    inner: S,
}

impl<S> Service<Req> for Observe<S>
where
    S: Stage,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = Observed;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let started = Instant::now();
        let ctx = req.ctx.clone();
        let access = self.settings.access_log.then(|| AccessLine::capture(&req));
        Observed {
            inner: self.inner.call(req),
            done: Some(Done {
                settings: self.settings.clone(),
                ctx,
                started,
                access,
            }),
        }
    }
}

/// The caller's answer on its way: the stack's future, then the recording. A named future
/// rather than a boxed one, as it is the stack's outermost (one allocation less per request).
pub struct Observed {
    inner: BoxFuture,
    done: Option<Done>,
}

struct Done {
    settings: Arc<Settings>,
    ctx: Ctx,
    started: Instant,
    access: Option<AccessLine>,
}

impl Future for Observed {
    type Output = Result<Resp, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(self.inner.as_mut().poll(cx));
        let d = self.done.take().expect("polled after completion");
        Poll::Ready(Ok(finish(&d.settings, &d.ctx, d.started, result, d.access)))
    }
}

/// The request line, kept only when the access log is on.
#[derive(Debug)]
struct AccessLine {
    method: Method,
    authority: String,
    path: String,
    request_bytes: Option<u64>,
}

impl AccessLine {
    /// Captures what the access log needs before the request is consumed.
    fn capture(req: &Req) -> Self {
        let authority = headers::authority(req.uri(), req.headers())
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

/// Turns the stack's result into the response, records metrics and writes the access log.
fn finish(
    settings: &Settings,
    ctx: &Ctx,
    started: Instant,
    result: crate::context::Result,
    access: Option<AccessLine>,
) -> Resp {
    let conn = ctx.conn();
    // The breaker's place, if the request took one, goes with the body (or ends here).
    let result = result.map(|r| ctx.answer(r));
    let tags = ctx.tags();
    let route = tags.route.as_deref().unwrap_or("");
    let service = tags
        .service
        .as_deref()
        .or(settings.service.as_deref())
        .unwrap_or("");
    let metrics = tags.metrics.as_ref().unwrap_or(&settings.fallback);
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            metrics.error(e.reason());
            if e.is_downstream() {
                tracing::debug!(direction = conn.direction.as_str(), route, error = %e, "request refused");
            } else {
                tracing::warn!(direction = conn.direction.as_str(), route, service, error = %e, "request failed");
            }
            rescue(&e)
        }
    };
    let elapsed = started.elapsed();
    metrics.record(resp.status(), elapsed);
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
            route,
            service,
            endpoint = tags.endpoint.map(|e| e.to_string()),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            request_bytes = line.request_bytes,
            response_bytes = content_length(resp.headers()),
            error = resp.headers().get("x-remora-error").and_then(|v| v.to_str().ok()),
        );
    }
    resp
}
