//! Prometheus metrics. One registry owned by the runtime (never the global default). Label
//! handles are resolved when a config is compiled, so recording a request is a few atomic
//! adds: no lock, no label formatting, no allocation.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

pub mod openmetrics;
mod process;

use http::StatusCode;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Status codes with a pre-resolved counter; others take the slower labelled lookup.
const COMMON_CODES: [u16; 24] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413, 429,
    431, 500, 502, 503, 504,
];

/// Which listener a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Callers → local app.
    Inbound,
    /// Local app → other services.
    Outbound,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Outcome of one upstream attempt, the `result` label of `remora_upstream_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// Response headers arrived.
    Success,
    /// The connection could not be opened.
    ConnectFailure,
    /// The connection or stream failed after it was opened.
    Reset,
    /// No response headers within the timeout.
    Timeout,
}

impl AttemptResult {
    const ALL: [AttemptResult; 4] = [
        Self::Success,
        Self::ConnectFailure,
        Self::Reset,
        Self::Timeout,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::ConnectFailure => "connect-failure",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
        }
    }
}

/// The process's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Exemplars of the request duration histogram, for the OpenMetrics format.
    exemplars: Arc<openmetrics::Exemplars>,
    requests: IntCounterVec,
    duration: HistogramVec,
    attempts: IntCounterVec,
    connections_open: IntGaugeVec,
    connections: IntCounterVec,
    connection_errors: IntCounterVec,
    connections_parked: IntGaugeVec,
    reloads: IntCounterVec,
    last_reload_success: prometheus::Gauge,
    /// 1 when the last reload (or the start) loaded its file, 0 when it was refused.
    last_reload_ok: IntGauge,
    rate_limited: IntCounterVec,
    faults: IntCounterVec,
    cache_requests: IntCounterVec,
    cache_bytes: IntGaugeVec,
    cache_evictions: IntCounterVec,
    breaker_open: IntGaugeVec,
    breaker_overflows: IntCounterVec,
    endpoint_ejected: IntGaugeVec,
    outlier_ejections: IntCounterVec,
    retries: IntCounterVec,
    budget_exhausted: IntCounterVec,
    endpoint_healthy: IntGaugeVec,
    mirrors: IntCounterVec,
    detections: IntCounterVec,
    tcp_connections: IntCounterVec,
    tcp_open: IntGaugeVec,
    tcp_bytes: IntCounterVec,
    proxy_errors: IntCounterVec,
    /// Body bytes received from callers and sent to them, per request label set.
    body_bytes: [IntCounterVec; 2],
    grpc: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric (and the process collector) on a new registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "remora_requests_total",
                "Requests answered, by listener, route, service and status code.",
            ),
            &["direction", "route", "service", "code"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "remora_request_duration_seconds",
                "Time from request received to response headers sent.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["direction", "route", "service"],
        )
        .expect("valid metric");
        let attempts = IntCounterVec::new(
            Opts::new(
                "remora_upstream_attempts_total",
                "Requests sent to upstream endpoints, by outcome (connect-failure counts connect errors).",
            ),
            &["service", "result"],
        )
        .expect("valid metric");
        let connections = IntCounterVec::new(
            Opts::new(
                "remora_connections_total",
                "Downstream connections accepted by each data listener.",
            ),
            &["direction"],
        )
        .expect("valid metric");
        let connections_open = IntGaugeVec::new(
            Opts::new(
                "remora_connections_open",
                "Downstream connections open, by listener.",
            ),
            &["direction"],
        )
        .expect("valid metric");
        let connections_parked = IntGaugeVec::new(
            Opts::new(
                "remora_connections_parked",
                "Keep-alive connections idle between requests that gave their buffers back: HTTP/1.1 ones parked (no HTTP state held), HTTP/2 ones settled (no stream open, buffers freed).",
            ),
            &["direction"],
        )
        .expect("valid metric");
        let connection_errors = IntCounterVec::new(
            Opts::new(
                "remora_downstream_connection_errors_total",
                "Downstream connections that ended in a protocol error (malformed request, header block too large, reset).",
            ),
            &["direction"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "remora_build_info",
                "Always 1; the version label says which Remora runs.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let reloads = IntCounterVec::new(
            Opts::new(
                "remora_config_reloads_total",
                "Config reloads, by result (success, failure).",
            ),
            &["result"],
        )
        .expect("valid metric");
        // Prometheus's own name for this is prometheus_config_last_reload_successful.
        let last_reload_ok = IntGauge::new(
            "remora_config_last_reload_successful",
            "Whether the last config reload succeeded (1) or was refused (0).",
        )
        .expect("valid metric");
        let last_reload_success = prometheus::Gauge::new(
            "remora_config_last_reload_success_timestamp_seconds",
            "Unix time at which the config in force was loaded.",
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "remora_rate_limited_total",
                "Requests refused with 429 by a local rate limit, by listener.",
            ),
            &["direction"],
        )
        .expect("valid metric");
        let faults = IntCounterVec::new(
            Opts::new(
                "remora_faults_injected_total",
                "Faults injected by routes, by kind (delay, abort).",
            ),
            &["route", "kind"],
        )
        .expect("valid metric");
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "remora_cache_requests_total",
                "Requests to a caching route, by what the cache did (hit, miss, stale, revalidated, uncacheable, coalesced).",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let cache_bytes = IntGaugeVec::new(
            Opts::new("remora_cache_bytes", "Bytes a route's cache holds."),
            &["route"],
        )
        .expect("valid metric");
        let cache_evictions = IntCounterVec::new(
            Opts::new(
                "remora_cache_evictions_total",
                "Responses a route's cache dropped to stay within max_size.",
            ),
            &["route"],
        )
        .expect("valid metric");
        let breaker_open = IntGaugeVec::new(
            Opts::new(
                "remora_circuit_breaker_open",
                "1 while one of the service's circuit breaker limits is saturated.",
            ),
            &["service"],
        )
        .expect("valid metric");
        let breaker_overflows = IntCounterVec::new(
            Opts::new(
                "remora_circuit_breaker_overflows_total",
                "Requests refused with 503 overloaded, by service and limit.",
            ),
            &["service", "limit"],
        )
        .expect("valid metric");
        let endpoint_ejected = IntGaugeVec::new(
            Opts::new(
                "remora_endpoint_ejected",
                "1 while outlier detection keeps the endpoint out of rotation.",
            ),
            &["service", "endpoint"],
        )
        .expect("valid metric");
        let outlier_ejections = IntCounterVec::new(
            Opts::new(
                "remora_outlier_ejections_total",
                "Endpoints ejected by outlier detection.",
            ),
            &["service"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "remora_retries_total",
                "Retries made, by route and service.",
            ),
            &["route", "service"],
        )
        .expect("valid metric");
        let budget_exhausted = IntCounterVec::new(
            Opts::new(
                "remora_retry_budget_exhausted_total",
                "Retries not made because the service's retry budget was spent.",
            ),
            &["service"],
        )
        .expect("valid metric");
        let endpoint_healthy = IntGaugeVec::new(
            Opts::new(
                "remora_endpoint_healthy",
                "1 while active health checks pass (services with health_check only).",
            ),
            &["service", "endpoint"],
        )
        .expect("valid metric");
        let mirrors = IntCounterVec::new(
            Opts::new(
                "remora_mirror_requests_total",
                "Mirror copies by route and result (sent, failed, dropped).",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let detections = IntCounterVec::new(
            Opts::new(
                "remora_protocol_detections_total",
                "Accepted connections by the protocol detection found (http1, http2, tls, opaque, timeout).",
            ),
            &["direction", "protocol"],
        )
        .expect("valid metric");
        let tcp_connections = IntCounterVec::new(
            Opts::new(
                "remora_tcp_connections_total",
                "Opaque TCP connections proxied, by TCP route and service (\"\" for unmatched).",
            ),
            &["direction", "route", "service"],
        )
        .expect("valid metric");
        let tcp_open = IntGaugeVec::new(
            Opts::new(
                "remora_tcp_connections_open",
                "Opaque TCP connections being proxied now.",
            ),
            &["direction"],
        )
        .expect("valid metric");
        let tcp_bytes = IntCounterVec::new(
            Opts::new(
                "remora_tcp_bytes_total",
                "Bytes of opaque TCP proxied: sent to the upstream, received from it.",
            ),
            &["direction", "route", "service", "flow"],
        )
        .expect("valid metric");
        let proxy_errors = IntCounterVec::new(
            Opts::new(
                "remora_proxy_errors_total",
                "Requests and opaque TCP connections Remora refused or failed, by reason (for requests, the x-remora-error value).",
            ),
            &["direction", "route", "service", "reason"],
        )
        .expect("valid metric");
        let bytes_vec = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["direction", "route", "service"])
                .expect("valid metric")
        };
        let body_bytes = [
            bytes_vec(
                "remora_request_bytes_total",
                "Request body bytes received from callers, as they streamed.",
            ),
            bytes_vec(
                "remora_response_bytes_total",
                "Response body bytes sent to callers, as they streamed.",
            ),
        ];
        let grpc = IntCounterVec::new(
            Opts::new(
                "remora_grpc_responses_total",
                "gRPC responses by grpc-status (0-16; other: a code outside them; missing: none was sent).",
            ),
            &["direction", "route", "service", "grpc_status"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(grpc.clone()),
            Box::new(body_bytes[0].clone()),
            Box::new(body_bytes[1].clone()),
            Box::new(duration.clone()),
            Box::new(attempts.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_parked.clone()),
            Box::new(connections.clone()),
            Box::new(connection_errors.clone()),
            Box::new(build_info),
            Box::new(reloads.clone()),
            Box::new(last_reload_success.clone()),
            Box::new(last_reload_ok.clone()),
            Box::new(rate_limited.clone()),
            Box::new(faults.clone()),
            Box::new(cache_requests.clone()),
            Box::new(cache_bytes.clone()),
            Box::new(cache_evictions.clone()),
            Box::new(breaker_open.clone()),
            Box::new(breaker_overflows.clone()),
            Box::new(endpoint_ejected.clone()),
            Box::new(outlier_ejections.clone()),
            Box::new(retries.clone()),
            Box::new(budget_exhausted.clone()),
            Box::new(endpoint_healthy.clone()),
            Box::new(mirrors.clone()),
            Box::new(detections.clone()),
            Box::new(tcp_connections.clone()),
            Box::new(tcp_open.clone()),
            Box::new(tcp_bytes.clone()),
            Box::new(proxy_errors.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        registry
            .register(Box::new(process::Process::new()))
            .expect("process collector registers once");
        for d in [Direction::Inbound, Direction::Outbound] {
            connections_open.with_label_values(&[d.as_str()]);
            connections_parked.with_label_values(&[d.as_str()]);
            connections.with_label_values(&[d.as_str()]);
            rate_limited.with_label_values(&[d.as_str()]);
            connection_errors.with_label_values(&[d.as_str()]);
            tcp_open.with_label_values(&[d.as_str()]);
        }
        for r in ["success", "failure"] {
            reloads.with_label_values(&[r]);
        }
        Self {
            registry,
            exemplars: Default::default(),
            requests,
            duration,
            attempts,
            connections_open,
            connections_parked,
            connections,
            connection_errors,
            reloads,
            last_reload_success,
            last_reload_ok,
            rate_limited,
            faults,
            cache_requests,
            cache_bytes,
            cache_evictions,
            breaker_open,
            breaker_overflows,
            endpoint_ejected,
            outlier_ejections,
            retries,
            budget_exhausted,
            endpoint_healthy,
            mirrors,
            detections,
            tcp_connections,
            tcp_open,
            tcp_bytes,
            proxy_errors,
            body_bytes,
            grpc,
        }
    }

    /// The counter of connections on `direction` whose detection found `protocol`.
    pub fn detections(&self, direction: Direction, protocol: &str) -> IntCounter {
        self.detections
            .with_label_values(&[direction.as_str(), protocol])
    }

    /// Handles for opaque TCP on `direction` through `route` to `service` ("" when none).
    pub fn tcp(&self, direction: Direction, route: &str, service: &str) -> TcpMetrics {
        let labels = [direction.as_str(), route, service];
        let bytes = |flow| {
            self.tcp_bytes
                .with_label_values(&[labels[0], labels[1], labels[2], flow])
        };
        TcpMetrics(Arc::new(TcpInner {
            connections: self.tcp_connections.with_label_values(&labels),
            open: self.tcp_open.with_label_values(&[direction.as_str()]),
            sent: bytes("sent"),
            received: bytes("received"),
            errors: self.proxy_errors.clone(),
            labels: labels.map(str::to_owned),
        }))
    }

    /// Registers a collector another module owns (TLS, authorization).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        self.registry
            .register(collector)
            .expect("metric names are unique");
    }

    /// Handles for requests on `direction` answered by `route` via `service` ("" when none).
    pub fn request(&self, direction: Direction, route: &str, service: &str) -> RequestMetrics {
        let labels = [direction.as_str(), route, service];
        RequestMetrics(Arc::new(RequestInner {
            duration: OnceLock::new(),
            durations: self.duration.clone(),
            codes: Default::default(),
            extra: Default::default(),
            vec: self.requests.clone(),
            errors: self.proxy_errors.clone(),
            bytes: Default::default(),
            bytes_vecs: self.body_bytes.clone(),
            grpc: self.grpc.clone(),
            exemplars: self.exemplars.clone(),
            slots: OnceLock::new(),
            labels: labels.map(str::to_owned),
        }))
    }

    /// Handles for upstream attempts to `service`.
    pub fn upstream(&self, service: &str) -> UpstreamMetrics {
        UpstreamMetrics(Arc::new(UpstreamInner {
            vec: self.attempts.clone(),
            service: service.into(),
            results: Default::default(),
        }))
    }

    /// The accepted-connections counter of a listener.
    pub fn connections_accepted(&self, direction: Direction) -> IntCounter {
        self.connections.with_label_values(&[direction.as_str()])
    }

    /// The open-connections gauge of a listener.
    pub fn connections_open(&self, direction: Direction) -> IntGauge {
        self.connections_open
            .with_label_values(&[direction.as_str()])
    }

    /// The parked-connections gauge of a listener.
    pub fn connections_parked(&self, direction: Direction) -> IntGauge {
        self.connections_parked
            .with_label_values(&[direction.as_str()])
    }

    /// The connection-error counter of a listener.
    pub fn connection_errors(&self, direction: Direction) -> IntCounter {
        self.connection_errors
            .with_label_values(&[direction.as_str()])
    }

    /// The rate-limited counter of a listener.
    pub fn rate_limited(&self, direction: Direction) -> IntCounter {
        self.rate_limited.with_label_values(&[direction.as_str()])
    }

    /// Circuit breaker handles for a service.
    pub fn breaker(&self, service: &str) -> BreakerMetrics {
        BreakerMetrics(Arc::new(BreakerInner {
            open_vec: self.breaker_open.clone(),
            overflow_vec: self.breaker_overflows.clone(),
            service: service.into(),
            open: OnceLock::new(),
            overflows: Default::default(),
        }))
    }

    /// Mirror counters of a route: sent, failed, dropped.
    pub fn mirror(&self, route: &str) -> [IntCounter; 3] {
        ["sent", "failed", "dropped"].map(|r| self.mirrors.with_label_values(&[route, r]))
    }

    /// The per-endpoint health gauges (labels: service, endpoint).
    pub fn endpoint_healthy(&self) -> IntGaugeVec {
        self.endpoint_healthy.clone()
    }

    /// The retry counter of a route and service.
    pub fn retries(&self, route: &str, service: &str) -> LazyCounter {
        LazyCounter::new(&self.retries, &[route, service])
    }

    /// The budget-exhausted counter of a service.
    pub fn budget_exhausted(&self, service: &str) -> LazyCounter {
        LazyCounter::new(&self.budget_exhausted, &[service])
    }

    /// The per-endpoint ejection gauges (labels: service, endpoint).
    pub fn endpoint_ejected(&self) -> IntGaugeVec {
        self.endpoint_ejected.clone()
    }

    /// The ejection counter of a service.
    pub fn outlier_ejections(&self, service: &str) -> LazyCounter {
        LazyCounter::new(&self.outlier_ejections, &[service])
    }

    /// Fault counters for a route.
    pub fn faults(&self, route: &str) -> FaultMetrics {
        FaultMetrics {
            delay: LazyCounter::new(&self.faults, &[route, "delay"]),
            abort: LazyCounter::new(&self.faults, &[route, "abort"]),
        }
    }

    /// Cache counters for a route.
    pub fn cache(&self, route: &str) -> CacheMetrics {
        let result = |r: &str| self.cache_requests.with_label_values(&[route, r]);
        CacheMetrics {
            hit: result("hit"),
            miss: result("miss"),
            stale: result("stale"),
            revalidated: result("revalidated"),
            uncacheable: result("uncacheable"),
            coalesced: result("coalesced"),
            bytes: self.cache_bytes.with_label_values(&[route]),
            evictions: self.cache_evictions.with_label_values(&[route]),
        }
    }

    /// Counts a reload; a success also stamps the time the config in force was loaded.
    pub fn reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
        if success {
            self.config_loaded();
        } else {
            self.last_reload_ok.set(0);
        }
    }

    /// Stamps the time the config in force was loaded (at start and on each good reload).
    pub fn config_loaded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_reload_success.set(now);
        self.last_reload_ok.set(1);
    }

    /// The registry in OpenMetrics text format, with exemplars.
    pub fn encode_openmetrics(&self) -> String {
        openmetrics::encode(&self.registry.gather(), &self.exemplars)
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        TextEncoder::new()
            .encode(&families, &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("text format is UTF-8")
    }
}

/// Pre-resolved request metrics for one (direction, route, service).
#[derive(Debug, Clone)]
pub struct RequestMetrics(Arc<RequestInner>);

#[derive(Debug)]
struct RequestInner {
    /// Created at the first request: a route no request took has no series to keep.
    duration: OnceLock<Histogram>,
    durations: HistogramVec,
    codes: [OnceLock<IntCounter>; COMMON_CODES.len()],
    /// Uncommon codes, each claiming a slot on first use (0 = free).
    extra: [(AtomicU16, OnceLock<IntCounter>); EXTRA_CODES],
    vec: IntCounterVec,
    /// `remora_proxy_errors_total`, looked up per error: errors are the uncommon path.
    errors: IntCounterVec,
    /// Request and response body bytes, created when first counted.
    bytes: [OnceLock<IntCounter>; 2],
    bytes_vecs: [IntCounterVec; 2],
    grpc: IntCounterVec,
    exemplars: Arc<openmetrics::Exemplars>,
    /// This series' exemplar slots, found at the first exemplar.
    slots: OnceLock<Arc<openmetrics::Slots>>,
    labels: [String; 3],
}

/// Uncommon status codes cached per label set before the labelled lookup is used.
const EXTRA_CODES: usize = 8;

impl RequestMetrics {
    /// Whether both are the same handles (one kept across a reload).
    pub fn same_series(&self, other: &RequestMetrics) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Records one answered request.
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        let inner = &*self.0;
        inner
            .duration
            .get_or_init(|| {
                let [d, r, s] = &inner.labels;
                inner
                    .durations
                    .with_label_values(&[d.as_str(), r.as_str(), s.as_str()])
            })
            .observe(elapsed.as_secs_f64());
        let code = status.as_u16();
        match COMMON_CODES.binary_search(&code) {
            Ok(i) => inner.codes[i].get_or_init(|| inner.counter(code)).inc(),
            Err(_) => inner.extra_counter(code).inc(),
        }
    }
}

/// Which way a body went, for [`RequestMetrics::bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// A request body, from the caller.
    Request = 0,
    /// A response body, to the caller.
    Response = 1,
}

impl RequestMetrics {
    /// The counter of body bytes flowing `flow` for this label set.
    pub fn bytes(&self, flow: Flow) -> IntCounter {
        let inner = &*self.0;
        let i = flow as usize;
        inner.bytes[i]
            .get_or_init(|| {
                let [d, r, s] = &inner.labels;
                inner.bytes_vecs[i].with_label_values(&[d.as_str(), r.as_str(), s.as_str()])
            })
            .clone()
    }

    /// Keeps a sampled request's trace as the exemplar of the duration bucket it fell in,
    /// timestamped `unix_nanos` (when it ended).
    pub fn exemplar(&self, elapsed: Duration, trace_id: [u8; 16], unix_nanos: u64) {
        let inner = &*self.0;
        let slots = inner.slots.get_or_init(|| {
            let [d, r, s] = &inner.labels;
            inner.exemplars.slots(
                "remora_request_duration_seconds",
                &[d.as_str(), r.as_str(), s.as_str()],
                LATENCY_BUCKETS,
            )
        });
        let timestamp = unix_nanos as f64 / 1e9;
        slots.record(openmetrics::Exemplar {
            trace_id,
            value: elapsed.as_secs_f64(),
            timestamp,
        });
    }

    /// Counts a gRPC response by its `grpc-status` value (`None`: it sent none).
    pub fn grpc(&self, status: Option<&[u8]>) {
        const CODES: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        let label = match status {
            None => "missing",
            Some(v) => CODES
                .iter()
                .find(|c| c.as_bytes() == v.trim_ascii())
                .copied()
                .unwrap_or("other"),
        };
        let [d, r, s] = &self.0.labels;
        self.0
            .grpc
            .with_label_values(&[d.as_str(), r.as_str(), s.as_str(), label])
            .inc();
    }

    /// Counts a request Remora refused or failed itself, under its `x-remora-error` reason.
    pub fn error(&self, reason: &str) {
        let [d, r, s] = &self.0.labels;
        self.0
            .errors
            .with_label_values(&[d.as_str(), r.as_str(), s.as_str(), reason])
            .inc();
    }
}

impl RequestInner {
    /// The counter of an uncommon code: a cached slot when one is (or can be) claimed, else
    /// the labelled lookup.
    fn extra_counter(&self, code: u16) -> IntCounter {
        for (slot, counter) in &self.extra {
            let claimed = match slot.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => true,
                Err(current) => current == code,
            };
            if claimed {
                return counter.get_or_init(|| self.counter(code)).clone();
            }
        }
        self.counter(code)
    }

    fn counter(&self, code: u16) -> IntCounter {
        let [d, r, s] = &self.labels;
        let code = code_str(code);
        self.vec
            .with_label_values(&[d.as_str(), r.as_str(), s.as_str(), code.as_str()])
    }
}

/// A status code as a three-digit string, without allocating.
struct CodeStr([u8; 3]);

impl CodeStr {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("000")
    }
}

fn code_str(code: u16) -> CodeStr {
    let c = code.min(999);
    CodeStr([
        b'0' + (c / 100) as u8,
        b'0' + (c / 10 % 10) as u8,
        b'0' + (c % 10) as u8,
    ])
}

/// Metric handles of one service's breaker, created when it first refuses a request: a
/// service whose breaker never tripped has no series to keep.
#[derive(Debug, Clone)]
pub struct BreakerMetrics(Arc<BreakerInner>);

#[derive(Debug)]
struct BreakerInner {
    open_vec: IntGaugeVec,
    overflow_vec: IntCounterVec,
    service: Box<str>,
    open: OnceLock<IntGauge>,
    /// `max_requests`, `max_pending_requests`.
    overflows: [OnceLock<IntCounter>; 2],
}

/// The limit a breaker refused a request over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerLimit {
    /// `max_requests`.
    Requests,
    /// `max_pending_requests`.
    Pending,
}

impl BreakerMetrics {
    /// Counts a request refused over `limit`, and marks the breaker open.
    pub fn overflow(&self, limit: BreakerLimit) {
        let inner = &*self.0;
        let name = match limit {
            BreakerLimit::Requests => "max_requests",
            BreakerLimit::Pending => "max_pending_requests",
        };
        inner.overflows[limit as usize]
            .get_or_init(|| {
                inner
                    .overflow_vec
                    .with_label_values(&[&*inner.service, name])
            })
            .inc();
        self.set_open(true);
    }

    /// Marks the breaker open (a limit is saturated) or closed. Closing one that never
    /// opened creates no series.
    pub fn set_open(&self, open: bool) {
        let inner = &*self.0;
        let gauge = if open {
            inner
                .open
                .get_or_init(|| inner.open_vec.with_label_values(&[&*inner.service]))
        } else {
            match inner.open.get() {
                Some(g) => g,
                None => return,
            }
        };
        gauge.set(i64::from(open));
    }

    /// Requests refused over `limit` so far.
    pub fn overflows(&self, limit: BreakerLimit) -> u64 {
        self.0.overflows[limit as usize]
            .get()
            .map_or(0, |c| c.get())
    }

    /// Whether the breaker is marked open.
    pub fn is_open(&self) -> bool {
        self.0.open.get().is_some_and(|g| g.get() == 1)
    }
}

/// Pre-resolved cache series for one route.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    /// Answered from the cache, fresh.
    pub hit: IntCounter,
    /// Not in the cache (or not usable): forwarded.
    pub miss: IntCounter,
    /// Answered from the cache, stale (as the request or the origin allowed).
    pub stale: IntCounter,
    /// Checked with the origin, which said the stored response is still good (304).
    pub revalidated: IntCounter,
    /// Forwarded without the cache: a method or request the cache does not answer.
    pub uncacheable: IntCounter,
    /// Waited for another request's fetch of the same response.
    pub coalesced: IntCounter,
    /// Bytes held.
    pub bytes: IntGauge,
    /// Responses evicted.
    pub evictions: IntCounter,
}

/// Fault counters for one route.
#[derive(Debug, Clone)]
pub struct FaultMetrics {
    /// Requests delayed.
    pub delay: LazyCounter,
    /// Requests aborted.
    pub abort: LazyCounter,
}

/// A counter whose series is created at its first count: a route or service that never
/// retries, faults or ejects costs no series, no label strings and no registry lookup,
/// at start or at a reload (a fleet's control file names thousands).
#[derive(Clone)]
pub struct LazyCounter(Arc<LazyInner>);

struct LazyInner {
    /// The family and the labels to create the series with; none for one made already.
    vec: Option<(IntCounterVec, Box<[Box<str>]>)>,
    counter: OnceLock<IntCounter>,
}

impl LazyCounter {
    fn new(vec: &IntCounterVec, labels: &[&str]) -> Self {
        LazyCounter(Arc::new(LazyInner {
            vec: Some((vec.clone(), labels.iter().map(|&l| l.into()).collect())),
            counter: OnceLock::new(),
        }))
    }

    /// Counts one.
    pub fn inc(&self) {
        self.counter().inc();
    }

    /// The series, created now if no count made it before.
    pub fn counter(&self) -> &IntCounter {
        self.0.counter.get_or_init(|| {
            let (vec, labels) = self.0.vec.as_ref().expect("a lazy counter has its family");
            let labels: Vec<&str> = labels.iter().map(|l| &**l).collect();
            vec.with_label_values(&labels)
        })
    }
}

impl From<IntCounter> for LazyCounter {
    /// A counter that exists already (tests count in one of their own).
    fn from(counter: IntCounter) -> Self {
        LazyCounter(Arc::new(LazyInner {
            vec: None,
            counter: counter.into(),
        }))
    }
}

impl fmt::Debug for LazyCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels = self.0.vec.as_ref().map(|(_, l)| l);
        f.debug_struct("LazyCounter")
            .field("labels", &labels)
            .finish()
    }
}

/// Attempt counters for one service, each created at its first attempt.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics(Arc<UpstreamInner>);

#[derive(Debug)]
struct UpstreamInner {
    vec: IntCounterVec,
    service: Box<str>,
    results: [OnceLock<IntCounter>; AttemptResult::ALL.len()],
}

impl UpstreamMetrics {
    /// Counts one attempt.
    pub fn attempt(&self, result: AttemptResult) {
        let inner = &*self.0;
        inner.results[result as usize]
            .get_or_init(|| {
                inner
                    .vec
                    .with_label_values(&[&*inner.service, result.as_str()])
            })
            .inc();
    }
}

/// Handles for one TCP route's (or unmatched TCP's) connections.
#[derive(Debug, Clone)]
pub struct TcpMetrics(Arc<TcpInner>);

#[derive(Debug)]
struct TcpInner {
    connections: IntCounter,
    open: IntGauge,
    sent: IntCounter,
    received: IntCounter,
    errors: IntCounterVec,
    labels: [String; 3],
}

impl TcpMetrics {
    /// Counts a new connection as opened; the guard counts it closed when dropped.
    pub fn opened(&self) -> TcpOpen {
        self.0.connections.inc();
        self.0.open.inc();
        TcpOpen(self.0.open.clone())
    }

    /// Adds bytes copied: `sent` to the upstream, `received` from it.
    pub fn bytes(&self, sent: u64, received: u64) {
        self.0.sent.inc_by(sent);
        self.0.received.inc_by(received);
    }

    /// Counts a failed connection under `reason`.
    pub fn failed(&self, reason: &str) {
        let [d, route, service] = &self.0.labels;
        self.0
            .errors
            .with_label_values(&[d.as_str(), route, service, reason])
            .inc();
    }
}

/// Holds a connection in `remora_tcp_connections_open`.
#[derive(Debug)]
pub struct TcpOpen(IntGauge);

impl Drop for TcpOpen {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lazy_counter_is_a_series_only_once_it_counts() {
        let m = Metrics::new();
        let retries = m.retries("quiet", "svc");
        let faults = m.faults("quiet");
        assert!(!m.encode().contains("route=\"quiet\""));
        retries.inc();
        retries.clone().inc();
        faults.abort.inc();
        let text = m.encode();
        assert!(text.contains("remora_retries_total{route=\"quiet\",service=\"svc\"} 2"));
        assert!(text.contains("kind=\"abort\""), "{text}");
        assert!(!text.contains("kind=\"delay\""), "{text}");
    }

    #[test]
    fn records_codes_and_latency() {
        let m = Metrics::new();
        let r = m.request(Direction::Outbound, "r1", "svc");
        r.record(StatusCode::OK, Duration::from_millis(2));
        r.record(StatusCode::OK, Duration::from_millis(2));
        r.record(StatusCode::IM_A_TEAPOT, Duration::from_millis(2));
        // More uncommon codes than cached slots still count correctly.
        for code in 450..470 {
            r.record(
                StatusCode::from_u16(code).unwrap(),
                Duration::from_millis(1),
            );
            r.record(
                StatusCode::from_u16(code).unwrap(),
                Duration::from_millis(1),
            );
        }
        let text = m.encode();
        assert!(text.contains(
            r#"remora_requests_total{code="200",direction="outbound",route="r1",service="svc"} 2"#
        ));
        assert!(text.contains(
            r#"remora_requests_total{code="418",direction="outbound",route="r1",service="svc"} 1"#
        ));
        for code in 450..470 {
            let line = format!(
                r#"remora_requests_total{{code="{code}",direction="outbound",route="r1",service="svc"}} 2"#
            );
            assert!(text.contains(&line), "{line}");
        }
        assert!(text.contains(r#"remora_request_duration_seconds_count{direction="outbound",route="r1",service="svc"} 43"#));
        assert!(text.contains(r#"remora_build_info{version=""#));
        assert!(
            COMMON_CODES.windows(2).all(|w| w[0] < w[1]),
            "binary search needs sorted codes"
        );
    }
}
