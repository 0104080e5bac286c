//! Which route a request takes, and why: the routes passed over with the condition each
//! failed, the backend split, the policies, and the endpoints. Used by `remora explain` (on a
//! file), the admin listener's `/debug/route` (on the live config) and `remora test`.

use std::{collections::BTreeMap, fmt, net::SocketAddr, sync::Arc};

use http::{header::HeaderName, HeaderMap, HeaderValue, Method, Uri};
use serde::Serialize;

use crate::{
    config::duration::HumanDuration,
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
    pub timeout: String,
    /// The path and query sent upstream, when a rewrite changes it.
    pub rewritten_path: Option<String>,
    /// Request header edits.
    pub request_headers: Vec<String>,
    /// Response header edits.
    pub response_headers: Vec<String>,
    /// Local rate limit, e.g. `200/s, burst 50`.
    pub rate_limit: Option<String>,
    /// Injected faults, e.g. `delay 1% by 100ms; abort 0.1% with 503`.
    pub fault: Option<String>,
    /// Retry policy.
    pub retry: Option<String>,
    /// Mirroring, e.g. `5% to shadow`.
    pub mirror: Option<String>,
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
    /// Upstream protocol.
    pub protocol: String,
    /// Load balancer.
    pub load_balancer: String,
    /// Connect timeout.
    pub connect_timeout: String,
    /// Where endpoints come from.
    pub discovery: String,
    /// Circuit breaker limits.
    pub circuit_breaker: String,
    /// Outlier detection, when on.
    pub outlier_detection: Option<String>,
    /// Health checks, when on.
    pub health_check: Option<String>,
    /// The SPIFFE ID required of the endpoints, when the service is called over mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls_peer_identity: Option<SpiffeId>,
    /// Current endpoints (`None`: resolved only at run time).
    pub endpoints: Option<Vec<String>>,
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

/// A retry policy in words.
fn describe_retry(r: &crate::resilience::retry::Policy) -> String {
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
    format!(
        "{} attempts{}, on {}, backoff {}..{}{}",
        r.attempts,
        r.per_try_timeout
            .map(|t| format!(" of at most {}", HumanDuration(t)))
            .unwrap_or_default(),
        on.join(", "),
        HumanDuration(r.backoff_base),
        HumanDuration(r.backoff_max),
        if r.non_idempotent {
            ", POST and PATCH too"
        } else {
            ""
        }
    )
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
        let mut out: Vec<String> = e.remove.iter().map(|n| format!("remove {n}")).collect();
        out.extend(
            e.set
                .iter()
                .map(|(n, v)| format!("set {n}: {}", v.to_str().unwrap_or("?"))),
        );
        out.extend(
            e.add
                .iter()
                .map(|(n, v)| format!("add {n}: {}", v.to_str().unwrap_or("?"))),
        );
        out
    };
    Matched {
        route: spec.name.to_string(),
        action,
        timeout: HumanDuration(spec.timeout).to_string(),
        rewritten_path: spec
            .rewrite
            .as_ref()
            .map(|rw| rw.apply(view.path, view.query)),
        request_headers: edits(&spec.request_headers),
        response_headers: edits(&spec.response_headers),
        rate_limit: spec.rate_limit.map(|l| l.to_string()),
        retry: spec.retry.as_ref().map(describe_retry),
        mirror: spec
            .mirror
            .as_ref()
            .map(|m| format!("{}% to {}", m.percent, m.service)),
        fault: spec.fault.as_ref().map(|f| {
            let mut parts = Vec::new();
            if let Some((p, d)) = f.delay {
                parts.push(format!("delay {p}% by {}", HumanDuration(d)));
            }
            if let Some((p, s)) = f.abort {
                parts.push(format!("abort {p}% with {}", s.as_u16()));
            }
            parts.join("; ")
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
    let text = |f: &dyn Fn(&ServiceSpec) -> String| spec.map_or_else(|| "?".to_owned(), f);
    Backend {
        service: name.to_owned(),
        weight,
        share_percent,
        protocol: text(&|s| format!("{:?}", s.protocol).to_lowercase()),
        load_balancer: text(&|s| match &s.policy {
            crate::balance::Policy::LeastRequest => "least_request".to_owned(),
            crate::balance::Policy::RoundRobin => "round_robin".to_owned(),
            crate::balance::Policy::Random => "random".to_owned(),
            crate::balance::Policy::RingHash(h) => format!("ring_hash on {h}"),
        }),
        connect_timeout: text(&|s| HumanDuration(s.connect_timeout).to_string()),
        discovery: text(&|s| match &s.discovery {
            Discovery::Static(_) => "static".to_owned(),
            Discovery::Dns {
                host,
                port,
                refresh,
            } => {
                format!("dns {host}:{port} every {}", HumanDuration(*refresh))
            }
        }),
        circuit_breaker: text(&|s| {
            let b = s.breaker;
            format!(
                "at most {} requests, {} connections, {} pending",
                b.max_requests, b.max_connections, b.max_pending_requests
            )
        }),
        outlier_detection: spec.and_then(|s| s.outlier).map(|o| {
            format!(
                "eject after {} failures in a row for {} x times ejected, at most {}% at once",
                o.consecutive_failures,
                HumanDuration(o.base_ejection),
                o.max_ejected_percent
            )
        }),
        health_check: spec.and_then(|s| s.health.as_ref()).map(|h| {
            format!(
                "GET {} every {}, out after {} failures, back after {} passes",
                h.path,
                HumanDuration(h.interval),
                h.unhealthy_after,
                h.healthy_after
            )
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
                                writeln!(f, "    {label} headers: {}", edits.join("; "))?;
                            }
                        }
                        for b in backends {
                            writeln!(
                                f,
                                "    backend {} weight {} ({:.1}%): {}, {}, connect timeout {}, {}",
                                b.service,
                                b.weight,
                                b.share_percent,
                                b.protocol,
                                b.load_balancer,
                                b.connect_timeout,
                                b.discovery
                            )?;
                            writeln!(f, "      circuit breaker: {}", b.circuit_breaker)?;
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
