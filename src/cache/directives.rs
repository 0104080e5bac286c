//! `Cache-Control` directives (RFC 9111, 5.2), of responses and of requests.
//!
//! Malformed input is treated as the specification advises, leaning towards not serving
//! stale content: a freshness directive whose value is not a delta-seconds (`max-age=1.5`,
//! `max-age=-1`, `max-age=` ) makes the response stale (it is marked [`Freshness::Invalid`]);
//! when a directive appears twice with different values the response is stale too (the
//! first of equal ones is used); values too large for the cache are 2^31 seconds (1.2.2).
//! Directive names are case-insensitive; a quoted value (`max-age="60"`) is accepted, as the
//! grammar allows.

use http::{header::CACHE_CONTROL, HeaderMap};

/// RFC 9111, 1.2.2: the greatest delta-seconds a cache need represent.
pub const MAX_DELTA: u64 = 2_147_483_648;

/// A freshness value of a directive: absent, given, or given in a form that cannot be used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Freshness {
    /// Not given.
    #[default]
    Absent,
    /// Seconds.
    Secs(u64),
    /// Malformed or conflicting: treat the response as stale.
    Invalid,
}

impl Freshness {
    /// Seconds when given and valid.
    pub fn secs(self) -> Option<u64> {
        match self {
            Freshness::Secs(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the directive is there at all.
    pub fn present(self) -> bool {
        self != Freshness::Absent
    }

    fn merge(&mut self, value: Freshness) {
        *self = match (*self, value) {
            (Freshness::Absent, v) => v,
            (Freshness::Secs(a), Freshness::Secs(b)) if a == b => Freshness::Secs(a),
            _ => Freshness::Invalid,
        };
    }
}

/// A response's directives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    /// `max-age`.
    pub max_age: Freshness,
    /// `s-maxage` (shared caches only; implies `proxy-revalidate`).
    pub s_maxage: Freshness,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (unqualified: revalidate every time; with field names: store without them).
    pub no_cache: bool,
    /// `private` (unqualified: a shared cache must not store it).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `must-understand`.
    pub must_understand: bool,
    /// `no-transform`.
    pub no_transform: bool,
    /// `immutable` (RFC 8246).
    pub immutable: bool,
    /// `stale-while-revalidate` (RFC 5861).
    pub stale_while_revalidate: Freshness,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Freshness,
}

/// A request's directives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `max-age`: the client accepts a response no older than this.
    pub max_age: Freshness,
    /// `max-stale`: the client accepts a response stale by up to this (`Some(MAX_DELTA)`
    /// when given without a value: any staleness).
    pub max_stale: Option<u64>,
    /// `min-fresh`: the response must stay fresh at least this much longer.
    pub min_fresh: Freshness,
    /// `no-cache`: do not answer from the cache without revalidating.
    pub no_cache: bool,
    /// `no-store`: do not store the request or its response.
    pub no_store: bool,
    /// `only-if-cached`: answer from the cache or with 504.
    pub only_if_cached: bool,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Freshness,
}

/// One directive: lower-cased name and its value, unquoted.
fn items(headers: &HeaderMap) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        for item in split_outside_quotes(text) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
                None => (item, None),
            };
            out.push((name.to_ascii_lowercase(), value));
        }
    }
    out
}

fn split_outside_quotes(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_owned(),
    }
}

/// A delta-seconds value: digits only, capped at [`MAX_DELTA`].
fn delta(value: Option<&str>) -> Freshness {
    match value {
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            Freshness::Secs(v.parse::<u64>().map_or(MAX_DELTA, |s| s.min(MAX_DELTA)))
        }
        _ => Freshness::Invalid,
    }
}

impl ResponseDirectives {
    /// The directives of a response's `Cache-Control` header fields.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for (name, value) in items(headers) {
            let v = value.as_deref();
            match name.as_str() {
                "max-age" => d.max_age.merge(delta(v)),
                "s-maxage" => d.s_maxage.merge(delta(v)),
                "no-store" => d.no_store = true,
                // A field-name list (`no-cache="set-cookie"`) still forbids reusing those
                // fields without revalidation; without storing per field, the whole
                // response is revalidated, the conservative reading.
                "no-cache" => d.no_cache = true,
                // Likewise `private="x"`: a shared cache may store the rest, or nothing.
                "private" => d.private = true,
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "must-understand" => d.must_understand = true,
                "no-transform" => d.no_transform = true,
                "immutable" => d.immutable = true,
                "stale-while-revalidate" => d.stale_while_revalidate.merge(delta(v)),
                "stale-if-error" => d.stale_if_error.merge(delta(v)),
                _ => {}
            }
        }
        d
    }
}

impl RequestDirectives {
    /// The directives of a request's `Cache-Control` header fields (and `Pragma: no-cache`
    /// when it has none, RFC 9111, 5.4).
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        let all = items(headers);
        for (name, value) in &all {
            let v = value.as_deref();
            match name.as_str() {
                "max-age" => d.max_age.merge(delta(v)),
                "max-stale" => {
                    let secs = match v {
                        None => Some(MAX_DELTA),
                        Some(_) => delta(v).secs(),
                    };
                    // A malformed max-stale grants nothing.
                    d.max_stale = match (d.max_stale, secs) {
                        (None, s) => s,
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (Some(_), None) => Some(0),
                    };
                }
                "min-fresh" => d.min_fresh.merge(delta(v)),
                "no-cache" => d.no_cache = true,
                "no-store" => d.no_store = true,
                "only-if-cached" => d.only_if_cached = true,
                "stale-if-error" => d.stale_if_error.merge(delta(v)),
                _ => {}
            }
        }
        if all.is_empty() {
            d.no_cache = headers
                .get_all(http::header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| {
                    v.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case("no-cache"))
                });
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CACHE_CONTROL, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn response_directives_and_their_values() {
        let d =
            ResponseDirectives::parse(&cc(&["Max-Age=60, s-maxage=\"30\"", "public, no-cache"]));
        assert_eq!(d.max_age, Freshness::Secs(60));
        assert_eq!(d.s_maxage, Freshness::Secs(30));
        assert!(d.public && d.no_cache && !d.no_store);
        // Quoted commas do not split directives.
        let d = ResponseDirectives::parse(&cc(&["private=\"a, b\", max-age=5"]));
        assert!(d.private);
        assert_eq!(d.max_age, Freshness::Secs(5));
    }

    #[test]
    fn malformed_and_conflicting_freshness_is_stale() {
        for bad in [
            "max-age=1.5",
            "max-age=-1",
            "max-age=",
            "max-age",
            "max-age=abc",
        ] {
            assert_eq!(
                ResponseDirectives::parse(&cc(&[bad])).max_age,
                Freshness::Invalid,
                "{bad}"
            );
        }
        assert_eq!(
            ResponseDirectives::parse(&cc(&["max-age=10, max-age=20"])).max_age,
            Freshness::Invalid
        );
        assert_eq!(
            ResponseDirectives::parse(&cc(&["max-age=10", "max-age=10"])).max_age,
            Freshness::Secs(10)
        );
        assert_eq!(
            ResponseDirectives::parse(&cc(&["max-age=99999999999999999999"])).max_age,
            Freshness::Secs(MAX_DELTA)
        );
    }

    #[test]
    fn request_directives() {
        let d = RequestDirectives::parse(&cc(&["max-stale, min-fresh=10, only-if-cached"]));
        assert_eq!(d.max_stale, Some(MAX_DELTA));
        assert_eq!(d.min_fresh, Freshness::Secs(10));
        assert!(d.only_if_cached);
        assert_eq!(
            RequestDirectives::parse(&cc(&["max-stale=x"])).max_stale,
            None
        );
        let mut pragma = HeaderMap::new();
        pragma.insert(http::header::PRAGMA, "no-cache".parse().unwrap());
        assert!(RequestDirectives::parse(&pragma).no_cache);
        // Cache-Control, when there, wins over Pragma.
        pragma.insert(CACHE_CONTROL, "max-age=5".parse().unwrap());
        assert!(!RequestDirectives::parse(&pragma).no_cache);
    }
}
