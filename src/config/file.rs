//! The serde shape of the control file: structs that mirror the YAML exactly and reject
//! unknown fields. Defaults are filled in here, so serializing a parsed file shows the
//! effective config (served on the admin listener's `/config`). Runtime code never sees these
//! types; `compile` turns them into validated runtime settings.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{duration::HumanDuration, size::ByteSize};

/// A part of the file that is read on its own (a section, a route, a service), so that its
/// problems do not stop the rest of the file from being checked.
#[derive(Debug, Clone)]
pub enum Lenient<T> {
    /// The part is whole.
    Ok(T),
    /// The part has problems, already reported with their places.
    Failed,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Part<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Part<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a part of the control file")
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Lenient<T>, D::Error> {
                // The config deserializer records a problem where it arises, so the part
                // can fail alone.
                Ok(T::deserialize(d).map_or(Lenient::Failed, Lenient::Ok))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Lenient<T>, E> {
                Ok(Lenient::Failed)
            }
        }
        d.deserialize_newtype_struct(super::yaml::LENIENT, Part(std::marker::PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for Lenient<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
    fn inline_schema() -> bool {
        T::inline_schema()
    }
}

impl<T: Serialize> Serialize for Lenient<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Lenient::Ok(t) => t.serialize(s),
            Lenient::Failed => s.serialize_unit(),
        }
    }
}

/// The whole control file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Format version of the file. Must be 1.
    #[schemars(extend("const" = 1))]
    pub version: u32,
    /// The admin listener. Default: listen on 0.0.0.0:15090.
    #[serde(default)]
    pub admin: Option<Lenient<AdminFile>>,
    /// Protocol limits applied by both data listeners.
    #[serde(default)]
    pub limits: Option<Lenient<LimitsFile>>,
    /// How the process stops on SIGTERM / SIGINT.
    #[serde(default)]
    pub shutdown: Option<Lenient<ShutdownFile>>,
    /// Logging.
    #[serde(default)]
    pub log: Option<Lenient<LogFile>>,
    /// Distributed tracing: trace context, spans and their export. Absent: no spans, and
    /// trace headers pass through untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Lenient<TracingFile>>,
    /// This workload's mTLS identity. Needed only when TLS is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Lenient<IdentityFile>>,
    /// The inbound listener (callers → local app). Absent: no inbound listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<Lenient<InboundFile>>,
    /// The outbound listener (local app → other services). Absent: no outbound listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<Lenient<OutboundFile>>,
    /// Upstream services by name, referenced by routes.
    #[serde(default)]
    pub services: BTreeMap<String, Lenient<ServiceFile>>,
}

/// `admin:`: the admin listener (`/metrics`, `/ready`, `/live`, `/config`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Address to listen on. Default: `0.0.0.0:15090`.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Whether callers that are not on loopback may use the control endpoints (`/reload`,
    /// `/config`, `/debug/route`). Default: false; `/metrics`, `/ready` and `/live` are open
    /// to every caller either way.
    #[serde(default)]
    pub remote_control: bool,
}

impl Default for AdminFile {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            remote_control: false,
        }
    }
}

fn default_admin_listen() -> String {
    "0.0.0.0:15090".into()
}

/// `limits:`: protocol limits for the data listeners.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest request header block, in bytes; larger gets 431. Default: 65536.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in a request (HTTP/1.1 and HTTP/2); more gets 431. Default: 100.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Inbound request headers with `_` in their names: `allow` (those aliasing `x-remora-*`
    /// are dropped all the same), `drop` or `reject` (400). Default: `allow`.
    #[serde(default)]
    pub headers_with_underscores: UnderscoresFile,
    /// Time a client has to send a complete request header block. Default: 10s.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// Most concurrent downstream connections per listener; further clients wait in the
    /// accept queue. Default: 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A downstream connection with no request in flight is closed after this long.
    /// Default: 5m.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Time protocol detection waits for a new connection's first bytes; after it, the
    /// connection is proxied as opaque TCP (server-first protocols wait this long once).
    /// Default: 1s.
    #[serde(default = "default_detect_timeout")]
    pub detect_timeout: HumanDuration,
    /// An opaque TCP connection with no bytes either way is closed after this long.
    /// Default: 1h.
    #[serde(default = "default_tcp_idle_timeout")]
    pub tcp_idle_timeout: HumanDuration,
    /// Whether request paths are normalized (dot segments, unreserved escapes, backslashes)
    /// before routing, authorization and forwarding. Default: true.
    #[serde(default = "default_true")]
    pub normalize_path: bool,
    /// Whether `//` in a path becomes `/`. Default: false.
    #[serde(default)]
    pub merge_slashes: bool,
    /// `reject` (400), `keep` or `unescape` an escaped slash (`%2F`, `%5C`) in a path.
    /// Default: `reject`.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashesFile,
}

/// `limits.headers_with_underscores`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoresFile {
    /// Forwarded (aliases of `x-remora-*` dropped).
    #[default]
    Allow,
    /// Dropped.
    Drop,
    /// 400 `malformed-request`.
    Reject,
}

/// `limits.escaped_slashes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashesFile {
    /// 400 `malformed-request`.
    #[default]
    Reject,
    /// Forwarded as they are.
    Keep,
    /// Decoded into `/`.
    Unescape,
}

fn default_true() -> bool {
    true
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            headers_with_underscores: UnderscoresFile::Allow,
            header_read_timeout: default_header_read_timeout(),
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            detect_timeout: default_detect_timeout(),
            tcp_idle_timeout: default_tcp_idle_timeout(),
            normalize_path: true,
            merge_slashes: false,
            escaped_slashes: EscapedSlashesFile::Reject,
        }
    }
}

fn default_detect_timeout() -> HumanDuration {
    HumanDuration::secs(1)
}
fn default_tcp_idle_timeout() -> HumanDuration {
    HumanDuration::secs(3600)
}

fn default_max_header_bytes() -> usize {
    65536
}
fn default_max_headers() -> usize {
    100
}
fn default_header_read_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration::secs(300)
}

/// `shutdown:`: graceful stop.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShutdownFile {
    /// After SIGTERM, keep accepting for this long (with `/ready` already 503). Default: 0s.
    #[serde(default)]
    pub grace: HumanDuration,
    /// Then wait at most this long for in-flight requests. Default: 30s.
    #[serde(default = "default_drain")]
    pub drain_timeout: HumanDuration,
}

impl Default for ShutdownFile {
    fn default() -> Self {
        Self {
            grace: HumanDuration::default(),
            drain_timeout: default_drain(),
        }
    }
}

fn default_drain() -> HumanDuration {
    HumanDuration::secs(30)
}

/// `tracing:`: spans exported over OTLP/HTTP.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    /// The collector's OTLP/HTTP URL, `http://host[:port][/path]`; port 4318 and path
    /// `/v1/traces` when left out.
    pub otlp_endpoint: String,
    /// Percent of new traces (requests that arrive without a sampling decision) sampled,
    /// 0 to 100; a caller's decision is always kept. Default: 1.
    #[serde(default = "default_sample_percent")]
    pub sample_percent: f64,
    /// The `service.name` of this sidecar's spans. Default: `remora`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Finished spans waiting for export at most; more are dropped and counted. Default: 2048.
    #[serde(default = "default_span_queue")]
    pub max_queued_spans: usize,
}

fn default_sample_percent() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "remora".into()
}

fn default_span_queue() -> usize {
    2048
}

/// `log:`: logging.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// A `tracing` filter (`info`, `remora=debug`); `RUST_LOG` overrides it. Default: `info`.
    #[serde(default = "default_level")]
    pub level: String,
    /// `json` (one object per line) or `text`. Default: `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// Log one JSON line per request (target `remora::access`). Default: false.
    #[serde(default)]
    pub access_log: bool,
}

impl Default for LogFile {
    fn default() -> Self {
        Self {
            level: default_level(),
            format: LogFormat::default(),
            access_log: false,
        }
    }
}

fn default_level() -> String {
    "info".into()
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

/// `identity:`: PEM files, watched and rotated live. Relative paths are relative to the
/// control file's directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// CA certificates that peers' certificates must chain to.
    pub trust_anchors: String,
    /// This workload's certificate chain; its URI SAN is the SPIFFE ID.
    pub certificate: String,
    /// The certificate's private key.
    pub private_key: String,
}

/// `inbound.tls`: what the inbound listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InboundTls {
    /// mTLS only: TLS with a client certificate from the trust anchors.
    Strict,
    /// mTLS, and plaintext on the same port.
    Permissive,
    /// Plaintext only.
    Disabled,
}

/// One rule of `inbound.authorize`: a request is allowed when the caller, its path and its
/// method all match. A rule must name callers (`from`), allow unauthenticated ones, or both.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRuleFile {
    /// Name in `remora_authz_allowed_total{rule}` and logs. Default: `rule-N` (1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Caller SPIFFE IDs: exact, `spiffe://domain/prefix/*`, or `*` for any authenticated
    /// caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    /// Match every caller, including those without an identity (plaintext callers in
    /// `permissive` or `disabled`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unauthenticated: bool,
    /// Paths: exact, or `/prefix/*` (the prefix itself and everything under it). Absent: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Methods. Absent: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// `tls:` of a service: originate mTLS and require the peer's identity.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceTlsFile {
    /// The SPIFFE ID the service's endpoints must present.
    pub identity: String,
}

/// `inbound:`: callers reach the local app through this listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InboundFile {
    /// Address to listen on. Default: `0.0.0.0:15006`.
    #[serde(default = "default_inbound_listen")]
    pub listen: String,
    /// The local app's address. Default: `127.0.0.1:8080`.
    #[serde(default = "default_app")]
    pub app: String,
    /// Protocol spoken to the app: `http1`, `http2` or `auto` (the caller's). Default: `auto`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Time the app has to answer a request with response headers. Default: 30s.
    #[serde(default = "default_inbound_timeout")]
    pub timeout: HumanDuration,
    /// Time to open a connection to the app. Default: 1s.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Idle pooled connections to the app are closed after this long. Default: 60s.
    #[serde(default = "default_pool_idle")]
    pub idle_timeout: HumanDuration,
    /// Local rate limit for all callers together: over it, 429 with `retry-after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitFile>,
    /// `strict`, `permissive` or `disabled`. Default: `permissive` when `identity` is
    /// configured, `disabled` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<InboundTls>,
    /// Authorization rules, first match allows; when there are rules and none matches, 403.
    /// Absent: every caller is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorize: Vec<AuthorizeRuleFile>,
    /// Destination ports proxied as opaque TCP without protocol detection (no delay for
    /// server-first protocols).
    #[serde(default)]
    pub opaque_ports: Vec<u16>,
}

fn default_inbound_listen() -> String {
    "0.0.0.0:15006".into()
}
fn default_app() -> String {
    "127.0.0.1:8080".into()
}
fn default_inbound_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}

/// `outbound:`: the local app reaches other services through this listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboundFile {
    /// Address to listen on. Default: `127.0.0.1:15001`.
    #[serde(default = "default_outbound_listen")]
    pub listen: String,
    /// What happens to a request no route matches. Default: `passthrough`.
    #[serde(default)]
    pub unmatched: Unmatched,
    /// Routes, tried in order; the first match wins.
    #[serde(default)]
    pub routes: Vec<Lenient<RouteFile>>,
    /// Original destination ports proxied as opaque TCP without protocol detection.
    #[serde(default)]
    pub opaque_ports: Vec<u16>,
    /// Routes for opaque TCP, tried in order; unmatched TCP goes to its original destination.
    #[serde(default)]
    pub tcp_routes: Vec<Lenient<TcpRouteFile>>,
}

/// One of `outbound.tcp_routes`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpRouteFile {
    /// Name, for metrics and logs.
    pub name: String,
    /// Which connections it takes, by original destination.
    #[serde(rename = "match")]
    pub matches: TcpMatchFile,
    /// The service whose endpoints the connections are balanced over.
    pub service: String,
}

/// `tcp_routes[].match`: at least one condition.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpMatchFile {
    /// The original destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The original destination's address range (`10.96.0.0/12`, `fd00::/8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

fn default_outbound_listen() -> String {
    "127.0.0.1:15001".into()
}

/// `outbound.unmatched`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Forward to the request's own authority (`Host` or absolute URI), resolved by DNS.
    #[default]
    Passthrough,
    /// Answer 404 with `x-remora-error: no-route`.
    Reject,
}

/// One entry of `outbound.routes`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Unique name, used in metrics, logs and `explain`.
    pub name: String,
    /// What requests this route takes. Empty: every request.
    #[serde(default, rename = "match")]
    pub matches: MatchFile,
    /// Weighted split over services (one of `backends`, `redirect`, `direct_response`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<BackendFile>>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectFile>,
    /// Answer with a fixed response instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponseFile>,
    /// Time the upstream has to answer with response headers. Default: 15s.
    #[serde(default = "default_route_timeout")]
    pub timeout: HumanDuration,
    /// Edits to the request before it is forwarded.
    #[serde(default, skip_serializing_if = "HeaderEditsFile::is_empty")]
    pub request_headers: HeaderEditsFile,
    /// Edits to the response before it is returned.
    #[serde(default, skip_serializing_if = "HeaderEditsFile::is_empty")]
    pub response_headers: HeaderEditsFile,
    /// Path rewrite applied when forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteFile>,
    /// Local rate limit for this route: over it, 429 with `retry-after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitFile>,
    /// A shared response cache for this route (RFC 9111), in memory and bounded by size.
    /// `cache: {}` takes the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheFile>,
    /// Faults to inject, for chaos testing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultFile>,
    /// Retries of failed tries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryFile>,
    /// Copy a share of requests to a shadow service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorFile>,
}

/// `mirror:` of a route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorFile {
    /// The shadow service (under `services:`).
    pub service: String,
    /// Share of requests copied, 0 to 100. Default: 100.
    #[serde(default = "default_mirror_percent")]
    pub percent: f64,
}

fn default_mirror_percent() -> f64 {
    100.0
}

/// `retry:` of a route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Tries in all, the first included (`3` = at most 2 retries). Default: 2.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Limit for each try; the route `timeout` still bounds them all. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<HumanDuration>,
    /// Outcomes retried. Default: `[gateway-error, connect-failure, reset]`.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOnFile>,
    /// Exponential backoff with full jitter. Default: base 25ms, max 250ms.
    #[serde(default)]
    pub backoff: BackoffFile,
    /// Retry POST and PATCH even after they reached the upstream. Default: false.
    #[serde(default)]
    pub non_idempotent: bool,
}

fn default_attempts() -> u32 {
    2
}

fn default_retry_on() -> Vec<RetryOnFile> {
    ["gateway-error", "connect-failure", "reset"]
        .into_iter()
        .map(|s| RetryOnFile::Named(s.to_owned()))
        .collect()
}

/// One retry condition: a name (`5xx`, `gateway-error`, `connect-failure`, `reset`,
/// `cancelled`, `deadline-exceeded`, `resource-exhausted`, `unavailable`) or
/// `{ retriable-status: [409] }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOnFile {
    /// A named condition.
    Named(String),
    /// These statuses.
    Statuses(Vec<u16>),
}

impl<'de> Deserialize<'de> for RetryOnFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Condition;
        impl<'de> serde::de::Visitor<'de> for Condition {
            type Value = RetryOnFile;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a retry condition: a name (5xx, gateway-error, connect-failure, reset, cancelled, deadline-exceeded, resource-exhausted, unavailable) or { retriable-status: [CODES] }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RetryOnFile, E> {
                Ok(RetryOnFile::Named(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RetryOnFile, A::Error> {
                use serde::de::Error;
                match map.next_key::<String>()?.as_deref() {
                    Some("retriable-status") => {}
                    Some(other) => {
                        return Err(A::Error::unknown_field(other, &["retriable-status"]))
                    }
                    None => return Err(A::Error::missing_field("retriable-status")),
                }
                let codes = map.next_value::<Vec<u16>>()?;
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(A::Error::unknown_field(&extra, &[]));
                }
                Ok(RetryOnFile::Statuses(codes))
            }
        }
        d.deserialize_any(Condition)
    }
}

impl JsonSchema for RetryOnFile {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RetryOn".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A retry condition: a name, or { retriable-status: [CODES] }.",
            "oneOf": [
                { "enum": RETRY_NAMES },
                {
                    "type": "object",
                    "properties": {
                        "retriable-status": {
                            "type": "array",
                            "items": { "type": "integer", "minimum": 100, "maximum": 599 }
                        }
                    },
                    "required": ["retriable-status"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// The named retry conditions.
pub const RETRY_NAMES: &[&str] = &[
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "unavailable",
];

impl Serialize for RetryOnFile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Self::Named(n) => s.serialize_str(n),
            Self::Statuses(codes) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("retriable-status", codes)?;
                m.end()
            }
        }
    }
}

/// `retry.backoff:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffFile {
    /// Ceiling of the first backoff; it doubles each retry. Default: 25ms.
    #[serde(default = "default_backoff_base")]
    pub base: HumanDuration,
    /// Largest backoff, and the most `Retry-After` honoured. Default: 250ms.
    #[serde(default = "default_backoff_max")]
    pub max: HumanDuration,
}

impl Default for BackoffFile {
    fn default() -> Self {
        Self {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

fn default_backoff_base() -> HumanDuration {
    HumanDuration::millis(25)
}
fn default_backoff_max() -> HumanDuration {
    HumanDuration::millis(250)
}

/// `cache:` on a route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    /// Most bytes the route's cache holds (heads and bodies); the least recently used
    /// responses go first. Default: 64MiB.
    #[serde(default = "default_cache_size")]
    pub max_size: ByteSize,
    /// Largest response body stored; a larger one streams through unstored. Default: 1MiB.
    #[serde(default = "default_cache_object")]
    pub max_object_size: ByteSize,
}

fn default_cache_size() -> ByteSize {
    ByteSize(64 << 20)
}

fn default_cache_object() -> ByteSize {
    ByteSize(1 << 20)
}

/// `rate_limit:` a token bucket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Average requests per second allowed.
    pub requests_per_second: u32,
    /// Requests allowed at once after a quiet period. Default: `requests_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// `fault:` of a route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultFile {
    /// Delay a share of requests before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelayFile>,
    /// Answer a share of requests with an error status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbortFile>,
}

/// `fault.delay:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelayFile {
    /// Share of requests delayed, 0 to 100.
    pub percent: f64,
    /// How long.
    pub duration: HumanDuration,
}

/// `fault.abort:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbortFile {
    /// Share of requests aborted, 0 to 100.
    pub percent: f64,
    /// Status to answer with.
    pub status: u16,
}

fn default_route_timeout() -> HumanDuration {
    HumanDuration::secs(15)
}

/// `match:` of a route. Every condition given must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    /// Host / `:authority` without port: exact (case-insensitive) or `*.suffix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatchFile>,
    /// Allowed methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Vec<String>>,
    /// Header conditions by header name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ValueMatchFile>,
    /// Query parameter conditions by parameter name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, ValueMatchFile>,
}

/// Path condition: exactly one kind, written `{ prefix: /api }`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(try_from = "PathMatchRaw", into = "PathMatchRaw")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub enum PathMatchFile {
    /// The path equals this (query string ignored).
    Exact(String),
    /// The path starts with these segments: `/api` matches `/api`, `/api/x`, not `/apix`.
    Prefix(String),
    /// The regex matches the whole path.
    Regex(String),
}

/// The YAML shape of [`PathMatchFile`].
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathMatchRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

impl TryFrom<PathMatchRaw> for PathMatchFile {
    type Error = String;
    fn try_from(r: PathMatchRaw) -> Result<Self, String> {
        match (r.exact, r.prefix, r.regex) {
            (Some(e), None, None) => Ok(Self::Exact(e)),
            (None, Some(p), None) => Ok(Self::Prefix(p)),
            (None, None, Some(x)) => Ok(Self::Regex(x)),
            _ => Err("give exactly one of `exact`, `prefix` or `regex`".into()),
        }
    }
}

impl From<PathMatchFile> for PathMatchRaw {
    fn from(p: PathMatchFile) -> Self {
        match p {
            PathMatchFile::Exact(e) => Self {
                exact: Some(e),
                ..Self::default()
            },
            PathMatchFile::Prefix(p) => Self {
                prefix: Some(p),
                ..Self::default()
            },
            PathMatchFile::Regex(x) => Self {
                regex: Some(x),
                ..Self::default()
            },
        }
    }
}

/// Header or query value condition: exactly one kind, written `{ exact: "true" }`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(try_from = "ValueMatchRaw", into = "ValueMatchRaw")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub enum ValueMatchFile {
    /// The value equals this.
    Exact(String),
    /// The regex matches the whole value.
    Regex(String),
    /// `true`: present with any value; `false`: absent.
    Present(bool),
}

/// The YAML shape of [`ValueMatchFile`].
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueMatchRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    present: Option<bool>,
}

impl TryFrom<ValueMatchRaw> for ValueMatchFile {
    type Error = String;
    fn try_from(r: ValueMatchRaw) -> Result<Self, String> {
        match (r.exact, r.regex, r.present) {
            (Some(e), None, None) => Ok(Self::Exact(e)),
            (None, Some(x), None) => Ok(Self::Regex(x)),
            (None, None, Some(p)) => Ok(Self::Present(p)),
            _ => Err("give exactly one of `exact`, `regex` or `present`".into()),
        }
    }
}

impl From<ValueMatchFile> for ValueMatchRaw {
    fn from(v: ValueMatchFile) -> Self {
        match v {
            ValueMatchFile::Exact(e) => Self {
                exact: Some(e),
                ..Self::default()
            },
            ValueMatchFile::Regex(x) => Self {
                regex: Some(x),
                ..Self::default()
            },
            ValueMatchFile::Present(p) => Self {
                present: Some(p),
                ..Self::default()
            },
        }
    }
}

/// One weighted backend of a route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    /// Name of a service under `services:`.
    pub service: String,
    /// Relative weight. Default: 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// `redirect:` of a route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedirectFile {
    /// 301, 302, 303, 307 or 308. Default: 301.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    /// The `location` header.
    pub location: String,
}

fn default_redirect_status() -> u16 {
    301
}

/// `direct_response:` of a route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseFile {
    /// Status code.
    pub status: u16,
    /// Body text. Default: empty.
    #[serde(default)]
    pub body: String,
    /// `content-type` of the body. Default: `text/plain; charset=utf-8` when there is a body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// Header edits: `set` replaces, `add` appends, `remove` deletes (applied remove, set, add).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderEditsFile {
    /// Headers to set, replacing any existing values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers to append.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Headers to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEditsFile {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// `rewrite:` of a route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewriteFile {
    /// Replaces the part of the path the route's path match matched (the whole path for
    /// `exact`, the prefix for `prefix`, `/` when the route has no path match).
    pub prefix: String,
}

/// One entry of `services:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// Static endpoints, `IP:PORT` (one of `endpoints` or `dns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    /// A DNS name and port, `NAME:PORT`, re-resolved every `dns_refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// How often `dns` is re-resolved. Default: 5s.
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: HumanDuration,
    /// `http1`, `http2` (prior knowledge) or `auto` (the caller's protocol). Default: `auto`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Endpoint selection. Default: `least_request`.
    #[serde(default)]
    pub load_balancer: LoadBalancerFile,
    /// Time to open a TCP connection to an endpoint. Default: 1s.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Idle pooled connections are closed after this long. Default: 60s.
    #[serde(default = "default_pool_idle")]
    pub idle_timeout: HumanDuration,
    /// Bounds on the service's requests and connections. Default: 1024 each.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerFile,
    /// Eject endpoints that keep failing. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierFile>,
    /// How many retries routes may add to this service's traffic.
    #[serde(default)]
    pub retry_budget: RetryBudgetFile,
    /// Active health checks. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckFile>,
    /// Call the endpoints over mTLS and require this peer identity. Absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServiceTlsFile>,
}

/// `health_check:` of a service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    /// Path requested with GET; a 2xx passes.
    pub path: String,
    /// Time between checks (plus up to 10% jitter). Default: 5s.
    #[serde(default = "default_hc_interval")]
    pub interval: HumanDuration,
    /// Time a check may take. Default: 1s.
    #[serde(default = "default_connect_timeout")]
    pub timeout: HumanDuration,
    /// Failures in a row that take an endpoint out. Default: 3.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
    /// Passes in a row that bring it back. Default: 2.
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
}

fn default_hc_interval() -> HumanDuration {
    HumanDuration::secs(5)
}
fn default_unhealthy_after() -> u32 {
    3
}
fn default_healthy_after() -> u32 {
    2
}

/// `retry_budget:` of a service (linkerd's defaults).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetFile {
    /// Retries may add this share of recent requests (0 to 1). Default: 0.2.
    #[serde(default = "default_budget_ratio")]
    pub ratio: f64,
    /// Plus this many retries per second regardless. Default: 10.
    #[serde(default = "default_budget_floor")]
    pub min_per_second: u32,
}

impl Default for RetryBudgetFile {
    fn default() -> Self {
        Self {
            ratio: default_budget_ratio(),
            min_per_second: default_budget_floor(),
        }
    }
}

fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_floor() -> u32 {
    10
}

/// `outlier_detection:` of a service (Envoy's defaults).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierFile {
    /// Failed responses in a row (5xx, connect failures, resets, timeouts) that eject an
    /// endpoint. Default: 5.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// Length of the first ejection; the n-th lasts n times as long. Default: 30s.
    #[serde(default = "default_base_ejection")]
    pub base_ejection: HumanDuration,
    /// Most endpoints ejected at once, in percent. Default: 10.
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: u8,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> HumanDuration {
    HumanDuration::secs(30)
}
fn default_max_ejected_percent() -> u8 {
    10
}

/// `circuit_breaker:` of a service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerFile {
    /// Most upstream connections across the service's endpoints. Default: 1024.
    #[serde(default = "default_breaker_limit")]
    pub max_connections: usize,
    /// Most requests waiting for a connection when `max_connections` is reached. Default: 1024.
    #[serde(default = "default_breaker_limit")]
    pub max_pending_requests: usize,
    /// Most requests in flight. Default: 1024.
    #[serde(default = "default_breaker_limit")]
    pub max_requests: usize,
}

impl Default for CircuitBreakerFile {
    fn default() -> Self {
        Self {
            max_connections: default_breaker_limit(),
            max_pending_requests: default_breaker_limit(),
            max_requests: default_breaker_limit(),
        }
    }
}

fn default_breaker_limit() -> usize {
    1024
}

fn default_dns_refresh() -> HumanDuration {
    HumanDuration::secs(5)
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration::secs(1)
}
fn default_pool_idle() -> HumanDuration {
    HumanDuration::secs(60)
}

/// Upstream protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// The protocol the caller used.
    #[default]
    Auto,
}

/// `load_balancer:` of a service: a name, or `{ ring_hash: { header: x-user } }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum LoadBalancerFile {
    /// Power of two random choices, fewer in-flight requests wins.
    #[default]
    LeastRequest,
    /// Each endpoint in turn.
    RoundRobin,
    /// Uniformly random.
    Random,
    /// Consistent hashing on a request header (requests without it are spread at random).
    RingHash {
        /// The header whose value is hashed.
        header: String,
    },
}

/// `ring_hash:` settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RingHashFile {
    header: String,
}

const LB_NAMES: &str = "least_request, round_robin, random or { ring_hash: { header: NAME } }";

impl<'de> Deserialize<'de> for LoadBalancerFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Balancer;
        impl<'de> serde::de::Visitor<'de> for Balancer {
            type Value = LoadBalancerFile;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a load balancer: {LB_NAMES}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LoadBalancerFile, E> {
                match v {
                    "least_request" => Ok(LoadBalancerFile::LeastRequest),
                    "round_robin" => Ok(LoadBalancerFile::RoundRobin),
                    "random" => Ok(LoadBalancerFile::Random),
                    "ring_hash" => Err(E::custom(
                        "ring_hash needs a header: { ring_hash: { header: NAME } }",
                    )),
                    other => {
                        let hint = super::spelling::closest(
                            other,
                            ["least_request", "round_robin", "random", "ring_hash"],
                        )
                        .map(|k| format!(" (did you mean {k:?}?)"))
                        .unwrap_or_default();
                        Err(E::custom(format!(
                            "unknown load balancer {other:?}: use {LB_NAMES}{hint}"
                        )))
                    }
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<LoadBalancerFile, A::Error> {
                use serde::de::Error;
                match map.next_key::<String>()?.as_deref() {
                    Some("ring_hash") => {}
                    Some(other) => return Err(A::Error::unknown_field(other, &["ring_hash"])),
                    // (`missing_field`: when the key is there, its value's own problem was
                    // reported.)
                    None => return Err(A::Error::missing_field("ring_hash")),
                }
                let rh = map.next_value::<RingHashFile>()?;
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(A::Error::unknown_field(&extra, &[]));
                }
                Ok(LoadBalancerFile::RingHash { header: rh.header })
            }
        }
        d.deserialize_any(Balancer)
    }
}

impl JsonSchema for LoadBalancerFile {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LoadBalancer".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "least_request (default), round_robin, random, or { ring_hash: { header: NAME } }.",
            "oneOf": [
                { "enum": ["least_request", "round_robin", "random"] },
                {
                    "type": "object",
                    "properties": {
                        "ring_hash": {
                            "type": "object",
                            "properties": { "header": { "type": "string" } },
                            "required": ["header"],
                            "additionalProperties": false
                        }
                    },
                    "required": ["ring_hash"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

impl Serialize for LoadBalancerFile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Self::LeastRequest => s.serialize_str("least_request"),
            Self::RoundRobin => s.serialize_str("round_robin"),
            Self::Random => s.serialize_str("random"),
            Self::RingHash { header } => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(
                    "ring_hash",
                    &RingHashFile {
                        header: header.clone(),
                    },
                )?;
                m.end()
            }
        }
    }
}
