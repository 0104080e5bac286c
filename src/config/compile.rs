//! Turns the parsed file into validated runtime settings: socket addresses, durations,
//! compiled matchers, header names and values. Every problem is collected, not just the first.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{header::HeaderName, HeaderValue, Method, StatusCode};

use super::file::{
    self, AuthorizeRuleFile, File, HeaderEditsFile, InboundTls, Lenient, LoadBalancerFile,
    MatchFile, PathMatchFile, RouteFile, ServiceFile, ValueMatchFile,
};
use super::spelling::closest;
use crate::{
    authorize::{self, IdPattern, PathPattern},
    balance::Policy,
    resilience::{rate_limit::Limit, retry::BudgetSpec},
    routing::{
        matcher::{anchored_regex, HostMatch, PathMatch, ValueMatch},
        normalize::{EscapedSlashes, PathRules},
        tcp::{Cidr, PortSet, TcpRouteSpec},
        ActionSpec, HeaderEdits, Rewrite, RouteMatch, RouteSpec, Unmatched, WeightedService,
    },
    telemetry::{self, LogFormat, LogSettings},
    tls::{self, Identity, IdentityFiles, SpiffeId},
    upstream::{Discovery, Protocol, ServiceSpec},
};

/// One problem in a config, before it is given a line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `outbound.routes[2].backends[0].service`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The effective config of a file that compiled: kept as its text, and rendered as YAML with
/// every default filled in only when `/config` asks. Rendering a large file costs as much as
/// compiling it, so neither a start nor a reload pays for it, and the text is a quarter of the
/// rendered size.
#[derive(Debug, Clone)]
pub struct Effective(Arc<str>);

impl Effective {
    /// The file's text, as it was loaded.
    pub fn text(&self) -> &str {
        &self.0
    }

    /// The effective config as YAML: the file as parsed, the sections it left out filled in
    /// with the values in force.
    pub fn render(&self) -> String {
        let (_, Some(mut file), _) = super::yaml::from_str::<file::File>(&self.0) else {
            return String::new();
        };
        fn fill<T: Default>(section: &mut Option<Lenient<T>>) {
            let value = match section.take() {
                Some(Lenient::Ok(v)) => v,
                _ => T::default(),
            };
            *section = Some(Lenient::Ok(value));
        }
        fill(&mut file.admin);
        fill(&mut file.limits);
        fill(&mut file.shutdown);
        fill(&mut file.log);
        serde_yaml::to_string(&file).unwrap_or_default()
    }
}

/// A validated config: everything the runtime needs, in runtime types.
#[derive(Debug)]
pub struct Compiled {
    /// The effective config, rendered when `/config` asks.
    pub effective: Effective,
    /// Admin listener address.
    pub admin: SocketAddr,
    /// Whether non-loopback callers may use the admin control endpoints.
    pub admin_remote_control: bool,
    /// How request paths are normalized.
    pub paths: PathRules,
    /// Protocol limits.
    pub limits: Limits,
    /// Graceful shutdown timing.
    pub shutdown: ShutdownSettings,
    /// Logging.
    pub log: LogSettings,
    /// Tracing, when configured.
    pub tracing: Option<crate::trace::TracingSettings>,
    /// Inbound listener, when configured.
    pub inbound: Option<InboundSpec>,
    /// Outbound listener, when configured.
    pub outbound: Option<OutboundSpec>,
    /// Upstream services by name.
    pub services: BTreeMap<String, ServiceSpec>,
    /// This workload's identity, its files read and checked.
    pub identity: Option<Identity>,
    /// What is valid but surely wrong, at its place in the file (see `config::lint`).
    pub warnings: Vec<super::Located>,
}

/// The settings applied when listeners start: listen addresses, protocol limits and
/// logging. A reload moves, adds, removes or restarts data listeners to apply them; the admin
/// address and the log settings need a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// Admin listen address.
    pub admin: SocketAddr,
    /// Inbound listen address.
    pub inbound: Option<SocketAddr>,
    /// Outbound listen address.
    pub outbound: Option<SocketAddr>,
    /// Protocol limits.
    pub limits: Limits,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
}

impl Startup {
    /// What differs from `other` that only a restart can apply, as the fields' paths.
    pub fn restart_only(&self, other: &Startup) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.admin != other.admin {
            out.push("admin.listen");
        }
        if self.log_level != other.log_level || self.log_format != other.log_format {
            out.push("log.level / log.format");
        }
        out
    }
}

impl Compiled {
    /// The settings only a restart applies.
    pub fn startup(&self) -> Startup {
        Startup {
            admin: self.admin,
            inbound: self.inbound.as_ref().map(|i| i.listen),
            outbound: self.outbound.as_ref().map(|o| o.listen),
            limits: self.limits,
            log_level: self.log.filter.clone(),
            log_format: self.log.format,
        }
    }
}

/// A data listener's protocol limits (compiled from `limits:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request header block in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in a request.
    pub max_headers: usize,
    /// What a request header with `_` in its name gets (inbound).
    pub underscores: crate::headers::Underscores,
    /// Time to receive a complete request header block.
    pub header_read_timeout: Duration,
    /// Most concurrent downstream connections per listener.
    pub max_connections: usize,
    /// Idle downstream connections are closed after this long.
    pub idle_timeout: Duration,
    /// Time protocol detection waits for a connection's first bytes.
    pub detect_timeout: Duration,
    /// Opaque TCP connections with no bytes either way are closed after this long.
    pub tcp_idle_timeout: Duration,
}

/// Runtime form of `shutdown:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownSettings {
    /// Keep accepting this long after the signal.
    pub grace: Duration,
    /// Most time given to in-flight requests.
    pub drain_timeout: Duration,
}

/// Runtime form of `inbound:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundSpec {
    /// Listen address.
    pub listen: SocketAddr,
    /// The local app: a one-endpoint service named `app`.
    pub app: ServiceSpec,
    /// Time the app has to answer with response headers.
    pub timeout: Duration,
    /// Local rate limit for all callers (requests per second, burst).
    pub rate_limit: Option<Limit>,
    /// What the listener accepts: mTLS, plaintext or both.
    pub tls: tls::Mode,
    /// Authorization rules, when any are configured.
    pub authorize: Option<authorize::Policy>,
    /// Destination ports proxied as opaque TCP without detection.
    pub opaque_ports: PortSet,
}

/// Runtime form of `outbound:`.
#[derive(Debug, PartialEq)]
pub struct OutboundSpec {
    /// Listen address.
    pub listen: SocketAddr,
    /// Policy for unmatched requests.
    pub unmatched: Unmatched,
    /// Compiled routes in order.
    pub routes: Vec<RouteSpec>,
    /// Original destination ports proxied as opaque TCP without detection.
    pub opaque_ports: PortSet,
    /// Compiled TCP routes in order.
    pub tcp_routes: Vec<TcpRouteSpec>,
}

/// The ports of a comma-separated list (`4222, 5432`); none for an absent or empty one.
pub fn opaque_ports_from(text: Option<&str>) -> Result<PortSet, String> {
    let mut out = PortSet::new();
    for item in text
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        match item.parse::<u16>() {
            Ok(p) if p > 0 => {
                out.insert(p);
            }
            _ => {
                return Err(format!(
                    "{item:?} is not a port (1-65535); expected a list such as 4222,5432"
                ))
            }
        }
    }
    Ok(out)
}

/// Compiles `file`, parsed from `text`; `Err` lists every problem found. Relative file paths
/// in it are taken from `base` (the control file's directory).
pub fn compile(file: File, text: &str, base: Option<&Path>) -> Result<Compiled, Vec<Problem>> {
    let mut c = Ctx {
        has_identity: file.identity.is_some(),
        ..Ctx::default()
    };
    let identity = section(&file.identity).and_then(|id| {
        let resolve = |p: &str| match base {
            Some(dir) if Path::new(p).is_relative() => dir.join(p),
            _ => PathBuf::from(p),
        };
        let files = IdentityFiles {
            trust_anchors: resolve(&id.trust_anchors),
            certificate: resolve(&id.certificate),
            private_key: resolve(&id.private_key),
        };
        Identity::load(&files)
            .map_err(|e| c.err(e.field.path(), e.to_string()))
            .ok()
    });
    if file.version != 1 {
        c.err(
            "version",
            format!(
                "unsupported version {}: this Remora reads version 1",
                file.version
            ),
        );
    }
    let admin_file = section(&file.admin).cloned().unwrap_or_default();
    let admin = c.addr("admin.listen", &admin_file.listen);
    let admin_remote_control = admin_file.remote_control;
    let limits_file = section(&file.limits).cloned().unwrap_or_default();
    if limits_file.max_header_bytes < 1024 {
        c.err("limits.max_header_bytes", "must be at least 1024".into());
    }
    if !(1..=10_000).contains(&limits_file.max_headers) {
        c.err("limits.max_headers", "must be 1 to 10000".into());
    }
    if limits_file.max_connections == 0 {
        c.err("limits.max_connections", "must be at least 1".into());
    }
    for (path, d) in [
        ("limits.detect_timeout", limits_file.detect_timeout.0),
        ("limits.tcp_idle_timeout", limits_file.tcp_idle_timeout.0),
    ] {
        if d.is_zero() {
            c.err(path, "must be more than 0".into());
        }
    }
    let shutdown_file = section(&file.shutdown).cloned().unwrap_or_default();
    let log_file = section(&file.log).cloned().unwrap_or_default();
    if let Err(e) = telemetry::check_filter(&log_file.level) {
        c.err("log.level", e);
    }
    let log = LogSettings {
        filter: log_file.level.clone(),
        format: match log_file.format {
            file::LogFormat::Json => LogFormat::Json,
            file::LogFormat::Text => LogFormat::Text,
        },
        access_log: log_file.access_log,
    };
    let tracing = section(&file.tracing).cloned().and_then(|t| {
        let endpoint = crate::trace::Endpoint::parse(&t.otlp_endpoint)
            .map_err(|e| c.err("tracing.otlp_endpoint", e))
            .ok();
        if !(0.0..=100.0).contains(&t.sample_percent) {
            c.err("tracing.sample_percent", "must be 0 to 100".into());
        }
        if t.service_name.trim().is_empty() {
            c.err("tracing.service_name", "must not be empty".into());
        }
        if t.max_queued_spans == 0 {
            c.err("tracing.max_queued_spans", "must be at least 1".into());
        }
        Some(crate::trace::TracingSettings {
            endpoint: endpoint?,
            sample_percent: t.sample_percent,
            service_name: t.service_name,
            queue: t.max_queued_spans,
        })
    });

    let mut services = BTreeMap::new();
    for (name, svc) in &file.services {
        let path = format!("services.{name}");
        if let Some(svc) = whole(svc) {
            if let Some(spec) = c.service(&path, svc) {
                services.insert(name.clone(), spec);
            }
        }
    }

    // Ports a pod adds to both directions' opaque_ports through its environment: one
    // ConfigMap serves every replica, so `remora inject` passes a pod's own
    // (`remora.io/opaque-ports`) this way.
    let env_opaque = match opaque_ports_from(std::env::var(super::OPAQUE_PORTS_ENV).ok().as_deref())
    {
        Ok(ports) => ports,
        Err(e) => {
            c.err(super::OPAQUE_PORTS_ENV, e);
            PortSet::new()
        }
    };

    let inbound = section(&file.inbound).map(|ib| {
        let listen = c.addr("inbound.listen", &ib.listen);
        let app = c.addr("inbound.app", &ib.app);
        let tls = c.inbound_tls(ib.tls);
        let authorize = c.authorize(&ib.authorize, tls);
        InboundSpec {
            listen,
            app: ServiceSpec {
                discovery: Discovery::Static(vec![app]),
                protocol: protocol(ib.protocol),
                policy: Policy::RoundRobin,
                connect_timeout: ib.connect_timeout.0,
                idle_timeout: ib.idle_timeout.0,
                breaker: Default::default(),
                outlier: None,
                retry_budget: BudgetSpec::default(),
                health: None,
                tls: None,
            },
            timeout: ib.timeout.0,
            rate_limit: ib
                .rate_limit
                .as_ref()
                .and_then(|r| c.rate_limit("inbound.rate_limit", r)),
            tls,
            authorize,
            opaque_ports: ib.opaque_ports.iter().chain(&env_opaque).copied().collect(),
        }
    });

    let outbound = section(&file.outbound).map(|ob| {
        let listen = c.addr("outbound.listen", &ob.listen);
        let mut names = HashSet::new();
        let mut routes = Vec::new();
        for (i, route) in ob.routes.iter().enumerate() {
            let path = format!("outbound.routes[{i}]");
            let Some(route) = whole(route) else {
                continue;
            };
            if !names.insert(route.name.as_str()) {
                c.err(
                    &format!("{path}.name"),
                    format!("duplicate route name {:?}", route.name),
                );
            }
            if let Some(spec) = c.route(&path, route, &file.services) {
                routes.push(spec);
            }
        }
        let tcp_routes = c.tcp_routes(&ob.tcp_routes, &file.services);
        OutboundSpec {
            listen,
            unmatched: match ob.unmatched {
                file::Unmatched::Passthrough => Unmatched::Passthrough,
                file::Unmatched::Reject => Unmatched::Reject,
            },
            routes,
            opaque_ports: ob.opaque_ports.iter().chain(&env_opaque).copied().collect(),
            tcp_routes,
        }
    });

    if inbound.is_none() && outbound.is_none() && c.problems.is_empty() {
        c.err(
            "",
            "nothing to serve: configure `inbound`, `outbound`, or both".into(),
        );
    }
    let mut listeners = vec![("admin.listen", admin)];
    listeners.extend(inbound.as_ref().map(|i| ("inbound.listen", i.listen)));
    listeners.extend(outbound.as_ref().map(|o| ("outbound.listen", o.listen)));
    for (i, (path, addr)) in listeners.iter().enumerate() {
        if addr.port() == 0 {
            continue;
        }
        if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a == addr) {
            c.err(path, format!("address {addr} is already used by {other}"));
        }
    }

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    let effective = Effective(Arc::from(text));
    Ok(Compiled {
        warnings: Vec::new(),
        admin,
        admin_remote_control,
        paths: PathRules {
            normalize: limits_file.normalize_path,
            merge_slashes: limits_file.merge_slashes,
            escaped_slashes: match limits_file.escaped_slashes {
                file::EscapedSlashesFile::Reject => EscapedSlashes::Reject,
                file::EscapedSlashesFile::Keep => EscapedSlashes::Keep,
                file::EscapedSlashesFile::Unescape => EscapedSlashes::Unescape,
            },
        },
        limits: Limits {
            max_header_bytes: limits_file.max_header_bytes,
            max_headers: limits_file.max_headers,
            underscores: match limits_file.headers_with_underscores {
                file::UnderscoresFile::Allow => crate::headers::Underscores::Allow,
                file::UnderscoresFile::Drop => crate::headers::Underscores::Drop,
                file::UnderscoresFile::Reject => crate::headers::Underscores::Reject,
            },
            header_read_timeout: limits_file.header_read_timeout.0,
            max_connections: limits_file.max_connections,
            idle_timeout: limits_file.idle_timeout.0,
            detect_timeout: limits_file.detect_timeout.0,
            tcp_idle_timeout: limits_file.tcp_idle_timeout.0,
        },
        shutdown: ShutdownSettings {
            grace: shutdown_file.grace.0,
            drain_timeout: shutdown_file.drain_timeout.0,
        },
        log,
        tracing,
        inbound,
        outbound,
        services,
        identity,
        effective,
    })
}

/// The runtime protocol for the file's.
fn protocol(p: file::Protocol) -> Protocol {
    match p {
        file::Protocol::Http1 => Protocol::Http1,
        file::Protocol::Http2 => Protocol::Http2,
        file::Protocol::Auto => Protocol::Auto,
    }
}

#[derive(Default)]
struct Ctx {
    problems: Vec<Problem>,
    /// Whether the file has an `identity` section (valid or not).
    has_identity: bool,
}

/// The part when it read whole (a failed part's problems were reported as it was read).
fn whole<T>(part: &Lenient<T>) -> Option<&T> {
    match part {
        Lenient::Ok(t) => Some(t),
        Lenient::Failed => None,
    }
}

/// A section given and whole.
fn section<T>(part: &Option<Lenient<T>>) -> Option<&T> {
    part.as_ref().and_then(whole)
}

impl Ctx {
    fn err(&mut self, path: &str, message: String) {
        self.problems.push(Problem {
            path: path.to_owned(),
            message,
        });
    }

    fn addr(&mut self, path: &str, text: &str) -> SocketAddr {
        text.trim().parse().unwrap_or_else(|_| {
            self.err(
                path,
                format!("invalid socket address {text:?}: expected IP:PORT, e.g. 127.0.0.1:8080"),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    fn header_name(&mut self, path: &str, text: &str) -> Option<HeaderName> {
        HeaderName::from_bytes(text.as_bytes())
            .map_err(|_| self.err(path, format!("invalid header name {text:?}")))
            .ok()
    }

    fn header_value(&mut self, path: &str, text: &str) -> Option<HeaderValue> {
        HeaderValue::from_str(text)
            .map_err(|_| self.err(path, format!("invalid header value {text:?}")))
            .ok()
    }

    /// `inbound.tls`, defaulting to `permissive` when there is an identity.
    fn inbound_tls(&mut self, tls: Option<InboundTls>) -> tls::Mode {
        let mode = match tls {
            Some(InboundTls::Strict) => tls::Mode::Strict,
            Some(InboundTls::Permissive) => tls::Mode::Permissive,
            Some(InboundTls::Disabled) => tls::Mode::Disabled,
            None if self.has_identity => tls::Mode::Permissive,
            None => tls::Mode::Disabled,
        };
        if mode != tls::Mode::Disabled && !self.has_identity {
            self.err(
                "inbound.tls",
                "needs the `identity` section (trust_anchors, certificate, private_key)".into(),
            );
        }
        mode
    }

    fn authorize(
        &mut self,
        rules: &[AuthorizeRuleFile],
        tls: tls::Mode,
    ) -> Option<authorize::Policy> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let at = format!("inbound.authorize[{i}]");
            let name = r.name.clone().unwrap_or_else(|| format!("rule-{}", i + 1));
            if !names.insert(name.clone()) {
                self.err(
                    &format!("{at}.name"),
                    format!("duplicate rule name {name:?}"),
                );
            }
            if r.from.is_empty() && !r.unauthenticated {
                self.err(
                    &at,
                    "matches no caller: give `from` (SPIFFE IDs) or `unauthenticated: true`".into(),
                );
            }
            if !r.from.is_empty() && tls == tls::Mode::Disabled {
                self.err(
                    &format!("{at}.from"),
                    "callers never have an identity while inbound.tls is disabled; enable TLS or use `unauthenticated: true`".into(),
                );
            }
            let from = r
                .from
                .iter()
                .enumerate()
                .filter_map(|(j, f)| {
                    IdPattern::parse(f)
                        .map_err(|m| self.err(&format!("{at}.from[{j}]"), m))
                        .ok()
                })
                .collect();
            let paths = r
                .paths
                .iter()
                .enumerate()
                .filter_map(|(j, p)| {
                    PathPattern::parse(p)
                        .map_err(|m| self.err(&format!("{at}.paths[{j}]"), m))
                        .ok()
                })
                .collect();
            let methods = r
                .methods
                .iter()
                .enumerate()
                .filter_map(|(j, m)| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| {
                            self.err(
                                &format!("{at}.methods[{j}]"),
                                format!("invalid method {m:?}"),
                            )
                        })
                        .ok()
                })
                .collect();
            out.push(authorize::Rule {
                name,
                from,
                unauthenticated: r.unauthenticated,
                paths,
                methods,
            });
        }
        (!out.is_empty()).then_some(authorize::Policy { rules: out })
    }

    /// `outbound.tcp_routes`: unique names, at least one condition, a known service.
    fn tcp_routes(
        &mut self,
        routes: &[Lenient<file::TcpRouteFile>],
        services: &BTreeMap<String, Lenient<ServiceFile>>,
    ) -> Vec<TcpRouteSpec> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let path = format!("outbound.tcp_routes[{i}]");
            let Some(r) = whole(route) else {
                continue;
            };
            if !names.insert(r.name.clone()) {
                self.err(
                    &format!("{path}.name"),
                    format!("duplicate TCP route name {:?}", r.name),
                );
            }
            if r.matches.port.is_none() && r.matches.destination.is_none() {
                self.err(
                    &format!("{path}.match"),
                    "needs `port`, `destination`, or both".into(),
                );
            }
            if r.matches.port == Some(0) {
                self.err(&format!("{path}.match.port"), "must be 1 to 65535".into());
            }
            let destination = r.matches.destination.as_deref().and_then(|d| {
                Cidr::parse(d)
                    .map_err(|e| self.err(&format!("{path}.match.destination"), e))
                    .ok()
            });
            if !services.contains_key(&r.service) {
                self.err(
                    &format!("{path}.service"),
                    format!("unknown service {:?}", r.service),
                );
            }
            out.push(TcpRouteSpec {
                name: r.name.clone(),
                port: r.matches.port,
                destination,
                service: r.service.clone(),
            });
        }
        out
    }

    /// A service's `tls.identity`: one exact SPIFFE ID.
    fn service_tls(&mut self, path: &str, svc: &ServiceFile) -> Option<SpiffeId> {
        let t = svc.tls.as_ref()?;
        if !self.has_identity {
            self.err(
                &format!("{path}.tls"),
                "needs the `identity` section (trust_anchors, certificate, private_key)".into(),
            );
        }
        match IdPattern::parse(&t.identity) {
            Ok(IdPattern::Exact(id)) => Some(id),
            Ok(_) => {
                self.err(
                    &format!("{path}.tls.identity"),
                    "must be one exact SPIFFE ID, not a pattern".into(),
                );
                None
            }
            Err(m) => {
                self.err(&format!("{path}.tls.identity"), m);
                None
            }
        }
    }

    fn service(&mut self, path: &str, svc: &ServiceFile) -> Option<ServiceSpec> {
        let discovery = match (&svc.endpoints, &svc.dns) {
            (Some(_), Some(_)) => {
                self.err(path, "give either `endpoints` or `dns`, not both".into());
                return None;
            }
            (None, None) => {
                self.err(path, "missing `endpoints` or `dns`".into());
                return None;
            }
            (Some(eps), None) => {
                if eps.is_empty() {
                    self.err(
                        &format!("{path}.endpoints"),
                        "must list at least one endpoint".into(),
                    );
                }
                let addrs = eps
                    .iter()
                    .enumerate()
                    .map(|(i, e)| self.addr(&format!("{path}.endpoints[{i}]"), e))
                    .collect();
                Discovery::Static(addrs)
            }
            (None, Some(dns)) => {
                let parsed = dns
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                    .filter(|(h, _)| !h.is_empty() && !h.contains(['/', ' ']));
                let Some((host, port)) = parsed else {
                    self.err(
                        &format!("{path}.dns"),
                        format!("invalid dns target {dns:?}: expected NAME:PORT"),
                    );
                    return None;
                };
                if svc.dns_refresh.0 < Duration::from_millis(100) {
                    self.err(
                        &format!("{path}.dns_refresh"),
                        "must be at least 100ms".into(),
                    );
                }
                Discovery::Dns {
                    host: host.to_owned(),
                    port,
                    refresh: svc.dns_refresh.0,
                }
            }
        };
        if svc.connect_timeout.0.is_zero() {
            self.err(
                &format!("{path}.connect_timeout"),
                "must be greater than 0".into(),
            );
        }
        let policy = match &svc.load_balancer {
            LoadBalancerFile::LeastRequest => Policy::LeastRequest,
            LoadBalancerFile::RoundRobin => Policy::RoundRobin,
            LoadBalancerFile::Random => Policy::Random,
            LoadBalancerFile::RingHash { header } => Policy::RingHash(
                self.header_name(&format!("{path}.load_balancer.ring_hash.header"), header)?,
            ),
        };
        let cb = &svc.circuit_breaker;
        for (field, value) in [
            ("max_connections", cb.max_connections),
            ("max_pending_requests", cb.max_pending_requests),
            ("max_requests", cb.max_requests),
        ] {
            if value == 0 {
                self.err(
                    &format!("{path}.circuit_breaker.{field}"),
                    "must be at least 1".into(),
                );
            }
        }
        let outlier = svc.outlier_detection.as_ref().and_then(|o| {
            let at = format!("{path}.outlier_detection");
            let before = self.problems.len();
            if o.consecutive_failures == 0 {
                self.err(
                    &format!("{at}.consecutive_failures"),
                    "must be at least 1".into(),
                );
            }
            if o.base_ejection.0.is_zero() {
                self.err(
                    &format!("{at}.base_ejection"),
                    "must be greater than 0".into(),
                );
            }
            if o.max_ejected_percent > 100 {
                self.err(
                    &format!("{at}.max_ejected_percent"),
                    format!("must be 0 to 100, got {}", o.max_ejected_percent),
                );
            }
            (self.problems.len() == before).then_some(crate::resilience::outlier::Policy {
                consecutive_failures: o.consecutive_failures,
                base_ejection: o.base_ejection.0,
                max_ejected_percent: o.max_ejected_percent,
            })
        });
        let rb = &svc.retry_budget;
        if !(0.0..=1.0).contains(&rb.ratio) {
            self.err(
                &format!("{path}.retry_budget.ratio"),
                format!("must be 0 to 1, got {}", rb.ratio),
            );
        }
        let health = svc.health_check.as_ref().and_then(|h| {
            let at = format!("{path}.health_check");
            let before = self.problems.len();
            if !h.path.starts_with('/') {
                self.err(
                    &format!("{at}.path"),
                    format!("must start with \"/\", got {:?}", h.path),
                );
            }
            for (field, v) in [("interval", h.interval.0), ("timeout", h.timeout.0)] {
                if v.is_zero() {
                    self.err(&format!("{at}.{field}"), "must be greater than 0".into());
                }
            }
            for (field, v) in [
                ("unhealthy_after", h.unhealthy_after),
                ("healthy_after", h.healthy_after),
            ] {
                if v == 0 {
                    self.err(&format!("{at}.{field}"), "must be at least 1".into());
                }
            }
            (self.problems.len() == before).then(|| crate::resilience::health::Check {
                path: h.path.clone(),
                interval: h.interval.0,
                timeout: h.timeout.0,
                unhealthy_after: h.unhealthy_after,
                healthy_after: h.healthy_after,
            })
        });
        Some(ServiceSpec {
            tls: self.service_tls(path, svc),
            health,
            retry_budget: BudgetSpec {
                per_mille: (rb.ratio.clamp(0.0, 1.0) * 1000.0).round() as u32,
                min_per_second: rb.min_per_second,
            },
            outlier,
            discovery,
            protocol: protocol(svc.protocol),
            policy,
            connect_timeout: svc.connect_timeout.0,
            idle_timeout: svc.idle_timeout.0,
            breaker: crate::resilience::breaker::Limits {
                max_connections: cb.max_connections,
                max_pending_requests: cb.max_pending_requests,
                max_requests: cb.max_requests,
            },
        })
    }

    fn route(
        &mut self,
        path: &str,
        r: &RouteFile,
        services: &BTreeMap<String, Lenient<ServiceFile>>,
    ) -> Option<RouteSpec> {
        let before = self.problems.len();
        if r.name.trim().is_empty() {
            self.err(&format!("{path}.name"), "must not be empty".into());
        }
        let matcher = self.matcher(&format!("{path}.match"), &r.matches);
        let actions = [
            r.backends.is_some(),
            r.redirect.is_some(),
            r.direct_response.is_some(),
        ];
        let action = match actions.iter().filter(|a| **a).count() {
            0 => {
                self.err(
                    path,
                    "missing action: give `backends`, `redirect` or `direct_response`".into(),
                );
                None
            }
            1 => self.action(path, r, services),
            _ => {
                self.err(
                    path,
                    "give only one of `backends`, `redirect` and `direct_response`".into(),
                );
                None
            }
        };
        let request_headers = self.edits(&format!("{path}.request_headers"), &r.request_headers);
        let response_headers = self.edits(&format!("{path}.response_headers"), &r.response_headers);
        let rewrite = r.rewrite.as_ref().and_then(|rw| {
            let at = format!("{path}.rewrite.prefix");
            if r.backends.is_none() {
                self.err(&at, "a rewrite needs `backends`".into());
            }
            if !rw.prefix.starts_with('/') {
                self.err(&at, format!("must start with \"/\", got {:?}", rw.prefix));
            }
            let rewrite = Rewrite::for_path(matcher.path.as_ref(), rw.prefix.clone());
            if rewrite.is_none() {
                self.err(
                    &at,
                    "cannot rewrite a regex path match: use `exact` or `prefix`".into(),
                );
            }
            rewrite
        });
        if r.timeout.0.is_zero() {
            self.err(&format!("{path}.timeout"), "must be greater than 0".into());
        }
        let rate_limit = r
            .rate_limit
            .as_ref()
            .and_then(|rl| self.rate_limit(&format!("{path}.rate_limit"), rl));
        let fault = r
            .fault
            .as_ref()
            .and_then(|f| self.fault(&format!("{path}.fault"), f));
        let mirror = r.mirror.as_ref().and_then(|m| {
            let at = format!("{path}.mirror");
            if !services.contains_key(&m.service) {
                self.err(
                    &format!("{at}.service"),
                    format!("unknown service {:?}", m.service),
                );
                return None;
            }
            if !(0.0..=100.0).contains(&m.percent) {
                self.err(
                    &format!("{at}.percent"),
                    format!("percent must be between 0 and 100, got {}", m.percent),
                );
                return None;
            }
            if r.backends.is_none() {
                self.err(&at, "mirroring needs `backends`".into());
                return None;
            }
            Some(crate::resilience::mirror::MirrorPolicy {
                service: m.service.clone(),
                percent: m.percent,
            })
        });
        let retry = r
            .retry
            .as_ref()
            .and_then(|rt| self.retry(&format!("{path}.retry"), rt));
        if retry.is_some() && r.backends.is_none() {
            self.err(&format!("{path}.retry"), "retries need `backends`".into());
        }
        let cache = r.cache.as_ref().and_then(|c| {
            let at = format!("{path}.cache");
            if r.backends.is_none() {
                self.err(
                    &at,
                    "a cache needs `backends` (it stores their responses)".into(),
                );
                return None;
            }
            if c.max_size.0 == 0 {
                self.err(&format!("{at}.max_size"), "must be greater than 0".into());
                return None;
            }
            if c.max_object_size.0 > c.max_size.0 {
                self.err(
                    &format!("{at}.max_object_size"),
                    format!(
                        "{} is larger than max_size ({}): nothing that large could be kept",
                        c.max_object_size, c.max_size
                    ),
                );
                return None;
            }
            Some(crate::cache::Settings {
                max_size: c.max_size.0,
                max_object_size: c.max_object_size.0,
            })
        });
        if self.problems.len() != before {
            return None;
        }
        Some(RouteSpec {
            name: Arc::from(r.name.as_str()),
            matcher,
            action: Arc::new(action?),
            timeout: r.timeout.0,
            request_headers,
            response_headers,
            rewrite,
            rate_limit,
            fault,
            retry,
            mirror,
            cache,
        })
    }

    fn retry(
        &mut self,
        path: &str,
        r: &file::RetryFile,
    ) -> Option<crate::resilience::retry::Policy> {
        use crate::resilience::retry::{Conditions, Policy};
        let before = self.problems.len();
        if r.attempts == 0 {
            self.err(
                &format!("{path}.attempts"),
                "must be at least 1 (the first try)".into(),
            );
        }
        let mut on = Conditions::default();
        for (i, cond) in r.on.iter().enumerate() {
            match cond {
                file::RetryOnFile::Named(n) => match n.as_str() {
                    "5xx" => on.server_error = true,
                    "gateway-error" => on.gateway_error = true,
                    "connect-failure" => on.connect_failure = true,
                    "reset" => on.reset = true,
                    "cancelled" => on.grpc.push(1),
                    "deadline-exceeded" => on.grpc.push(4),
                    "resource-exhausted" => on.grpc.push(8),
                    "unavailable" => on.grpc.push(14),
                    other => self.err(
                        &format!("{path}.on[{i}]"),
                        format!("unknown retry condition {other:?}: use 5xx, gateway-error, connect-failure, reset, cancelled, deadline-exceeded, resource-exhausted, unavailable or {{ retriable-status: [CODES] }}"),
                    ),
                },
                file::RetryOnFile::Statuses(codes) => {
                    for c in codes {
                        if !(100..=599).contains(c) {
                            self.err(&format!("{path}.on[{i}]"), format!("invalid status {c}"));
                        }
                    }
                    on.statuses.extend(codes);
                }
            }
        }
        if r.backoff.base.0 > r.backoff.max.0 {
            self.err(
                &format!("{path}.backoff"),
                "base must not exceed max".into(),
            );
        }
        if r.per_try_timeout.is_some_and(|t| t.0.is_zero()) {
            self.err(
                &format!("{path}.per_try_timeout"),
                "must be greater than 0".into(),
            );
        }
        (self.problems.len() == before).then(|| Policy {
            attempts: r.attempts,
            per_try_timeout: r.per_try_timeout.map(|t| t.0),
            on,
            backoff_base: r.backoff.base.0,
            backoff_max: r.backoff.max.0,
            non_idempotent: r.non_idempotent,
        })
    }

    fn rate_limit(&mut self, path: &str, r: &file::RateLimitFile) -> Option<Limit> {
        let Some(per_second) = NonZeroU32::new(r.requests_per_second) else {
            self.err(
                &format!("{path}.requests_per_second"),
                "must be at least 1".into(),
            );
            return None;
        };
        let Some(burst) = NonZeroU32::new(r.burst.unwrap_or(r.requests_per_second)) else {
            self.err(&format!("{path}.burst"), "must be at least 1".into());
            return None;
        };
        Some(Limit { per_second, burst })
    }

    fn fault(&mut self, path: &str, f: &file::FaultFile) -> Option<crate::resilience::Fault> {
        let before = self.problems.len();
        let mut percent = |at: String, p: f64| {
            if !(0.0..=100.0).contains(&p) {
                self.err(&at, format!("percent must be between 0 and 100, got {p}"));
            }
        };
        if let Some(d) = &f.delay {
            percent(format!("{path}.delay.percent"), d.percent);
        }
        if let Some(a) = &f.abort {
            percent(format!("{path}.abort.percent"), a.percent);
        }
        let abort = match &f.abort {
            Some(a) => match StatusCode::from_u16(a.status) {
                Ok(s) if a.status >= 200 => Some((a.percent, s)),
                _ => {
                    self.err(
                        &format!("{path}.abort.status"),
                        format!("invalid status {}: use 200 to 599", a.status),
                    );
                    None
                }
            },
            None => None,
        };
        if f.delay.is_none() && f.abort.is_none() {
            self.err(path, "give `delay`, `abort`, or both".into());
        }
        (self.problems.len() == before).then(|| crate::resilience::Fault {
            delay: f.delay.as_ref().map(|d| (d.percent, d.duration.0)),
            abort,
        })
    }

    fn action(
        &mut self,
        path: &str,
        r: &RouteFile,
        services: &BTreeMap<String, Lenient<ServiceFile>>,
    ) -> Option<ActionSpec> {
        if let Some(backends) = &r.backends {
            if backends.is_empty() {
                self.err(
                    &format!("{path}.backends"),
                    "must list at least one backend".into(),
                );
                return None;
            }
            let mut total = 0u64;
            for (i, b) in backends.iter().enumerate() {
                if !services.contains_key(&b.service) {
                    let hint = closest(&b.service, services.keys().map(String::as_str))
                        .map(|s| format!(" (did you mean {s:?}?)"));
                    self.err(
                        &format!("{path}.backends[{i}].service"),
                        format!(
                            "unknown service {:?}{}",
                            b.service,
                            hint.unwrap_or_default()
                        ),
                    );
                }
                total += u64::from(b.weight);
            }
            if total == 0 {
                self.err(
                    &format!("{path}.backends"),
                    "total weight is 0: give at least one backend a weight".into(),
                );
            } else if total > u64::from(u32::MAX) {
                self.err(
                    &format!("{path}.backends"),
                    "total weight is too large".into(),
                );
            }
            let list = backends
                .iter()
                .map(|b| WeightedService {
                    service: b.service.clone(),
                    weight: b.weight,
                })
                .collect();
            return Some(ActionSpec::Forward(list));
        }
        if let Some(redirect) = &r.redirect {
            let at = format!("{path}.redirect");
            if ![301, 302, 303, 307, 308].contains(&redirect.status) {
                self.err(
                    &format!("{at}.status"),
                    format!(
                        "redirect status must be 301, 302, 303, 307 or 308, got {}",
                        redirect.status
                    ),
                );
            }
            let location = self.header_value(&format!("{at}.location"), &redirect.location)?;
            return Some(ActionSpec::Redirect {
                status: StatusCode::from_u16(redirect.status).ok()?,
                location,
            });
        }
        let direct = r.direct_response.as_ref()?;
        let at = format!("{path}.direct_response");
        let status = match StatusCode::from_u16(direct.status) {
            Ok(s) if direct.status >= 200 => s,
            _ => {
                self.err(
                    &format!("{at}.status"),
                    format!("invalid status {}: use 200 to 599", direct.status),
                );
                return None;
            }
        };
        let content_type = match &direct.content_type {
            Some(ct) => Some(self.header_value(&format!("{at}.content_type"), ct)?),
            None if direct.body.is_empty() => None,
            None => Some(HeaderValue::from_static("text/plain; charset=utf-8")),
        };
        Some(ActionSpec::Direct {
            status,
            body: Bytes::from(direct.body.clone()),
            content_type,
        })
    }

    fn matcher(&mut self, path: &str, m: &MatchFile) -> RouteMatch {
        let host = m.host.as_ref().and_then(|h| {
            HostMatch::parse(h)
                .map_err(|e| self.err(&format!("{path}.host"), e))
                .ok()
        });
        let path_match = m.path.as_ref().and_then(|p| match p {
            PathMatchFile::Exact(s) | PathMatchFile::Prefix(s) if !s.starts_with('/') => {
                self.err(
                    &format!("{path}.path"),
                    format!("a path must start with \"/\", got {s:?}"),
                );
                None
            }
            PathMatchFile::Exact(s) => Some(PathMatch::Exact(s.clone())),
            PathMatchFile::Prefix(s) => Some(PathMatch::Prefix(s.clone())),
            PathMatchFile::Regex(r) => anchored_regex(r)
                .map(PathMatch::Regex)
                .map_err(|e| self.err(&format!("{path}.path.regex"), e))
                .ok(),
        });
        let methods = m.method.as_ref().map(|ms| {
            ms.iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let upper = s.to_ascii_uppercase();
                    Method::from_bytes(upper.as_bytes())
                        .map_err(|_| {
                            self.err(
                                &format!("{path}.method[{i}]"),
                                format!("invalid method {s:?}"),
                            )
                        })
                        .ok()
                })
                .collect()
        });
        let mut headers = Vec::new();
        for (name, cond) in &m.headers {
            let at = format!("{path}.headers.{name}");
            let n = self.header_name(&at, name);
            let v = self.value_match(&at, cond);
            if let (Some(n), Some(v)) = (n, v) {
                headers.push((n, v));
            }
        }
        let mut query = Vec::new();
        for (name, cond) in &m.query {
            if let Some(v) = self.value_match(&format!("{path}.query.{name}"), cond) {
                query.push((name.clone(), v));
            }
        }
        RouteMatch {
            host,
            path: path_match,
            methods,
            headers,
            query,
        }
    }

    fn value_match(&mut self, path: &str, m: &ValueMatchFile) -> Option<ValueMatch> {
        Some(match m {
            ValueMatchFile::Exact(s) => ValueMatch::Exact(s.clone()),
            ValueMatchFile::Present(p) => ValueMatch::Present(*p),
            ValueMatchFile::Regex(r) => match anchored_regex(r) {
                Ok(re) => ValueMatch::Regex(re),
                Err(e) => {
                    self.err(&format!("{path}.regex"), e);
                    return None;
                }
            },
        })
    }

    fn edits(&mut self, path: &str, e: &HeaderEditsFile) -> HeaderEdits {
        let mut out = HeaderEdits::default();
        for (kind, map, list) in [("set", &e.set, &mut out.set), ("add", &e.add, &mut out.add)] {
            for (name, value) in map {
                let at = format!("{path}.{kind}.{name}");
                let n = self.header_name(&at, name);
                let v = self.header_value(&at, value);
                if let (Some(n), Some(v)) = (n, v) {
                    list.push((n, v));
                }
            }
        }
        for (i, name) in e.remove.iter().enumerate() {
            if let Some(n) = self.header_name(&format!("{path}.remove[{i}]"), name) {
                out.remove.push(n);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn opaque_port_lists_from_the_environment() {
        use super::opaque_ports_from;
        assert!(opaque_ports_from(None).unwrap().is_empty());
        assert!(opaque_ports_from(Some(" ")).unwrap().is_empty());
        let ports: Vec<u16> = opaque_ports_from(Some("5432, 4222,4222"))
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(ports, [4222, 5432]);
        for bad in ["0", "65536", "nats", "1;2"] {
            assert!(opaque_ports_from(Some(bad)).is_err(), "{bad}");
        }
    }
}
