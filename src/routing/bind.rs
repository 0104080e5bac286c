//! Route binding: compiled routes (`RouteSpec`) joined to the live services their backends
//! and mirror name, with their metric handles and rate limiters, when a config is loaded.
//!
//! Compiling has checked that every name refers to a service; a name the services lack all
//! the same (which would be a bug) leaves that backend or mirror out rather than stopping
//! the process, and is logged.

use std::{collections::BTreeMap, sync::Arc};

use super::{
    table::{ActionSpec, MirrorTarget, Route, RouteSpec, RouteTable, Target},
    tcp::{TcpRoute, TcpRouteSpec, TcpTable},
};
use crate::{
    metrics::{Direction, Metrics},
    resilience::RateLimiter,
    upstream::Service,
};

/// Binds `specs` to `services`. A route of `previous` with the same name and rate limit
/// hands its token bucket on, so a reload does not refill it.
pub fn routes(
    specs: Vec<RouteSpec>,
    services: &BTreeMap<String, Arc<Service>>,
    metrics: &Metrics,
    previous: Option<&RouteTable>,
) -> Vec<Route> {
    specs
        .into_iter()
        .map(|spec| route(spec, services, metrics, previous))
        .collect()
}

/// Binds TCP routes to `services`, with their metric handles.
pub fn tcp_routes(
    specs: Vec<TcpRouteSpec>,
    services: &BTreeMap<String, Arc<Service>>,
    metrics: &Metrics,
) -> TcpTable {
    let routes = specs
        .into_iter()
        .filter_map(|spec| {
            let Some(service) = services.get(&spec.service).cloned() else {
                tracing::error!(route = %spec.name, service = %spec.service, "TCP route names an unknown service; left out");
                return None;
            };
            Some(TcpRoute {
                metrics: metrics.tcp(Direction::Outbound, &spec.name, &spec.service),
                service,
                spec,
            })
        })
        .collect();
    TcpTable { routes }
}

fn route(
    spec: RouteSpec,
    services: &BTreeMap<String, Arc<Service>>,
    metrics: &Metrics,
    previous: Option<&RouteTable>,
) -> Route {
    let d = Direction::Outbound;
    let service = |name: &str| {
        let found = services.get(name).cloned();
        if found.is_none() {
            tracing::error!(route = %spec.name, service = name, "route names an unknown service; left out");
        }
        found
    };
    let mut total = 0;
    let targets = match &*spec.action {
        ActionSpec::Forward(list) => list
            .iter()
            .filter(|b| b.weight > 0)
            .filter_map(|b| {
                let svc = service(&b.service)?;
                total += b.weight;
                Some(Target {
                    service: svc,
                    cumulative: total,
                    metrics: metrics.request(d, &spec.name, &b.service),
                    retries: metrics.retries(&spec.name, &b.service),
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    let limiter = spec.rate_limit.map(|limit| {
        previous
            .and_then(|t| t.routes.iter().find(|r| r.spec.name == spec.name))
            .filter(|r| r.spec.rate_limit == spec.rate_limit)
            .and_then(|r| r.limiter.clone())
            .unwrap_or_else(|| Arc::new(RateLimiter::for_limit(limit)))
    });
    let cache = spec.cache.map(|settings| {
        previous
            .and_then(|t| t.routes.iter().find(|r| r.spec.name == spec.name))
            .filter(|r| r.spec.cache == spec.cache && r.spec.action == spec.action)
            .and_then(|r| r.cache.clone())
            .unwrap_or_else(|| {
                Arc::new(crate::cache::store::Store::new(
                    settings,
                    metrics.cache(&spec.name),
                ))
            })
    });
    let mirror = spec.mirror.as_ref().and_then(|m| {
        let [sent, failed, dropped] = metrics.mirror(&spec.name);
        Some(MirrorTarget {
            service: service(&m.service)?,
            sent,
            failed,
            dropped,
        })
    });
    Route {
        mirror,
        local_metrics: metrics.request(d, &spec.name, ""),
        limiter,
        faults: metrics.faults(&spec.name),
        cache,
        targets,
        total_weight: total,
        spec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsContext;

    const CONFIG: &str = r#"version: 1
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: limited
      match: { host: a }
      backends: [{ service: one, weight: 1 }, { service: two, weight: 3 }, { service: two, weight: 0 }]
      rate_limit: { requests_per_second: RATE }
      mirror: { service: one, percent: 5 }
    - name: answer
      direct_response: { status: 200 }
services:
  one: { endpoints: ["127.0.0.1:1"] }
  two: { endpoints: ["127.0.0.1:2"] }
"#;

    fn bound(rate: u32, previous: Option<&RouteTable>) -> (Vec<Route>, Metrics) {
        let compiled =
            crate::config::parse("t.yaml", &CONFIG.replace("RATE", &rate.to_string())).unwrap();
        let metrics = Metrics::new();
        let tls = TlsContext::new(&metrics);
        let services = compiled
            .services
            .into_iter()
            .map(|(name, spec)| {
                let svc = Service::new(&name, spec, &metrics, &tls);
                (name, svc)
            })
            .collect();
        let specs = compiled.outbound.unwrap().routes;
        (routes(specs, &services, &metrics, previous), metrics)
    }

    #[tokio::test]
    async fn backends_mirrors_and_weights_are_bound() {
        let (routes, _) = bound(10, None);
        let r = &routes[0];
        let names: Vec<_> = r
            .targets
            .iter()
            .map(|t| t.service.name().to_string())
            .collect();
        assert_eq!(names, ["one", "two"], "a weight of 0 takes no traffic");
        assert_eq!(
            r.targets.iter().map(|t| t.cumulative).collect::<Vec<_>>(),
            [1, 4]
        );
        assert_eq!(r.total_weight, 4);
        assert_eq!(r.mirror.as_ref().unwrap().service.name().as_ref(), "one");
        assert!(routes[1].targets.is_empty() && routes[1].limiter.is_none());
    }

    #[tokio::test]
    async fn a_bucket_is_kept_while_its_limit_is_unchanged() {
        let (first, _) = bound(10, None);
        let table = RouteTable {
            routes: first,
            unmatched: Default::default(),
        };
        let old = table.routes[0].limiter.clone().unwrap();
        let (same, _) = bound(10, Some(&table));
        assert!(Arc::ptr_eq(same[0].limiter.as_ref().unwrap(), &old));
        let (changed, _) = bound(20, Some(&table));
        assert!(!Arc::ptr_eq(changed[0].limiter.as_ref().unwrap(), &old));
    }
}
