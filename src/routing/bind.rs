//! Route binding: compiled routes (`RouteSpec`) joined to the live services their backends
//! and mirror name, with their metric handles and rate limiters, when a config is loaded.
//!
//! Compiling has checked that every name refers to a service; a name the services lack all
//! the same (which would be a bug) leaves that backend or mirror out rather than stopping
//! the process, and is logged.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use super::{
    table::{ActionSpec, MirrorTarget, Route, RouteSpec, RouteTable, Target},
    tcp::{TcpRoute, TcpRouteSpec, TcpTable},
};
use crate::{
    metrics::{Direction, Metrics},
    resilience::RateLimiter,
    upstream::Service,
};

/// Binds `specs` to `services`. A route of `previous` whose spec is unchanged, and whose
/// services are the same live ones, is kept whole: a reload of a large file then builds
/// only what changed, and its memory is not churned (a kept route costs no allocation).
/// A changed route keeps its name's metric handles, token bucket and (while its settings
/// and backends are unchanged) its cache.
pub fn routes(
    specs: Vec<RouteSpec>,
    services: &BTreeMap<String, Arc<Service>>,
    metrics: &Metrics,
    previous: Option<&RouteTable>,
) -> Vec<Arc<Route>> {
    let before: HashMap<&str, &Arc<Route>> = previous
        .map(|t| t.routes.iter().map(|r| (&*r.spec.name, r)).collect())
        .unwrap_or_default();
    specs
        .into_iter()
        .map(|spec| {
            let kept = before.get(&*spec.name).copied();
            match kept {
                Some(old) if old.spec == spec && same_services(old, services) => old.clone(),
                _ => Arc::new(route(spec, services, metrics, kept.map(|r| &**r))),
            }
        })
        .collect()
}

/// Whether `route`'s backends and mirror are bound to the live services `services` holds,
/// and it would bind every backend it could (a spec's service missing before may exist now).
fn same_services(route: &Route, services: &BTreeMap<String, Arc<Service>>) -> bool {
    let live = |svc: &Arc<Service>| {
        services
            .get(&**svc.name())
            .is_some_and(|now| Arc::ptr_eq(now, svc))
    };
    let wanted = match &*route.spec.action {
        ActionSpec::Forward(list) => list
            .iter()
            .filter(|b| b.weight > 0 && services.contains_key(&b.service))
            .count(),
        _ => 0,
    };
    let mirror_wanted = route
        .spec
        .mirror
        .as_ref()
        .is_some_and(|m| services.contains_key(&m.service));
    route.targets.len() == wanted
        && route.targets.iter().all(|t| live(&t.service))
        && route.mirror.is_some() == mirror_wanted
        && route.mirror.iter().all(|m| live(&m.service))
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

/// Binds one route; `old` is the route of the same name in force before, if any.
fn route(
    spec: RouteSpec,
    services: &BTreeMap<String, Arc<Service>>,
    metrics: &Metrics,
    old: Option<&Route>,
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
                let was =
                    old.and_then(|r| r.targets.iter().find(|t| **t.service.name() == *b.service));
                Some(Target {
                    service: svc,
                    cumulative: total,
                    metrics: was.map_or_else(
                        || metrics.request(d, &spec.name, &b.service),
                        |t| t.metrics.clone(),
                    ),
                    retries: was.map_or_else(
                        || metrics.retries(&spec.name, &b.service),
                        |t| t.retries.clone(),
                    ),
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    let limiter = spec.rate_limit.map(|limit| {
        old.filter(|r| r.spec.rate_limit == spec.rate_limit)
            .and_then(|r| r.limiter.clone())
            .unwrap_or_else(|| Arc::new(RateLimiter::for_limit(limit)))
    });
    let cache = spec.cache.map(|settings| {
        old.filter(|r| r.spec.cache == spec.cache && r.spec.action == spec.action)
            .and_then(|r| r.cache.clone())
            .unwrap_or_else(|| {
                Arc::new(crate::cache::store::Store::new(
                    settings,
                    metrics.cache(&spec.name),
                ))
            })
    });
    let mirror = spec.mirror.as_ref().and_then(|m| {
        let [sent, failed, dropped] = match old.and_then(|r| r.mirror.as_ref()) {
            Some(was) => [was.sent.clone(), was.failed.clone(), was.dropped.clone()],
            None => metrics.mirror(&spec.name),
        };
        Some(MirrorTarget {
            service: service(&m.service)?,
            sent,
            failed,
            dropped,
        })
    });
    Route {
        mirror,
        local_metrics: old.map_or_else(
            || metrics.request(d, &spec.name, ""),
            |r| r.local_metrics.clone(),
        ),
        limiter,
        faults: old.map_or_else(|| metrics.faults(&spec.name), |r| r.faults.clone()),
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

    fn bound(rate: u32, previous: Option<&RouteTable>) -> (Vec<Arc<Route>>, Metrics) {
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

    /// Binds `config` with `services` made now, or kept from `before` when their spec is
    /// unchanged (as a reload's snapshot does).
    fn rebind(
        config: &str,
        before: Option<(&RouteTable, &BTreeMap<String, Arc<Service>>)>,
        (metrics, tls): (&Metrics, &Arc<TlsContext>),
    ) -> (RouteTable, BTreeMap<String, Arc<Service>>) {
        let compiled = crate::config::parse("t.yaml", config).unwrap();
        let services: BTreeMap<String, Arc<Service>> = compiled
            .services
            .into_iter()
            .map(|(name, spec)| {
                let kept = before
                    .and_then(|(_, s)| s.get(&name))
                    .filter(|s| *s.spec() == spec)
                    .cloned();
                let svc = kept.unwrap_or_else(|| Service::new(&name, spec, metrics, tls));
                (name, svc)
            })
            .collect();
        let specs = compiled.outbound.unwrap().routes;
        let routes = routes(specs, &services, metrics, before.map(|(t, _)| t));
        let table = RouteTable {
            routes,
            unmatched: Default::default(),
        };
        (table, services)
    }

    #[tokio::test]
    async fn a_reload_keeps_unchanged_routes_whole_and_a_changed_one_keeps_its_handles() {
        let metrics = Metrics::new();
        let tls = TlsContext::new(&metrics);
        let metrics = (&metrics, &tls);
        let first = CONFIG.replace("RATE", "10");
        let (old, services) = rebind(&first, None, metrics);
        let (same, _) = rebind(&first, Some((&old, &services)), metrics);
        assert!(Arc::ptr_eq(&same.routes[0], &old.routes[0]));
        assert!(Arc::ptr_eq(&same.routes[1], &old.routes[1]));

        // A new limit: that route is bound again, with the same metric handles.
        let (changed, _) = rebind(
            &CONFIG.replace("RATE", "20"),
            Some((&old, &services)),
            metrics,
        );
        assert!(!Arc::ptr_eq(&changed.routes[0], &old.routes[0]));
        assert!(Arc::ptr_eq(&changed.routes[1], &old.routes[1]));
        let (now, was) = (&changed.routes[0], &old.routes[0]);
        assert!(now.local_metrics.same_series(&was.local_metrics));
        for (n, w) in now.targets.iter().zip(&was.targets) {
            assert!(n.metrics.same_series(&w.metrics));
        }

        // A service changed: the route that uses it is bound to the new one.
        let moved = first.replace("127.0.0.1:2", "127.0.0.1:3");
        let (next, next_services) = rebind(&moved, Some((&old, &services)), metrics);
        let route = &next.routes[0];
        assert!(!Arc::ptr_eq(route, &old.routes[0]));
        assert!(Arc::ptr_eq(
            &route.targets[1].service,
            &next_services["two"]
        ));
        assert!(Arc::ptr_eq(&route.targets[0].service, &services["one"]));
    }
}
