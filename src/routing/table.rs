//! The route table: compiled routes (`RouteSpec`) bound to live services and metric
//! handles (`Route`). Built when a config is loaded; each request walks it once, in order.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header::HeaderName, HeaderMap, HeaderValue, StatusCode};

use super::matcher::{Mismatch, PathMatch, RequestView, RouteMatch};
use prometheus::IntCounter;

use crate::{
    metrics::{FaultMetrics, RequestMetrics},
    resilience::{mirror, rate_limit::Limit, retry, Fault, RateLimiter},
    upstream::Service,
};

/// A route as compiled from the control file, before it is bound to live services. Two
/// equal specs route alike (a reload compares them to tell what changed).
#[derive(Debug, PartialEq)]
pub struct RouteSpec {
    /// Unique route name (metrics `route` label).
    pub name: Arc<str>,
    /// Conditions.
    pub matcher: RouteMatch,
    /// What to do with a matching request (shared with the route's stack, which answers
    /// redirects and direct responses from it).
    pub action: Arc<ActionSpec>,
    /// Time the upstream has to answer with response headers.
    pub timeout: Duration,
    /// Edits to the forwarded request.
    pub request_headers: HeaderEdits,
    /// Edits to the returned response.
    pub response_headers: HeaderEdits,
    /// Path rewrite when forwarding.
    pub rewrite: Option<Rewrite>,
    /// Local rate limit.
    pub rate_limit: Option<Limit>,
    /// Faults to inject.
    pub fault: Option<Fault>,
    /// Retries.
    pub retry: Option<retry::Policy>,
    /// Mirroring.
    pub mirror: Option<mirror::MirrorPolicy>,
    /// Response caching.
    pub cache: Option<crate::cache::Settings>,
}

/// What a route does.
#[derive(Debug, PartialEq)]
pub enum ActionSpec {
    /// Forward to one of these services, chosen by weight.
    Forward(Vec<WeightedService>),
    /// Answer with a redirect.
    Redirect {
        /// 301, 302, 303, 307 or 308.
        status: StatusCode,
        /// `location` header.
        location: HeaderValue,
    },
    /// Answer with a fixed response.
    Direct {
        /// Status code.
        status: StatusCode,
        /// Body.
        body: Bytes,
        /// `content-type`, when there is one.
        content_type: Option<HeaderValue>,
    },
}

/// One backend of a forwarding route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedService {
    /// Name under `services:`.
    pub service: String,
    /// Relative weight (may be 0; the route's total is not).
    pub weight: u32,
}

/// Header edits, applied in the order remove, set, add.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HeaderEdits {
    /// Replace these headers.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append these headers.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove these headers.
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the edits to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// Replaces the matched part of the path with `replacement`, keeping the rest and the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The part of the path to replace: the route's exact path or prefix, or `/`.
    pub matched: String,
    /// Its replacement.
    pub replacement: String,
}

impl Rewrite {
    /// Builds the rewrite for a route with this path condition; `None` for a regex path.
    pub fn for_path(path: Option<&PathMatch>, replacement: String) -> Option<Self> {
        let matched = match path {
            None => "/".to_owned(),
            Some(PathMatch::Exact(p)) | Some(PathMatch::Prefix(p)) => p.clone(),
            Some(PathMatch::Regex(_)) => return None,
        };
        Some(Self {
            matched,
            replacement,
        })
    }

    /// The rewritten path and query; `path` is known to start with `self.matched`.
    pub fn apply(&self, path: &str, query: Option<&str>) -> String {
        let rest = path.strip_prefix(self.matched.as_str()).unwrap_or(path);
        let mut out = String::with_capacity(
            self.replacement.len() + rest.len() + 1 + query.map_or(0, str::len),
        );
        out.push_str(&self.replacement);
        match (self.replacement.ends_with('/'), rest.starts_with('/')) {
            (true, true) => out.push_str(&rest[1..]),
            (false, false) if !rest.is_empty() => {
                out.push('/');
                out.push_str(rest);
            }
            _ => out.push_str(rest),
        }
        if out.is_empty() {
            out.push('/');
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// A route bound to live services: what the request path uses.
#[derive(Debug)]
pub struct Route {
    /// The compiled route.
    pub spec: RouteSpec,
    /// Backends with cumulative weights (empty for redirects and direct responses).
    pub targets: Vec<Target>,
    /// Sum of the weights.
    pub total_weight: u32,
    /// Metrics for responses the route makes itself (redirect, direct response, errors
    /// before a backend was chosen).
    pub local_metrics: RequestMetrics,
    /// The route's token bucket; kept across reloads while `spec.rate_limit` is unchanged.
    pub limiter: Option<Arc<RateLimiter>>,
    /// Counters of injected delays and aborts.
    pub faults: FaultMetrics,
    /// The route's response cache; kept across reloads while its settings and backends
    /// are unchanged.
    pub cache: Option<Arc<crate::cache::store::Store>>,
    /// The shadow service and its limits, when the route mirrors.
    pub mirror: Option<MirrorTarget>,
}

/// Where a route's mirror copies go.
#[derive(Debug)]
pub struct MirrorTarget {
    /// The shadow service.
    pub service: Arc<Service>,
    /// Copies answered, failed, and dropped (limit reached or body too large).
    pub sent: IntCounter,
    /// See `sent`.
    pub failed: IntCounter,
    /// See `sent`.
    pub dropped: IntCounter,
}

/// One backend of a bound route.
#[derive(Debug)]
pub struct Target {
    /// The live service.
    pub service: Arc<Service>,
    /// Upper bound (exclusive) of this target's slice of `0..total_weight`.
    pub cumulative: u32,
    /// Metric handles for this route and service.
    pub metrics: RequestMetrics,
    /// Retries made for this route to this service.
    pub retries: crate::metrics::LazyCounter,
}

impl Route {
    /// Picks a backend by weight. `None` only for routes that do not forward.
    pub fn pick_target(&self) -> Option<&Target> {
        pick_weighted(&self.targets, self.total_weight, |t| t.cumulative)
    }
}

/// Draws one of `items` by weight, where `cumulative(item)` is the upper bound (exclusive) of
/// its slice of `0..total`; `None` for no items.
pub fn pick_weighted<T>(items: &[T], total: u32, cumulative: impl Fn(&T) -> u32) -> Option<&T> {
    match items.len() {
        0 | 1 => items.first(),
        _ => {
            let r = fastrand::u32(0..total);
            items.iter().find(|t| r < cumulative(t))
        }
    }
}

/// What the outbound listener does with a request no route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unmatched {
    /// Forward it to its own authority (`Host` or absolute URI), resolved by DNS.
    #[default]
    Passthrough,
    /// Answer 404 `no-route`.
    Reject,
}

/// The outbound routes, in order, and what to do when none matches.
#[derive(Debug)]
pub struct RouteTable {
    /// Routes, first match wins; one a reload did not change is shared with the table before.
    pub routes: Vec<Arc<Route>>,
    /// Policy for unmatched requests.
    pub unmatched: Unmatched,
}

impl RouteTable {
    /// The first route the request matches.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Route> {
        self.position(req).map(|i| &*self.routes[i])
    }

    /// The index of the first route the request matches.
    pub fn position(&self, req: &RequestView<'_>) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.spec.matcher.check(req).is_ok())
    }

    /// Every route tried for `req` with the reason each earlier one was passed over, ending at
    /// the first match (for `explain`).
    pub fn trace<'a>(
        &'a self,
        req: &RequestView<'_>,
    ) -> Vec<(&'a Route, Result<(), Mismatch<'a>>)> {
        let mut out = Vec::new();
        for route in &self.routes {
            let result = route.spec.matcher.check(req);
            let matched = result.is_ok();
            out.push((&**route, result));
            if matched {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(matched: &str, replacement: &str) -> Rewrite {
        Rewrite {
            matched: matched.into(),
            replacement: replacement.into(),
        }
    }

    #[test]
    fn rewrite_replaces_prefix_and_keeps_query() {
        assert_eq!(
            rw("/api", "/v2/api").apply("/api/items", Some("a=1")),
            "/v2/api/items?a=1"
        );
        assert_eq!(rw("/api", "/v2/api").apply("/api", None), "/v2/api");
        assert_eq!(rw("/api", "/").apply("/api/items", None), "/items");
        assert_eq!(rw("/api", "/").apply("/api", None), "/");
        assert_eq!(rw("/", "/v2/").apply("/x", None), "/v2/x");
        assert_eq!(rw("/", "/v2").apply("/x", None), "/v2/x");
        assert_eq!(rw("/old", "/new").apply("/old", Some("q")), "/new?q");
    }

    #[test]
    fn header_edits_remove_set_add() {
        let edits = HeaderEdits {
            set: vec![(
                HeaderName::from_static("x-env"),
                HeaderValue::from_static("prod"),
            )],
            add: vec![(
                HeaderName::from_static("x-tag"),
                HeaderValue::from_static("b"),
            )],
            remove: vec![HeaderName::from_static("x-debug")],
        };
        let mut h = HeaderMap::new();
        h.insert("x-env", HeaderValue::from_static("dev"));
        h.insert("x-debug", HeaderValue::from_static("1"));
        h.insert("x-tag", HeaderValue::from_static("a"));
        edits.apply(&mut h);
        assert_eq!(h.get("x-env").unwrap(), "prod");
        assert!(h.get("x-debug").is_none());
        let tags: Vec<_> = h.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
    }
}
