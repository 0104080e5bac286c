//! The live state: a config snapshot (the compiled config bound to live services, rate
//! limiters and metric handles) published atomically, plus what outlives snapshots (metrics,
//! readiness, passthrough pools). The snapshot is compiled state only: the data path's
//! stacks are assembled from it by `proxy::Stacks`, which reads it; nothing here knows them.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwap;

use crate::{
    authorize::{Authorizer, AuthzMetrics},
    config::{Compiled, InboundSpec, ShutdownSettings, Startup},
    metrics::Metrics,
    resilience::{rate_limit::Limit, RateLimiter},
    routing::{
        bind,
        normalize::PathRules,
        tcp::{PortSet, TcpTable},
        RouteTable,
    },
    tls::{self, IdentityFiles, TlsContext},
    upstream::{Passthrough, Service},
};

/// The identity a snapshot was built with, to tell what a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityVersion {
    /// Where the identity is read from.
    pub files: IdentityFiles,
    /// The fingerprint of the certificate and key loaded from them.
    pub fingerprint: u64,
}

/// The outbound side of a snapshot.
#[derive(Debug)]
pub struct Outbound {
    /// Routes bound to their services.
    pub table: Arc<RouteTable>,
    /// TCP routes bound to their services.
    pub tcp: Arc<TcpTable>,
    /// Original destination ports proxied as opaque TCP without detection.
    pub opaque_ports: PortSet,
}

/// The inbound side of a snapshot.
#[derive(Debug)]
pub struct Inbound {
    /// The local app as a one-endpoint service.
    pub app: Arc<Service>,
    /// Time the app has to answer with response headers.
    pub timeout: Duration,
    /// Local rate limit, as configured.
    pub rate_limit: Option<Limit>,
    /// The listener's token bucket; kept across reloads while the limit is unchanged.
    pub limiter: Option<Arc<RateLimiter>>,
    /// What the listener accepts (read at every new connection).
    pub tls: tls::Mode,
    /// Authorization rules bound to their counters; `None` allows every caller.
    pub authorizer: Option<Arc<Authorizer>>,
    /// Destination ports proxied as opaque TCP without detection.
    pub opaque_ports: PortSet,
}

/// One compiled config bound to live services.
#[derive(Debug)]
pub struct Snapshot {
    /// The effective config, for `/config`.
    pub effective: crate::config::Effective,
    /// The inbound section as compiled, to tell what a reload changed.
    pub inbound_spec: Option<InboundSpec>,
    /// The identity's files and fingerprint, to tell what a reload changed.
    pub identity: Option<IdentityVersion>,
    /// Settings only a restart applies (reloads that change them are refused).
    pub startup: Startup,
    /// Graceful stop timing, read when a stop begins.
    pub shutdown: ShutdownSettings,
    /// Whether to write the access log.
    pub access_log: bool,
    /// Whether non-loopback callers may use the admin control endpoints.
    pub admin_remote_control: bool,
    /// How request paths are normalized.
    pub paths: PathRules,
    /// Outbound routes, when configured.
    pub outbound: Option<Outbound>,
    /// Inbound app forwarding, when configured.
    pub inbound: Option<Inbound>,
    /// Services by name.
    pub services: BTreeMap<String, Arc<Service>>,
}

impl Snapshot {
    /// Binds `compiled` to live services. A service whose definition equals one in `previous`
    /// keeps its live state (endpoints, pools); others are created fresh. The config's
    /// identity is put in force (a no-op when it is the one in force).
    pub fn build(compiled: Compiled, shared: &Shared, previous: Option<&Snapshot>) -> Self {
        let startup = compiled.startup();
        let Compiled {
            effective,
            admin_remote_control,
            paths,
            shutdown,
            log,
            tracing,
            inbound,
            outbound,
            services: specs,
            identity,
            ..
        } = compiled;
        shared.tracer.configure(tracing.as_ref());
        let metrics = &shared.metrics;
        let identity_files = identity.as_ref().map(|id| IdentityVersion {
            files: id.files().clone(),
            fingerprint: id.fingerprint(),
        });
        shared.tls.install(identity);
        let services: BTreeMap<String, Arc<Service>> = specs
            .into_iter()
            .map(|(name, spec)| {
                let kept = previous
                    .and_then(|p| p.services.get(&name))
                    .filter(|s| *s.spec() == spec)
                    .cloned();
                let svc = kept.unwrap_or_else(|| Service::new(&name, spec, metrics, &shared.tls));
                (name, svc)
            })
            .collect();

        let outbound = outbound.map(|ob| {
            let previous = previous
                .and_then(|p| p.outbound.as_ref())
                .map(|o| &*o.table);
            let routes = bind::routes(ob.routes, &services, metrics, previous);
            Outbound {
                table: Arc::new(RouteTable {
                    routes,
                    unmatched: ob.unmatched,
                }),
                tcp: Arc::new(bind::tcp_routes(ob.tcp_routes, &services, metrics)),
                opaque_ports: ob.opaque_ports,
            }
        });

        let inbound_spec = inbound.clone();
        let inbound = inbound.map(|ib| {
            let kept = previous
                .and_then(|p| p.inbound.as_ref())
                .filter(|i| *i.app.spec() == ib.app)
                .map(|i| i.app.clone());
            let limiter = ib.rate_limit.map(|limit| {
                previous
                    .and_then(|p| p.inbound.as_ref())
                    .filter(|i| i.rate_limit == ib.rate_limit)
                    .and_then(|i| i.limiter.clone())
                    .unwrap_or_else(|| Arc::new(RateLimiter::for_limit(limit)))
            });
            Inbound {
                app: kept.unwrap_or_else(|| Service::new("app", ib.app, metrics, &shared.tls)),
                timeout: ib.timeout,
                rate_limit: ib.rate_limit,
                limiter,
                tls: ib.tls,
                authorizer: ib
                    .authorize
                    .map(|p| Arc::new(Authorizer::new(p, &shared.authz))),
                opaque_ports: ib.opaque_ports,
            }
        });

        Snapshot {
            effective,
            inbound_spec,
            identity: identity_files,
            startup,
            shutdown,
            access_log: log.access_log,
            admin_remote_control,
            paths,
            outbound,
            inbound,
            services,
        }
    }
}

/// What outlives config snapshots and every snapshot is bound to.
#[derive(Debug)]
pub struct Shared {
    /// Metrics registry and handles.
    pub metrics: Metrics,
    /// The identity in force and the TLS metrics.
    pub tls: Arc<TlsContext>,
    /// Authorization counters.
    pub authz: AuthzMetrics,
    /// Clients for passed-through requests.
    pub passthrough: Arc<Passthrough>,
    /// Spans: the queue and exporter outlive snapshots.
    pub tracer: Arc<crate::trace::Tracer>,
}

impl Shared {
    /// A fresh registry with every metric registered, and no identity.
    pub fn new() -> Self {
        let metrics = Metrics::new();
        Self {
            tls: TlsContext::new(&metrics),
            authz: AuthzMetrics::new(&metrics),
            passthrough: Passthrough::new(Duration::from_secs(1)),
            tracer: crate::trace::Tracer::new(&metrics),
            metrics,
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// Process-wide state shared by every listener.
#[derive(Debug)]
pub struct Runtime {
    /// Metrics, the identity in force: what every snapshot is bound to.
    pub shared: Shared,
    snapshot: ArcSwap<Snapshot>,
    ready: AtomicBool,
    /// Set by `POST /shutdown`: stop as on SIGTERM.
    quit: tokio::sync::Notify,
}

impl Runtime {
    /// A runtime serving `compiled` (must run inside the tokio runtime).
    pub fn new(compiled: Compiled) -> Arc<Self> {
        let shared = Shared::new();
        let snapshot = Snapshot::build(compiled, &shared, None);
        shared.metrics.config_loaded();
        Arc::new(Self {
            shared,
            snapshot: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            quit: tokio::sync::Notify::new(),
        })
    }

    /// The current snapshot. Hold it for the whole request so the request sees one config.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Publishes a new snapshot atomically (the wiring assembles its stacks first).
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        self.snapshot.store(snapshot);
    }

    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Sets readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Asks the process to stop gracefully, as SIGTERM does (`POST /shutdown`: how a Job's
    /// app ends its sidecar when the sidecar is an ordinary container).
    pub fn request_stop(&self) {
        self.quit.notify_one();
    }

    /// Resolves once [`request_stop`](Self::request_stop) has been called.
    pub async fn stop_requested(&self) {
        self.quit.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"version: 1
inbound: { listen: 127.0.0.1:0, app: 127.0.0.1:1 }
outbound:
  listen: 127.0.0.1:0
  routes:
    - { name: r, match: { host: a }, backends: [{ service: one }, { service: two }] }
services:
  one: { endpoints: ["127.0.0.1:2"] }
  two: { endpoints: ["127.0.0.1:3"] }
"#;

    fn build(text: &str, shared: &Shared, previous: Option<&Snapshot>) -> Snapshot {
        Snapshot::build(
            crate::config::parse("t.yaml", text).unwrap(),
            shared,
            previous,
        )
    }

    #[tokio::test]
    async fn unchanged_services_keep_their_live_state_across_snapshots() {
        let shared = Shared::new();
        let first = build(BASE, &shared, None);
        let next = build(
            &BASE.replace("127.0.0.1:3\"", "127.0.0.1:4\""),
            &shared,
            Some(&first),
        );
        assert!(
            Arc::ptr_eq(&first.services["one"], &next.services["one"]),
            "kept"
        );
        assert!(
            !Arc::ptr_eq(&first.services["two"], &next.services["two"]),
            "changed: fresh"
        );
        let (a, b) = (
            first.inbound.as_ref().unwrap(),
            next.inbound.as_ref().unwrap(),
        );
        assert!(Arc::ptr_eq(&a.app, &b.app), "the app's pools survive too");
        // The route is bound to the live services of its own snapshot.
        let route = &next.outbound.as_ref().unwrap().table.routes[0];
        assert!(Arc::ptr_eq(
            &route.targets[1].service,
            &next.services["two"]
        ));
        assert!(next.effective.render().contains("max_connections: 10000"));
    }
}
