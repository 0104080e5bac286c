//! Which route a request takes, and why: the routes passed over with the condition each
//! failed, the backend split, the policies, and the endpoints. Used by `remora explain` (on a
//! file), the admin listener's `/debug/route` (on the live config) and `remora test`.

use std::{collections::BTreeMap, fmt, net::SocketAddr, sync::Arc};

use http::{header::HeaderName, HeaderMap, HeaderValue, Method, Uri};
use serde::Serialize;

use crate::{
    config::{duration::HumanDuration, size::ByteSize},
    routing::{
        host_without_port,
        matcher::{HostMatch, PathMatch, ValueMatch},
        ActionSpec, Mismatch, RequestView, RouteMatch, RouteSpec, Unmatched,
    },
    tls::SpiffeId,
    upstream::{Discovery, Service, ServiceSpec},
};

/// A request to explain.
#[derive(Debug, Clone)]
pub struct Probe {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Probe {
    /// `METHOD URL` with `name: value` headers. The URL is absolute (`http://host/path`) or a
    /// path with a `Host` header.
    pub fn new<'a>(
        method: &str,
        url: &str,
        headers: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, String> {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("invalid method {method:?}"))?;
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let mut map = HeaderMap::new();
        for h in headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("invalid header {h:?}: expected 'name: value'"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("invalid header name in {h:?}"))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| format!("invalid header value in {h:?}"))?;
            map.append(name, value);
        }
        if uri.authority().is_none() && !map.contains_key(http::header::HOST) {
            return Err(format!(
                "{url:?} names no host: give an absolute URL or -H 'host: NAME'"
            ));
        }
        Ok(Self {
            method,
            uri,
            headers: map,
        })
    }

    fn authority(&self) -> Option<&str> {
        crate::headers::authority(&self.uri, &self.headers)
    }

    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            host: self.authority().map(host_without_port),
            path: self.uri.path(),
            query: self.uri.query(),
            headers: &self.headers,
        }
    }
}

/// What the explanation needs to know of services.
pub trait ServiceInfo {
    /// The service's definition.
    fn spec(&self, name: &str) -> Option<&ServiceSpec>;
    /// Its current endpoints; `None` when only a live proxy knows them (DNS on a file).
    fn endpoints(&self, name: &str) -> Option<Vec<SocketAddr>>;
}

impl ServiceInfo for BTreeMap<String, ServiceSpec> {
    fn spec(&self, name: &str) -> Option<&ServiceSpec> {
        self.get(name)
    }
    fn endpoints(&self, name: &str) -> Option<Vec<SocketAddr>> {
        match &self.get(name)?.discovery {
            Discovery::Static(addrs) => Some(addrs.clone()),
            Discovery::Dns { .. } => None,
        }
    }
}

impl ServiceInfo for BTreeMap<String, Arc<Service>> {
    fn spec(&self, name: &str) -> Option<&ServiceSpec> {
        self.get(name).map(|s| s.spec())
    }
    fn endpoints(&self, name: &str) -> Option<Vec<SocketAddr>> {
        Some(self.get(name)?.endpoint_addrs())
    }
}

/// The answer.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// Request method.
    pub method: String,
    /// Host the routes saw (without port).
    pub host: Option<String>,
    /// Path and query.
    pub path: String,
    /// Routes tried before the match, with why each did not match.
    pub skipped: Vec<Skipped>,
    /// What happens to the request.
    pub outcome: Outcome,
}

/// A route passed over.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// Route name.
    pub route: String,
    /// The first condition that failed.
    pub reason: String,
}

/// What happens to a request.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// A route took it.
    Route(Box<Matched>),
    /// No route: forwarded to its own authority.
    Passthrough {
        /// Where it goes.
        authority: String,
    },
    /// No route: answered 404 `no-route`.
    Rejected,
}

/// The matching route and what it does.
#[derive(Debug, Clone, Serialize)]
pub struct Matched {
    /// Route name.
    pub route: String,
    /// The route's action.
    pub action: Action,
    /// Time the upstream has for response headers.
    pub timeout: HumanDuration,
    /// The path and query sent upstream, when a rewrite changes it.
    pub rewritten_path: Option<String>,
    /// Request header edits.
    pub request_headers: Vec<HeaderEdit>,
    /// Response header edits.
    pub response_headers: Vec<HeaderEdit>,
    /// Local rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Injected faults.
    pub fault: Option<Fault>,
    /// Retry policy.
    pub retry: Option<Retry>,
    /// Mirroring.
    pub mirror: Option<Mirror>,
    /// Response caching.
    pub cache: Option<CachePolicy>,
}

/// A route's response cache.
#[derive(Debug, Clone, Serialize)]
pub struct CachePolicy {
    /// Most bytes held.
    pub max_size: ByteSize,
    /// Largest body stored.
    pub max_object_size: ByteSize,
}

impl fmt::Display for CachePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at most {}, bodies up to {}",
            self.max_size, self.max_object_size
        )
    }
}

/// One header edit.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderEdit {
    /// `set`, `add` or `remove`.
    pub op: &'static str,
    /// Header name.
    pub name: String,
    /// The value set or added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl fmt::Display for HeaderEdit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{} {}: {v}", self.op, self.name),
            None => write!(f, "{} {}", self.op, self.name),
        }
    }
}

/// A local rate limit.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimit {
    /// Requests per second on average.
    pub requests_per_second: u32,
    /// Requests at once.
    pub burst: u32,
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s, burst {}", self.requests_per_second, self.burst)
    }
}

/// Injected faults.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// Requests delayed.
    pub delay: Option<FaultDelay>,
    /// Requests answered with an error.
    pub abort: Option<FaultAbort>,
}

/// Delayed requests.
#[derive(Debug, Clone, Serialize)]
pub struct FaultDelay {
    /// Share of requests, in percent.
    pub percent: f64,
    /// How long.
    pub duration: HumanDuration,
}

/// Aborted requests.
#[derive(Debug, Clone, Serialize)]
pub struct FaultAbort {
    /// Share of requests, in percent.
    pub percent: f64,
    /// The status they get.
    pub status: u16,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.delay {
            write!(f, "delay {}% by {}", d.percent, d.duration)?;
        }
        if let Some(a) = &self.abort {
            if self.delay.is_some() {
                f.write_str("; ")?;
            }
            write!(f, "abort {}% with {}", a.percent, a.status)?;
        }
        Ok(())
    }
}

/// A retry policy.
#[derive(Debug, Clone, Serialize)]
pub struct Retry {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Time each try has, when limited.
    pub per_try_timeout: Option<HumanDuration>,
    /// What is retried: `5xx`, `gateway-error`, `connect-failure`, `reset`, statuses, and
    /// gRPC codes as `grpc NAME`.
    pub on: Vec<String>,
    /// First backoff.
    pub backoff_base: HumanDuration,
    /// Longest backoff.
    pub backoff_max: HumanDuration,
    /// Whether POST and PATCH are retried too.
    pub non_idempotent: bool,
}

impl fmt::Display for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} attempts", self.attempts)?;
        if let Some(t) = self.per_try_timeout {
            write!(f, " of at most {t}")?;
        }
        write!(
            f,
            ", on {}, backoff {}..{}",
            self.on.join(", "),
            self.backoff_base,
            self.backoff_max
        )?;
        if self.non_idempotent {
            f.write_str(", POST and PATCH too")?;
        }
        Ok(())
    }
}

/// Mirroring.
#[derive(Debug, Clone, Serialize)]
pub struct Mirror {
    /// Share of requests copied, in percent.
    pub percent: f64,
    /// The service that gets the copies.
    pub service: String,
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}% to {}", self.percent, self.service)
    }
}

/// A route's action.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Forward to one of these, by weight.
    Forward {
        /// Backends with their share of traffic.
        backends: Vec<Backend>,
    },
    /// Answer with a redirect.
    Redirect {
        /// Status.
        status: u16,
        /// `location`.
        location: String,
    },
    /// Answer directly.
    DirectResponse {
        /// Status.
        status: u16,
        /// Body length.
        body_bytes: usize,
    },
}

/// One backend of a forwarding route.
#[derive(Debug, Clone, Serialize)]
pub struct Backend {
    /// Service name.
    pub service: String,
    /// Configured weight.
    pub weight: u32,
    /// Share of the route's traffic, in percent.
    pub share_percent: f64,
    /// Upstream protocol (`None`: the service is not defined).
    pub protocol: Option<String>,
    /// Load balancer.
    pub load_balancer: Option<LoadBalancer>,
    /// Connect timeout.
    pub connect_timeout: Option<HumanDuration>,
    /// Where endpoints come from.
    pub discovery: Option<DiscoveryInfo>,
    /// Circuit breaker limits.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Outlier detection, when on.
    pub outlier_detection: Option<Outlier>,
    /// Health checks, when on.
    pub health_check: Option<HealthCheck>,
    /// The SPIFFE ID required of the endpoints, when the service is called over mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls_peer_identity: Option<SpiffeId>,
    /// Current endpoints (`None`: resolved only at run time).
    pub endpoints: Option<Vec<String>>,
}

/// A load balancer.
#[derive(Debug, Clone, Serialize)]
pub struct LoadBalancer {
    /// `least_request`, `round_robin`, `random` or `ring_hash`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request header a ring hash keys on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

impl fmt::Display for LoadBalancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind)?;
        match &self.header {
            Some(h) => write!(f, " on {h}"),
            None => Ok(()),
        }
    }
}

/// Where a service's endpoints come from.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DiscoveryInfo {
    /// Listed in the file.
    Static,
    /// Resolved from DNS.
    Dns {
        /// Name resolved.
        host: String,
        /// Port called.
        port: u16,
        /// How often.
        refresh: HumanDuration,
    },
}

impl fmt::Display for DiscoveryInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static => f.write_str("static"),
            Self::Dns {
                host,
                port,
                refresh,
            } => write!(f, "dns {host}:{port} every {refresh}"),
        }
    }
}

/// Circuit breaker limits.
#[derive(Debug, Clone, Serialize)]
pub struct CircuitBreaker {
    /// Requests in flight.
    pub max_requests: usize,
    /// Upstream connections.
    pub max_connections: usize,
    /// Requests waiting for a connection.
    pub max_pending_requests: usize,
}

impl fmt::Display for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at most {} requests, {} connections, {} pending",
            self.max_requests, self.max_connections, self.max_pending_requests
        )
    }
}

/// Outlier detection.
#[derive(Debug, Clone, Serialize)]
pub struct Outlier {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// Ejection time, multiplied by the times the endpoint was ejected.
    pub base_ejection: HumanDuration,
    /// Most endpoints out at once, in percent.
    pub max_ejected_percent: u32,
}

impl fmt::Display for Outlier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "eject after {} failures in a row for {} x times ejected, at most {}% at once",
            self.consecutive_failures, self.base_ejection, self.max_ejected_percent
        )
    }
}

/// Active health checks.
#[derive(Debug, Clone, Serialize)]
pub struct HealthCheck {
    /// Path asked with GET.
    pub path: String,
    /// How often.
    pub interval: HumanDuration,
    /// Failures in a row that take an endpoint out.
    pub unhealthy_after: u32,
    /// Passes in a row that bring it back.
    pub healthy_after: u32,
}

impl fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GET {} every {}, out after {} failures, back after {} passes",
            self.path, self.interval, self.unhealthy_after, self.healthy_after
        )
    }
}

/// Explains `probe` against `routes` (in order).
pub fn explain<'a>(
    probe: &Probe,
    routes: impl IntoIterator<Item = &'a RouteSpec>,
    unmatched: Unmatched,
    services: &dyn ServiceInfo,
) -> Explanation {
    let view = probe.view();
    let mut skipped = Vec::new();
    let mut outcome = None;
    for spec in routes {
        match spec.matcher.check(&view) {
            Err(reason) => skipped.push(Skipped {
                route: spec.name.to_string(),
                reason: describe(reason, &spec.matcher, &view),
            }),
            Ok(()) => {
                outcome = Some(Outcome::Route(Box::new(matched(spec, &view, services))));
                break;
            }
        }
    }
    let outcome = outcome.unwrap_or(match (unmatched, probe.authority()) {
        (Unmatched::Passthrough, Some(a)) => Outcome::Passthrough {
            authority: a.to_owned(),
        },
        _ => Outcome::Rejected,
    });
    Explanation {
        method: probe.method.to_string(),
        host: view.host.map(str::to_owned),
        path: probe
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        skipped,
        outcome,
    }
}

/// The failed condition in words, with what the route wanted and what the request had.
fn describe(m: Mismatch<'_>, matcher: &RouteMatch, view: &RequestView<'_>) -> String {
    let value = |v: &ValueMatch| match v {
        ValueMatch::Exact(e) => format!("= {e:?}"),
        ValueMatch::Regex(r) => format!("~ /{}/", unanchored(r.as_str())),
        ValueMatch::Present(true) => "present".to_owned(),
        ValueMatch::Present(false) => "absent".to_owned(),
    };
    match m {
        Mismatch::Host => {
            let want = match &matcher.host {
                Some(HostMatch::Exact(h)) => h.clone(),
                Some(HostMatch::Suffix(s)) => format!("*{s}"),
                None => String::new(),
            };
            format!("host {:?} is not {want}", view.host.unwrap_or(""))
        }
        Mismatch::Path => {
            let want = match &matcher.path {
                Some(PathMatch::Exact(p)) => format!("exactly {p}"),
                Some(PathMatch::Prefix(p)) => format!("under {p}"),
                Some(PathMatch::Regex(r)) => format!("matching /{}/", unanchored(r.as_str())),
                None => String::new(),
            };
            format!("path {} is not {want}", view.path)
        }
        Mismatch::Method => {
            let want: Vec<&str> = matcher
                .methods
                .iter()
                .flatten()
                .map(Method::as_str)
                .collect();
            format!("method {} is not one of {}", view.method, want.join(", "))
        }
        Mismatch::Header(name) => {
            let want = matcher
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| value(v));
            format!("header {name} is not {}", want.unwrap_or_default())
        }
        Mismatch::Query(name) => {
            let want = matcher
                .query
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| value(v));
            format!("query parameter {name} is not {}", want.unwrap_or_default())
        }
    }
}

fn retry(r: &crate::resilience::retry::Policy) -> Retry {
    let c = &r.on;
    let mut on: Vec<String> = [
        (c.server_error, "5xx"),
        (c.gateway_error, "gateway-error"),
        (c.connect_failure, "connect-failure"),
        (c.reset, "reset"),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .map(|(_, n)| (*n).to_owned())
    .collect();
    on.extend(c.statuses.iter().map(|s| s.to_string()));
    on.extend(c.grpc.iter().map(|g| format!("grpc {g}")));
    Retry {
        attempts: r.attempts,
        per_try_timeout: r.per_try_timeout.map(HumanDuration),
        on,
        backoff_base: HumanDuration(r.backoff_base),
        backoff_max: HumanDuration(r.backoff_max),
        non_idempotent: r.non_idempotent,
    }
}

/// A compiled whole-string regex as it was written.
fn unanchored(r: &str) -> &str {
    r.strip_prefix("^(?:")
        .and_then(|r| r.strip_suffix(")$"))
        .unwrap_or(r)
}

fn matched(spec: &RouteSpec, view: &RequestView<'_>, services: &dyn ServiceInfo) -> Matched {
    let action = match &*spec.action {
        ActionSpec::Forward(list) => {
            let total: u32 = list.iter().map(|b| b.weight).sum();
            let backends = list
                .iter()
                .map(|b| backend(&b.service, b.weight, total, services))
                .collect();
            Action::Forward { backends }
        }
        ActionSpec::Redirect { status, location } => Action::Redirect {
            status: status.as_u16(),
            location: location.to_str().unwrap_or("").to_owned(),
        },
        ActionSpec::Direct { status, body, .. } => Action::DirectResponse {
            status: status.as_u16(),
            body_bytes: body.len(),
        },
    };
    let edits = |e: &crate::routing::HeaderEdits| {
        let edit = |op, name: &HeaderName, value: Option<&HeaderValue>| HeaderEdit {
            op,
            name: name.to_string(),
            value: value.map(|v| v.to_str().unwrap_or("?").to_owned()),
        };
        let mut out: Vec<HeaderEdit> = e.remove.iter().map(|n| edit("remove", n, None)).collect();
        out.extend(e.set.iter().map(|(n, v)| edit("set", n, Some(v))));
        out.extend(e.add.iter().map(|(n, v)| edit("add", n, Some(v))));
        out
    };
    Matched {
        route: spec.name.to_string(),
        action,
        timeout: HumanDuration(spec.timeout),
        rewritten_path: spec
            .rewrite
            .as_ref()
            .map(|rw| rw.apply(view.path, view.query)),
        request_headers: edits(&spec.request_headers),
        response_headers: edits(&spec.response_headers),
        rate_limit: spec.rate_limit.map(|l| RateLimit {
            requests_per_second: l.per_second.get(),
            burst: l.burst.get(),
        }),
        retry: spec.retry.as_ref().map(retry),
        mirror: spec.mirror.as_ref().map(|m| Mirror {
            percent: m.percent,
            service: m.service.to_string(),
        }),
        cache: spec.cache.map(|c| CachePolicy {
            max_size: ByteSize(c.max_size),
            max_object_size: ByteSize(c.max_object_size),
        }),
        fault: spec.fault.as_ref().map(|f| Fault {
            delay: f.delay.map(|(percent, d)| FaultDelay {
                percent,
                duration: HumanDuration(d),
            }),
            abort: f.abort.map(|(percent, s)| FaultAbort {
                percent,
                status: s.as_u16(),
            }),
        }),
    }
}

fn backend(name: &str, weight: u32, total: u32, services: &dyn ServiceInfo) -> Backend {
    let share_percent = if total == 0 {
        0.0
    } else {
        f64::from(weight) * 100.0 / f64::from(total)
    };
    let spec = services.spec(name);
    Backend {
        service: name.to_owned(),
        weight,
        share_percent,
        protocol: spec.map(|s| format!("{:?}", s.protocol).to_lowercase()),
        load_balancer: spec.map(|s| {
            let (kind, header) = match &s.policy {
                crate::balance::Policy::LeastRequest => ("least_request", None),
                crate::balance::Policy::RoundRobin => ("round_robin", None),
                crate::balance::Policy::Random => ("random", None),
                crate::balance::Policy::RingHash(h) => ("ring_hash", Some(h.to_string())),
            };
            LoadBalancer { kind, header }
        }),
        connect_timeout: spec.map(|s| HumanDuration(s.connect_timeout)),
        discovery: spec.map(|s| match &s.discovery {
            Discovery::Static(_) => DiscoveryInfo::Static,
            Discovery::Dns {
                host,
                port,
                refresh,
            } => DiscoveryInfo::Dns {
                host: host.to_string(),
                port: *port,
                refresh: HumanDuration(*refresh),
            },
        }),
        circuit_breaker: spec.map(|s| CircuitBreaker {
            max_requests: s.breaker.max_requests,
            max_connections: s.breaker.max_connections,
            max_pending_requests: s.breaker.max_pending_requests,
        }),
        outlier_detection: spec.and_then(|s| s.outlier).map(|o| Outlier {
            consecutive_failures: o.consecutive_failures,
            base_ejection: HumanDuration(o.base_ejection),
            max_ejected_percent: o.max_ejected_percent.into(),
        }),
        health_check: spec.and_then(|s| s.health.as_ref()).map(|h| HealthCheck {
            path: h.path.to_string(),
            interval: HumanDuration(h.interval),
            unhealthy_after: h.unhealthy_after,
            healthy_after: h.healthy_after,
        }),
        mtls_peer_identity: spec.and_then(|s| s.tls.clone()),
        endpoints: services
            .endpoints(name)
            .map(|eps| eps.iter().map(SocketAddr::to_string).collect()),
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} {} (host {})",
            self.method,
            self.path,
            self.host.as_deref().unwrap_or("none")
        )?;
        for s in &self.skipped {
            writeln!(f, "  route {}: no, {}", s.route, s.reason)?;
        }
        match &self.outcome {
            Outcome::Rejected => writeln!(
                f,
                "  no route matches: answered 404 (x-remora-error: no-route)"
            ),
            Outcome::Passthrough { authority } => {
                writeln!(f, "  no route matches: passed through to {authority}")
            }
            Outcome::Route(m) => {
                writeln!(f, "  route {}: MATCH", m.route)?;
                if let Some(rl) = &m.rate_limit {
                    writeln!(f, "    rate limit {rl}")?;
                }
                if let Some(fault) = &m.fault {
                    writeln!(f, "    fault: {fault}")?;
                }
                if let Some(retry) = &m.retry {
                    writeln!(f, "    retry: {retry}")?;
                }
                if let Some(mirror) = &m.mirror {
                    writeln!(f, "    mirror: {mirror}")?;
                }
                if let Some(cache) = &m.cache {
                    writeln!(f, "    cache: {cache}")?;
                }
                match &m.action {
                    Action::Redirect { status, location } => {
                        writeln!(f, "    redirect {status} to {location}")?
                    }
                    Action::DirectResponse { status, body_bytes } => {
                        writeln!(f, "    direct response {status} ({body_bytes} bytes)")?
                    }
                    Action::Forward { backends } => {
                        writeln!(f, "    timeout {}", m.timeout)?;
                        if let Some(p) = &m.rewritten_path {
                            writeln!(f, "    rewritten to {p}")?;
                        }
                        for (label, edits) in [
                            ("request", &m.request_headers),
                            ("response", &m.response_headers),
                        ] {
                            if !edits.is_empty() {
                                let edits: Vec<String> =
                                    edits.iter().map(ToString::to_string).collect();
                                writeln!(f, "    {label} headers: {}", edits.join("; "))?;
                            }
                        }
                        for b in backends {
                            let (
                                Some(protocol),
                                Some(lb),
                                Some(connect),
                                Some(discovery),
                                Some(cb),
                            ) = (
                                &b.protocol,
                                &b.load_balancer,
                                &b.connect_timeout,
                                &b.discovery,
                                &b.circuit_breaker,
                            )
                            else {
                                writeln!(
                                    f,
                                    "    backend {} weight {}: no such service",
                                    b.service, b.weight
                                )?;
                                continue;
                            };
                            writeln!(
                                f,
                                "    backend {} weight {} ({:.1}%): {protocol}, {lb}, connect timeout {connect}, {discovery}",
                                b.service,
                                b.weight,
                                b.share_percent,
                            )?;
                            writeln!(f, "      circuit breaker: {cb}")?;
                            if let Some(o) = &b.outlier_detection {
                                writeln!(f, "      outlier detection: {o}")?;
                            }
                            if let Some(h) = &b.health_check {
                                writeln!(f, "      health check: {h}")?;
                            }
                            if let Some(id) = &b.mtls_peer_identity {
                                writeln!(f, "      mTLS: the peer must be {id}")?;
                            }
                            match &b.endpoints {
                                Some(eps) if eps.is_empty() => {
                                    writeln!(f, "      endpoints: none")?
                                }
                                Some(eps) => writeln!(f, "      endpoints: {}", eps.join(", "))?,
                                None => writeln!(f, "      endpoints: resolved at run time")?,
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }
}
