//! Request matching: the conditions of one route (host, path, method, headers, query),
//! compiled once from the control file and checked per request without allocating.

use std::fmt;

use http::{header::HeaderName, HeaderMap, Method};
use regex::Regex;

/// The parts of a request that routes look at, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Host from the absolute URI, `:authority` or `Host`, without port. `None`: no host.
    pub host: Option<&'a str>,
    /// Path, without the query string.
    pub path: &'a str,
    /// Raw query string, without `?`.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// All conditions of one route; every condition present must hold.
#[derive(Debug, Default, PartialEq)]
pub struct RouteMatch {
    /// Host condition.
    pub host: Option<HostMatch>,
    /// Path condition.
    pub path: Option<PathMatch>,
    /// Allowed methods; `None`: any.
    pub methods: Option<Vec<Method>>,
    /// Header conditions.
    pub headers: Vec<(HeaderName, ValueMatch)>,
    /// Query parameter conditions.
    pub query: Vec<(String, ValueMatch)>,
}

/// Host condition, compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// The host equals this (stored lowercase).
    Exact(String),
    /// `*.shop.test`: stored as `.shop.test`; matches `a.shop.test`, not `shop.test`.
    Suffix(String),
}

/// Path condition.
#[derive(Debug)]
pub enum PathMatch {
    /// The path equals this.
    Exact(String),
    /// Segment-aware prefix: `/api` matches `/api`, `/api/`, `/api/x`, not `/apix`.
    Prefix(String),
    /// The regex (anchored at both ends when compiled) matches the whole path.
    Regex(Regex),
}

// Two conditions are the same when they say the same; a regex, when its pattern is the same.
impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PathMatch::Exact(a), PathMatch::Exact(b))
            | (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// Header or query value condition.
#[derive(Debug)]
pub enum ValueMatch {
    /// Equal to this.
    Exact(String),
    /// The anchored regex matches the whole value.
    Regex(Regex),
    /// `true`: present; `false`: absent.
    Present(bool),
}

impl PartialEq for ValueMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ValueMatch::Exact(a), ValueMatch::Exact(b)) => a == b,
            (ValueMatch::Regex(a), ValueMatch::Regex(b)) => a.as_str() == b.as_str(),
            (ValueMatch::Present(a), ValueMatch::Present(b)) => a == b,
            _ => false,
        }
    }
}

/// The first condition of a route that a request failed (for `explain` and debugging).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch<'r> {
    /// The host did not match.
    Host,
    /// The path did not match.
    Path,
    /// The method is not listed.
    Method,
    /// This header's condition failed.
    Header(&'r HeaderName),
    /// This query parameter's condition failed.
    Query(&'r str),
}

impl fmt::Display for Mismatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Host => f.write_str("host does not match"),
            Mismatch::Path => f.write_str("path does not match"),
            Mismatch::Method => f.write_str("method is not listed"),
            Mismatch::Header(h) => write!(f, "header {h} does not match"),
            Mismatch::Query(q) => write!(f, "query parameter {q} does not match"),
        }
    }
}

// === impl RouteMatch ===

impl RouteMatch {
    /// `Ok` when the request meets every condition, else the first one it failed.
    pub fn check(&self, req: &RequestView<'_>) -> Result<(), Mismatch<'_>> {
        if let Some(host) = &self.host {
            if !req.host.is_some_and(|h| host.matches(h)) {
                return Err(Mismatch::Host);
            }
        }
        if let Some(path) = &self.path {
            if !path.matches(req.path) {
                return Err(Mismatch::Path);
            }
        }
        if let Some(methods) = &self.methods {
            if !methods.contains(req.method) {
                return Err(Mismatch::Method);
            }
        }
        for (name, cond) in &self.headers {
            let mut values = req.headers.get_all(name).iter().peekable();
            let ok = match cond {
                ValueMatch::Present(want) => values.peek().is_some() == *want,
                _ => values.any(|v| v.to_str().is_ok_and(|v| cond.matches_value(v))),
            };
            if !ok {
                return Err(Mismatch::Header(name));
            }
        }
        for (name, cond) in &self.query {
            let mut values = query_values(req.query, name).peekable();
            let ok = match cond {
                ValueMatch::Present(want) => values.peek().is_some() == *want,
                _ => values.any(|v| cond.matches_value(v)),
            };
            if !ok {
                return Err(Mismatch::Query(name));
            }
        }
        Ok(())
    }
}

/// The raw values of query parameter `name` (a parameter without `=` has the value "").
fn query_values<'a>(query: Option<&'a str>, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query.unwrap_or("").split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

// === impl HostMatch ===

impl HostMatch {
    /// Parses `name` or `*.suffix`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        if lower.is_empty() {
            return Err("host must not be empty".into());
        }
        if let Some(suffix) = lower.strip_prefix('*') {
            if !suffix.starts_with('.') || suffix.len() < 2 || suffix[1..].contains('*') {
                return Err(format!(
                    "invalid host pattern {text:?}: a wildcard must be a leading \"*.\""
                ));
            }
            return Ok(HostMatch::Suffix(suffix.to_owned()));
        }
        if lower.contains('*') {
            return Err(format!(
                "invalid host pattern {text:?}: a wildcard must be a leading \"*.\""
            ));
        }
        if lower.contains(['/', ' ']) {
            return Err(format!("invalid host {text:?}"));
        }
        Ok(HostMatch::Exact(lower))
    }

    /// Whether `host` (without port) matches, ignoring ASCII case.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

pub use crate::headers::host_without_port;

// === impl PathMatch ===

impl PathMatch {
    /// Whether `path` (without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => prefix_matches(p, path),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// Segment-aware prefix test: `/api` covers `/api`, `/api/`, `/api/x`, not `/apix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

// === impl ValueMatch ===

impl ValueMatch {
    fn matches_value(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => v == e,
            ValueMatch::Regex(r) => r.is_match(v),
            ValueMatch::Present(want) => *want,
        }
    }
}

/// Compiles a regex that must match a whole string.
pub fn anchored_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        // The regex crate's message spans several lines; keep the last, most specific one.
        let msg = e.to_string();
        let last = msg
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or(&msg);
        format!(
            "invalid regex {pattern:?}: {}",
            last.trim().trim_start_matches("error: ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        method: &'a Method,
        host: &'a str,
        pq: &'a str,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        let (path, query) = match pq.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pq, None),
        };
        RequestView {
            method,
            host: Some(host),
            path,
            query,
            headers,
        }
    }

    #[test]
    fn host_exact_and_suffix() {
        let exact = HostMatch::parse("Inventory").unwrap();
        assert!(exact.matches("inventory"));
        assert!(exact.matches("INVENTORY"));
        assert!(!exact.matches("inventory2"));
        let suffix = HostMatch::parse("*.shop.test").unwrap();
        assert!(suffix.matches("a.shop.test"));
        assert!(suffix.matches("a.b.SHOP.test"));
        assert!(!suffix.matches("shop.test"));
        assert!(!suffix.matches("xshop.test"));
        assert!(HostMatch::parse("a.*.test").is_err());
        assert!(HostMatch::parse("*shop").is_err());
    }

    #[test]
    fn strips_ports() {
        assert_eq!(host_without_port("a.b:8080"), "a.b");
        assert_eq!(host_without_port("a.b"), "a.b");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }

    #[test]
    fn prefix_is_segment_aware() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn regex_matches_whole_path() {
        let m = PathMatch::Regex(anchored_regex("/users/[0-9]+").unwrap());
        assert!(m.matches("/users/42"));
        assert!(!m.matches("/users/42/x"));
        assert!(!m.matches("/x/users/42"));
        assert!(anchored_regex("(").unwrap_err().contains("invalid regex"));
    }

    #[test]
    fn headers_query_and_method() {
        let mut headers = HeaderMap::new();
        headers.insert("x-canary", "true".parse().unwrap());
        let m = RouteMatch {
            methods: Some(vec![Method::GET]),
            headers: vec![(
                HeaderName::from_static("x-canary"),
                ValueMatch::Exact("true".into()),
            )],
            query: vec![
                ("debug".into(), ValueMatch::Present(true)),
                (
                    "v".into(),
                    ValueMatch::Regex(anchored_regex("[0-9]").unwrap()),
                ),
            ],
            ..Default::default()
        };
        let get = Method::GET;
        assert_eq!(m.check(&view(&get, "h", "/?debug&v=2", &headers)), Ok(()));
        assert_eq!(
            m.check(&view(&get, "h", "/?v=2", &headers)),
            Err(Mismatch::Query("debug"))
        );
        assert_eq!(
            m.check(&view(&get, "h", "/?debug=1&v=22", &headers)),
            Err(Mismatch::Query("v"))
        );
        let post = Method::POST;
        assert_eq!(
            m.check(&view(&post, "h", "/?debug&v=2", &headers)),
            Err(Mismatch::Method)
        );
        let empty = HeaderMap::new();
        assert!(matches!(
            m.check(&view(&get, "h", "/?debug&v=2", &empty)),
            Err(Mismatch::Header(_))
        ));
    }

    #[test]
    fn absent_header_condition() {
        let m = RouteMatch {
            headers: vec![(
                HeaderName::from_static("x-debug"),
                ValueMatch::Present(false),
            )],
            ..Default::default()
        };
        let get = Method::GET;
        let mut headers = HeaderMap::new();
        assert_eq!(m.check(&view(&get, "h", "/", &headers)), Ok(()));
        headers.insert("x-debug", "1".parse().unwrap());
        assert!(m.check(&view(&get, "h", "/", &headers)).is_err());
    }
}
