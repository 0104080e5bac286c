//! The outermost layer of each direction's stack: it times the request, gives it an
//! `x-request-id` (kept when the caller sent one), begins its span (reading the caller's
//! trace context and writing this hop's), turns an error from the layers below into the
//! caller's response (through `rescue`, the one place that happens), records the answer in
//! the most specific request metrics the stack tagged, ends the span and writes the access
//! log line. Outermost, so Remora's own answers are counted and traced too.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{header, HeaderName, HeaderValue, Method, Version};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::rescue;
use crate::{
    body::Meter,
    context::{BoxFuture, Ctx, Req, Resp, Stage},
    headers,
    metrics::{Direction, Flow, RequestMetrics},
    tls::accept::ClientId,
    trace::{AddrText, Attributes, Record, SpanKind, Started, Tracer},
};

/// `grpc-status`.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the outermost layer does besides answering: the access log and the spans.
#[derive(Debug, Clone)]
pub struct Observing {
    /// Whether to write an access log line per request.
    pub access_log: bool,
    /// The process's tracer.
    pub tracer: Arc<Tracer>,
}

/// What the outermost layer records with.
#[derive(Debug, Clone)]
pub struct ObserveLayer(Arc<Settings>);

#[derive(Debug)]
struct Settings {
    /// Metrics for a request the stack tagged with none (no route took it).
    fallback: RequestMetrics,
    /// The service label of the access log when the stack names none.
    service: Option<Arc<str>>,
    observing: Observing,
}

impl ObserveLayer {
    /// Records untagged requests in `fallback`, logs `service` for them, and writes the
    /// access log and spans as `observing` says.
    pub fn new(fallback: RequestMetrics, service: Option<Arc<str>>, observing: Observing) -> Self {
        Self(Arc::new(Settings {
            fallback,
            service,
            observing,
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

impl<S> Observe<S> {
    /// The service this one wraps.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
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

    fn call(&mut self, mut req: Req) -> Self::Future {
        let started = Instant::now();
        let observing = &self.settings.observing;
        let mut span = observing.tracer.start(req.headers_mut());
        let request_id = request_id(req.headers_mut(), observing.access_log);
        let ctx = req.ctx.clone();
        let mut method = None;
        if let Some(record) = span.as_mut().and_then(Started::record) {
            ctx.record_attempts();
            request_attributes(&mut record.attributes(), &req);
            method = Some(req.method().clone());
        }
        let line = request_id.map(|id| RequestLine::capture(&req, id));
        Observed {
            inner: self.inner.call(req),
            done: Some(Done {
                settings: self.settings.clone(),
                ctx,
                started,
                line,
                span,
                method,
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
    line: Option<RequestLine>,
    span: Option<Started>,
    /// The request's method, for a sampled span's name.
    method: Option<Method>,
}

impl Future for Observed {
    type Output = Result<Resp, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(self.inner.as_mut().poll(cx));
        let d = self.done.take().expect("polled after completion");
        Poll::Ready(Ok(finish(d, result)))
    }
}

/// Keeps the caller's `x-request-id` or sets a new one (a random UUID); returns it when
/// `wanted` (a clone costs an allocation, so only for the access log).
fn request_id(h: &mut http::HeaderMap, wanted: bool) -> Option<HeaderValue> {
    let id = match h.entry(REQUEST_ID) {
        http::header::Entry::Occupied(e) if !e.get().is_empty() => e.into_mut(),
        http::header::Entry::Occupied(mut e) => {
            e.insert(new_request_id());
            e.into_mut()
        }
        http::header::Entry::Vacant(e) => e.insert(new_request_id()),
    };
    wanted.then(|| id.clone())
}

/// A version 4 UUID, as Envoy's and most frameworks' request IDs are.
fn new_request_id() -> HeaderValue {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // the RFC 4122 variant
    let mut out = [b'-'; 36];
    let mut n = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            n += 1;
        }
        out[n] = DIGITS[usize::from(b >> 4)];
        out[n + 1] = DIGITS[usize::from(b & 15)];
        n += 2;
    }
    HeaderValue::from_bytes(&out).expect("hex and dashes are a valid header value")
}

/// What the access log says about the request, captured before the stack consumes it; only
/// when the log is written.
#[derive(Debug)]
struct RequestLine {
    method: Method,
    authority: String,
    path: String,
    version: Version,
    user_agent: Option<String>,
    request_id: HeaderValue,
}

impl RequestLine {
    fn capture(req: &Req, request_id: HeaderValue) -> Self {
        let authority = headers::authority(req.uri(), req.headers())
            .unwrap_or("")
            .to_owned();
        Self {
            method: req.method().clone(),
            authority,
            path: req.uri().path().to_owned(),
            version: req.version(),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            request_id,
        }
    }
}

/// `network.protocol.version` of OpenTelemetry's conventions.
fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Turns the stack's result into the response, records metrics, ends the span and writes
/// the access log.
fn finish(d: Done, result: crate::context::Result) -> Resp {
    let Done {
        settings,
        ctx,
        started,
        line,
        span,
        method,
    } = d;
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
    let mut reason = None;
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            metrics.error(e.reason());
            if e.is_downstream() {
                tracing::debug!(direction = conn.direction.as_str(), route, error = %e, "request refused");
            } else {
                tracing::warn!(direction = conn.direction.as_str(), route, service, error = %e, "request failed");
            }
            reason = Some(e.reason());
            rescue(&e)
        }
    };
    let elapsed = started.elapsed();
    metrics.record(resp.status(), elapsed);
    let attempts = tags.endpoint.map_or(0, |_| tags.tried.len() + 1);
    let trace_id = line.as_ref().and(span.as_ref()).map(|s| s.trace_id.hex());
    if let Some(mut span) = span.filter(Started::sampled) {
        let kind = match conn.direction {
            Direction::Inbound => SpanKind::Server,
            Direction::Outbound => SpanKind::Client,
        };
        let status = resp.status();
        if let Some(record) = span.record() {
            let mut a = record.attributes();
            a.int("http.response.status_code", status.as_u16().into());
            if !route.is_empty() {
                a.str("remora.route", route);
            }
            if !service.is_empty() {
                a.str("remora.service", service);
            }
            answer_attributes(&mut a, &tags, attempts, reason);
            attempt_events(record, &tags, started.into_std());
            let end = record.start_unix_nanos() + elapsed.as_nanos() as u64;
            metrics.exemplar(elapsed, span.trace_id.0, end);
        }
        // OpenTelemetry's conventions: 5xx fails a server span, 4xx and 5xx a client's.
        let failed =
            status.is_server_error() || (kind == SpanKind::Client && status.is_client_error());
        let error = reason.or_else(|| failed.then(|| status.as_str()));
        let method = method.as_ref().map_or("", Method::as_str);
        let name: &[&str] = if route.is_empty() {
            &[method]
        } else {
            &[method, " ", route]
        };
        span.end(name, kind, error, elapsed);
    }
    // The access log line is written when the response body is done with: it can then say
    // how many bytes went each way and how long the whole exchange took.
    let record = settings
        .observing
        .access_log
        .then_some(line)
        .flatten()
        .map(|line| AccessRecord {
            direction: conn.direction.as_str(),
            client: conn.peer.ip(),
            client_id: conn.client_id.clone(),
            line,
            status: resp.status().as_u16(),
            route: tags.route.clone(),
            cache: tags.cache,
            service: tags.service.clone().or_else(|| settings.service.clone()),
            endpoint: tags.endpoint,
            attempts,
            headers_ms: millis(elapsed),
            upstream_response_ms: tags.upstream_response.map(millis),
            upstream_connect_ms: tags.upstream_connect.map(millis),
            started,
            trace_id,
            error: reason,
            ctx: ctx.clone(),
        });
    let hook = record.map(|r| Box::new(move |sent| r.write(sent)) as Box<dyn FnOnce(u64) + Send>);
    let mut meter = Meter::new(metrics.bytes(Flow::Response), hook);
    // gRPC's status is in the trailers, or in the headers of a trailers-only answer.
    if headers::is_grpc(resp.headers()) {
        match resp.headers().get(GRPC_STATUS) {
            Some(v) => metrics.grpc(Some(v.as_bytes())),
            None => {
                let metrics = metrics.clone();
                meter = meter.with_trailers(Box::new(move |t| {
                    metrics.grpc(t.and_then(|t| t.get(GRPC_STATUS)).map(|v| v.as_bytes()))
                }));
            }
        }
    }
    drop(tags);
    resp.map(|b| b.metered(meter))
}

/// `ip:port`, as the standard formatter writes it (and faster, for IPv4).
fn addr_string(addr: std::net::SocketAddr) -> String {
    AddrText::new(addr).as_str().to_owned()
}

/// Milliseconds to the microsecond, as a number a log reader rounds well (a float's full
/// expansion, `0.07875700000000001`, is noise).
fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// One access log line, waiting for the response body to end.
struct AccessRecord {
    direction: &'static str,
    client: std::net::IpAddr,
    client_id: Option<ClientId>,
    line: RequestLine,
    status: u16,
    route: Option<Arc<str>>,
    cache: Option<&'static str>,
    service: Option<Arc<str>>,
    endpoint: Option<std::net::SocketAddr>,
    attempts: usize,
    headers_ms: f64,
    upstream_response_ms: Option<f64>,
    upstream_connect_ms: Option<f64>,
    started: Instant,
    trace_id: Option<String>,
    error: Option<&'static str>,
    ctx: Ctx,
}

impl AccessRecord {
    /// Writes the line, `sent` response body bytes having gone to the caller.
    fn write(self, sent: u64) {
        let line = &self.line;
        tracing::info!(
            target: "remora::access",
            direction = self.direction,
            client = %self.client,
            client_id = self.client_id.as_ref().map(ClientId::as_str),
            protocol = protocol_version(line.version),
            method = %line.method,
            authority = %line.authority,
            path = %line.path,
            user_agent = line.user_agent,
            status = self.status,
            route = self.route.as_deref().unwrap_or(""),
            cache = self.cache,
            service = self.service.as_deref().unwrap_or(""),
            endpoint = self.endpoint.map(addr_string),
            attempts = self.attempts,
            duration_ms = millis(self.started.elapsed()),
            response_headers_ms = self.headers_ms,
            upstream_response_ms = self.upstream_response_ms,
            upstream_connect_ms = self.upstream_connect_ms,
            request_bytes = self.ctx.received(),
            response_bytes = sent,
            request_id = line.request_id.to_str().ok(),
            trace_id = self.trace_id,
            error = self.error,
        );
    }
}

/// An `attempt` event per try of a retried request, at the time it began: its endpoint,
/// duration, and the status it got or the reason it failed. A request tried once has none:
/// the span itself says all of it (`remora.endpoint`, the status or `remora.error`).
fn attempt_events(record: &mut Record, tags: &crate::context::Tags, started: std::time::Instant) {
    let start = record.start_unix_nanos();
    let Some(attempts) = tags.attempts.as_ref().filter(|a| a.len() > 1) else {
        return;
    };
    for (i, a) in attempts.iter().enumerate() {
        let at = start + a.began.saturating_duration_since(started).as_nanos() as u64;
        record.event(at, "attempt", |e| {
            e.int("remora.attempt", i as i64 + 1);
            e.addr("remora.endpoint", a.endpoint);
            e.double("remora.duration_ms", millis(a.elapsed));
            match a.outcome {
                Ok(status) => e.int("http.response.status_code", status.into()),
                Err(reason) => e.str("remora.error", reason),
            }
        });
    }
}

/// The span's attributes known from the request, by OpenTelemetry's HTTP conventions, and
/// Remora's own; written before the stack consumes the request.
fn request_attributes(a: &mut Attributes<'_>, req: &Req) {
    let conn = req.ctx.conn();
    a.str("http.request.method", req.method().as_str());
    a.str("url.path", req.uri().path());
    a.str("network.protocol.version", protocol_version(req.version()));
    // The three headers wanted, in one pass over the names (cheaper than three lookups).
    let (mut host, mut user_agent, mut request_id) = (None, None, None);
    for (name, value) in req.headers() {
        let slot = if name == header::HOST {
            &mut host
        } else if name == header::USER_AGENT {
            &mut user_agent
        } else if name == REQUEST_ID {
            &mut request_id
        } else {
            continue;
        };
        if slot.is_none() {
            *slot = value.to_str().ok();
        }
    }
    if let Some(authority) = req.uri().authority().map(|a| a.as_str()).or(host) {
        let host = headers::host_without_port(authority);
        a.str("server.address", host.trim_matches(['[', ']']));
    }
    // A server span's caller (a client span's is the local app): formatted once per
    // connection, for x-forwarded-for.
    if conn.direction == Direction::Inbound {
        a.str("client.address", conn.forwarded_for.to_str().unwrap_or(""));
    }
    if let Some(id) = request_id {
        a.str("remora.request_id", id);
    }
    if let Some(ua) = user_agent {
        a.str("user_agent.original", ua);
    }
    if let Some(id) = &conn.client_id {
        a.str("remora.peer_identity", id.as_str());
    }
}

/// The span's attributes known once the answer is: where it went, how many tries, and why
/// it failed.
fn answer_attributes(
    a: &mut Attributes<'_>,
    tags: &crate::context::Tags,
    attempts: usize,
    reason: Option<&str>,
) {
    if let Some(endpoint) = tags.endpoint {
        a.addr("remora.endpoint", endpoint);
        // Tries are counted, and listed, only when there was more than one.
        if !tags.tried.is_empty() {
            a.int("remora.attempts", attempts as i64);
            let mut tried = String::new();
            for (i, t) in tags.tried.iter().enumerate() {
                if i > 0 {
                    tried.push(',');
                }
                tried.push_str(AddrText::new(*t).as_str());
            }
            a.str("remora.endpoints_tried", &tried);
        }
    }
    if let Some(reason) = reason {
        a.str("remora.error", reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let ids: Vec<String> = (0..50)
            .map(|_| new_request_id().to_str().unwrap().to_owned())
            .collect();
        for id in &ids {
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(groups[2].starts_with('4'), "version 4: {id}");
            assert!(
                matches!(&groups[3][..1], "8" | "9" | "a" | "b"),
                "variant: {id}"
            );
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn a_callers_request_id_is_kept() {
        let mut h = http::HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc"));
        assert_eq!(request_id(&mut h, true).unwrap(), "abc");
        let mut h = http::HeaderMap::new();
        let id = request_id(&mut h, true).unwrap();
        assert_eq!(h[REQUEST_ID], id);
        assert_eq!(id.len(), 36);
        // An empty one is replaced; nothing is returned unless wanted.
        let mut h = http::HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static(""));
        assert_eq!(request_id(&mut h, false), None);
        assert_eq!(h[REQUEST_ID].len(), 36);
    }
}
