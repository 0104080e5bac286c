//! Warnings: configs that are valid but surely not what their author meant. A route that
//! can never match because an earlier one takes all its requests, a service nothing uses, a
//! retry policy that can never fire, an authorization rule an earlier one makes redundant.
//! `check` prints them (`--strict` makes them errors), and a reload logs them.
//!
//! Each test errs on the side of silence: "covers" is proven from the conditions as written
//! (a regex covers only the same regex), so a warning is always true.

use std::collections::{BTreeSet, HashMap};

use crate::{
    authorize::{IdPattern, PathPattern, Rule},
    routing::{
        matcher::{prefix_matches, HostMatch, PathMatch, RouteMatch},
        ActionSpec, RouteSpec,
    },
};

use super::{compile::Problem, duration::HumanDuration, Compiled};

/// Every warning for `c`, each at the field path it is about.
pub fn warnings(c: &Compiled) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut warn = |path: String, message: String| out.push(Problem { path, message });
    let mut used = BTreeSet::new();
    if let Some(ob) = &c.outbound {
        let mut earlier_routes = Earlier::default();
        for (i, route) in ob.routes.iter().enumerate() {
            let path = format!("outbound.routes[{i}]");
            let shadow = earlier_routes
                .candidates(&route.matcher)
                .find(|&j| covers(&ob.routes[j].matcher, &route.matcher));
            earlier_routes.push(i, &route.matcher);
            if let Some((j, earlier)) = shadow.map(|j| (j, &ob.routes[j])) {
                warn(
                    path.clone(),
                    format!(
                        "route {:?} can never match: route {:?} (outbound.routes[{j}]) comes first and takes every request it would",
                        route.name, earlier.name
                    ),
                );
            }
            retry_warnings(route, &path, &mut warn);
            if let ActionSpec::Forward(backends) = &*route.action {
                used.extend(backends.iter().map(|b| b.service.as_str()));
            }
            if let Some(m) = &route.mirror {
                used.insert(m.service.as_str());
            }
        }
        used.extend(ob.tcp_routes.iter().map(|r| r.service.as_str()));
        for (i, route) in ob.tcp_routes.iter().enumerate() {
            let shadow = ob.tcp_routes[..i].iter().enumerate().find(|(_, e)| {
                e.port.is_none_or(|p| route.port == Some(p))
                    && e.destination
                        .is_none_or(|d| route.destination.is_some_and(|r| d.covers(&r)))
            });
            if let Some((j, earlier)) = shadow {
                warn(
                    format!("outbound.tcp_routes[{i}]"),
                    format!(
                        "TCP route {:?} can never match: {:?} (outbound.tcp_routes[{j}]) comes first and takes every connection it would",
                        route.name, earlier.name
                    ),
                );
            }
        }
    }
    for name in c.services.keys() {
        if !used.contains(name.as_str()) {
            warn(
                format!("services.{name}"),
                format!("service {name:?} is not used: no route, mirror or TCP route names it"),
            );
        }
    }
    if let Some(policy) = c.inbound.as_ref().and_then(|ib| ib.authorize.as_ref()) {
        for (i, rule) in policy.rules.iter().enumerate() {
            if let Some((j, earlier)) = policy.rules[..i]
                .iter()
                .enumerate()
                .find(|(_, e)| rule_covers(e, rule))
            {
                warn(
                    format!("inbound.authorize[{i}]"),
                    format!(
                        "rule {:?} never decides: rule {:?} (inbound.authorize[{j}]) comes first and allows every request it would",
                        rule.name, earlier.name
                    ),
                );
            }
        }
    }
    out
}

/// A retry policy that cannot retry.
fn retry_warnings(route: &RouteSpec, path: &str, warn: &mut impl FnMut(String, String)) {
    let Some(r) = &route.retry else { return };
    let at = format!("{path}.retry");
    let timeout = HumanDuration(route.timeout);
    if r.attempts <= 1 {
        warn(
            format!("{at}.attempts"),
            "one attempt is no retry: give 2 or more, or remove `retry`".into(),
        );
    } else if route.timeout <= r.backoff_base {
        warn(
            at,
            format!(
                "the route's timeout ({timeout}) is over before the first retry's backoff ({}) ends: no retry can start",
                HumanDuration(r.backoff_base)
            ),
        );
    } else if let Some(per_try) = r.per_try_timeout.filter(|t| *t >= route.timeout) {
        warn(
            format!("{at}.per_try_timeout"),
            format!(
                "per_try_timeout ({}) is not shorter than the route's timeout ({timeout}): a try that times out leaves no time to retry",
                HumanDuration(per_try)
            ),
        );
    }
}

/// The routes seen so far, by what their host condition lets cover: a route whose host is
/// exact can only be covered by one with the same exact host, or with no host or a suffix.
/// A fleet's thousand routes on a thousand hosts are then checked in linear time, not
/// against every earlier route.
#[derive(Default)]
struct Earlier<'a> {
    by_host: HashMap<&'a str, Vec<usize>>,
    /// Routes with no host condition or a suffix.
    wide: Vec<usize>,
}

impl<'a> Earlier<'a> {
    fn push(&mut self, i: usize, m: &'a RouteMatch) {
        match &m.host {
            Some(HostMatch::Exact(h)) => self.by_host.entry(h.as_str()).or_default().push(i),
            _ => self.wide.push(i),
        }
    }

    /// The earlier routes that may cover `later`, in order.
    fn candidates(&self, later: &RouteMatch) -> impl Iterator<Item = usize> + '_ {
        let same = match &later.host {
            Some(HostMatch::Exact(h)) => self.by_host.get(h.as_str()).map_or(&[][..], |v| v),
            _ => &[][..],
        };
        let mut merged: Vec<usize> = self.wide.iter().chain(same).copied().collect();
        merged.sort_unstable();
        merged.into_iter()
    }
}

/// Whether every request `later` matches is matched by `earlier`.
fn covers(earlier: &RouteMatch, later: &RouteMatch) -> bool {
    let host = match (&earlier.host, &later.host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(HostMatch::Exact(a)), Some(HostMatch::Exact(b))) => a == b,
        (Some(HostMatch::Suffix(s)), Some(HostMatch::Exact(h))) => {
            h.len() > s.len() && h.ends_with(s.as_str())
        }
        (Some(HostMatch::Suffix(s)), Some(HostMatch::Suffix(t))) => t.ends_with(s.as_str()),
        (Some(HostMatch::Exact(_)), Some(HostMatch::Suffix(_))) => false,
    };
    let path = match (&earlier.path, &later.path) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(PathMatch::Prefix(p)), Some(PathMatch::Exact(q) | PathMatch::Prefix(q))) => {
            prefix_matches(p, q)
        }
        (Some(a), Some(b)) => a == b,
    };
    let methods = match (&earlier.methods, &later.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
    };
    host && path
        && methods
        && earlier.headers.iter().all(|h| later.headers.contains(h))
        && earlier.query.iter().all(|q| later.query.contains(q))
}

/// Whether every request `later` allows is allowed by `earlier`.
fn rule_covers(earlier: &Rule, later: &Rule) -> bool {
    let callers = earlier.unauthenticated
        || (!later.unauthenticated
            && later
                .from
                .iter()
                .all(|id| earlier.from.iter().any(|e| id_covers(e, id))));
    let paths = earlier.paths.is_empty()
        || (!later.paths.is_empty()
            && later
                .paths
                .iter()
                .all(|p| earlier.paths.iter().any(|e| path_covers(e, p))));
    let methods = earlier.methods.is_empty()
        || (!later.methods.is_empty() && later.methods.iter().all(|m| earlier.methods.contains(m)));
    callers && paths && methods
}

fn id_covers(earlier: &IdPattern, later: &IdPattern) -> bool {
    match (earlier, later) {
        (IdPattern::Any, _) => true,
        (IdPattern::Prefix(p), IdPattern::Exact(id)) => id.as_str().starts_with(p.as_str()),
        (IdPattern::Prefix(p), IdPattern::Prefix(q)) => q.starts_with(p.as_str()),
        (IdPattern::Exact(a), IdPattern::Exact(b)) => a == b,
        _ => false,
    }
}

fn path_covers(earlier: &PathPattern, later: &PathPattern) -> bool {
    match (earlier, later) {
        (PathPattern::Prefix(p), PathPattern::Exact(q) | PathPattern::Prefix(q)) => {
            p.is_empty() || prefix_matches(p, q)
        }
        (PathPattern::Exact(a), PathPattern::Exact(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    /// The earlier route named is the first that covers, whichever way it was found: by the
    /// same exact host, or among those without a host or with a suffix.
    #[test]
    fn the_first_covering_route_is_named_by_exact_host_or_wide() {
        let text = r#"version: 1
outbound:
  listen: 127.0.0.1:0
  routes:
    - { name: a, match: { host: x, path: { prefix: /a } }, backends: [{ service: s }] }
    - { name: b, match: { host: y }, backends: [{ service: s }] }
    - { name: c, match: { host: x, path: { prefix: /a/b } }, backends: [{ service: s }] }
    - { name: d, match: { path: { prefix: /z } }, backends: [{ service: s }] }
    - { name: e, match: { host: y, path: { prefix: /z } }, backends: [{ service: s }] }
    - { name: f, match: { host: "*.t" }, backends: [{ service: s }] }
    - { name: g, match: { host: x }, backends: [{ service: s }] }
    - { name: h, match: { host: q.t, path: { prefix: /a } }, backends: [{ service: s }] }
    - { name: i, match: { host: x, path: { prefix: /a } }, backends: [{ service: s }] }
services:
  s: { endpoints: ["127.0.0.1:1"] }
"#;
        let c = crate::config::parse("t", text).expect("valid");
        let got: Vec<(String, String)> = super::warnings(&c)
            .into_iter()
            .map(|p| {
                let by = p.message.split('(').nth(1).unwrap_or("").to_owned();
                (p.path, by)
            })
            .collect();
        let want = [
            ("outbound.routes[2]", "outbound.routes[0]) comes first"),
            ("outbound.routes[4]", "outbound.routes[1]) comes first"),
            ("outbound.routes[7]", "outbound.routes[5]) comes first"),
            ("outbound.routes[8]", "outbound.routes[0]) comes first"),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((path, by), (want_path, want_by)) in got.iter().zip(want) {
            assert_eq!(path, want_path);
            assert!(by.starts_with(want_by), "{path}: {by}");
        }
    }
}
