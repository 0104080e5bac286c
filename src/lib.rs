//! Remora: a sidecar service-mesh proxy.
//!
//! # Layout (the request path, top to bottom)
//!
//! - [`app`]: binds listeners, starts everything, stops gracefully.
//! - [`proxy`]: accept loop, each direction's tower stack, forwarding, errors → responses.
//! - [`routing`]: route matching and the route table.
//! - [`upstream`]: services, discovery (static, DNS), endpoints with pooled connections.
//! - [`balance`]: endpoint selection (least-request, round robin, random, ring hash).
//! - [`resilience`]: the policy layers: rate limit, faults, breaker, retries, mirror.
//! - [`authorize`]: the inbound policy: which callers (by SPIFFE ID) may reach the app.
//! - [`runtime`]: the config snapshot published atomically, and process-wide state.
//! - [`config`]: the control file, its validation and compilation; [`reload`]: live reloads.
//! - [`explain`], [`route_test`]: which route a request takes and why; route test cases.
//! - [`inject`]: `remora inject`, the sidecar added to Kubernetes pod templates; [`import`]:
//!   `remora import`, Gateway API routes turned into a control file.
//! - [`tls`]: mutual TLS: identities, termination, origination, rotation, dev certificates.
//! - [`metrics`], [`admin`], [`telemetry`]: Prometheus metrics, the admin listener, logs.
//! - [`cache`]: a route's response cache (RFC 9111): policy, store and the route layer.
//! - [`body`]: the body type moved in both directions; [`context`]: the per-request context
//!   and the stack's vocabulary; [`error`]: errors on the request path; [`headers`]: header
//!   hygiene between hops.

pub mod admin;
pub mod app;
pub mod authorize;
pub mod balance;
pub mod body;
pub mod cache;
pub mod config;
pub mod context;
pub mod error;
pub mod explain;
pub mod files;
pub mod headers;
pub mod import;
pub mod inject;
pub mod iptables;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod resilience;
pub mod route_test;
pub mod routing;
pub mod runtime;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod upstream;

#[cfg(test)]
mod testing;
