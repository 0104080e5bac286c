//! Storing and reusing responses (RFC 9111, 3 and 4.2) for a shared cache: whether a
//! response may be stored, how long it stays fresh, how old it is, and whether a stored
//! response may answer a request as it is.

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, Method, StatusCode};

use super::directives::{Freshness, RequestDirectives, ResponseDirectives, MAX_DELTA};

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncacheable {
    /// Only GET responses are stored (HEAD is answered from them).
    Method,
    /// 1xx, 206 and 304 are not stored; some other statuses only with explicit freshness.
    Status,
    /// `no-store` in the request or the response.
    NoStore,
    /// `private`: for the client's own cache only.
    Private,
    /// The request had `Authorization`, and the response did not say a shared cache may
    /// reuse it (`public`, `s-maxage` or `must-revalidate`).
    Authorization,
    /// `Vary: *`: no later request can be known to match.
    VaryAll,
    /// Nothing says how long it stays fresh, and its status is not heuristically cacheable.
    NoFreshness,
}

/// Statuses a cache may give heuristic freshness (RFC 9110, 15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Statuses whose meaning this cache understands, for `must-understand`.
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Whether a shared cache may store the response (`status`, `resp`) to a `method` request
/// with headers `req` (RFC 9111, 3).
pub fn storable(
    method: &Method,
    req: &HeaderMap,
    req_cc: &RequestDirectives,
    status: StatusCode,
    resp: &HeaderMap,
    cc: &ResponseDirectives,
) -> Result<(), Uncacheable> {
    if method != Method::GET {
        return Err(Uncacheable::Method);
    }
    if status.is_informational() || matches!(status.as_u16(), 206 | 304) {
        return Err(Uncacheable::Status);
    }
    if cc.must_understand {
        // A cache that understands the status ignores no-store (RFC 9111, 5.2.2.3).
        if !understood(status) {
            return Err(Uncacheable::Status);
        }
    } else if cc.no_store {
        return Err(Uncacheable::NoStore);
    }
    if req_cc.no_store {
        return Err(Uncacheable::NoStore);
    }
    if cc.private {
        return Err(Uncacheable::Private);
    }
    if req.contains_key(header::AUTHORIZATION)
        && !(cc.public || cc.must_revalidate || cc.s_maxage.present())
    {
        return Err(Uncacheable::Authorization);
    }
    if vary_names(resp).any(|n| n == "*") {
        return Err(Uncacheable::VaryAll);
    }
    let explicit = cc.public
        || cc.max_age.present()
        || cc.s_maxage.present()
        || resp.contains_key(header::EXPIRES);
    if !explicit && !heuristically_cacheable(status) {
        return Err(Uncacheable::NoFreshness);
    }
    Ok(())
}

/// The lower-cased field names a response's `Vary` lists.
pub fn vary_names(resp: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    resp.get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
}

/// An HTTP date header's value, when there is exactly one and it parses.
fn date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    httpdate::parse_http_date(first.to_str().ok()?).ok()
}

/// A stored response's head and the times that fix its age.
#[derive(Debug, Clone)]
pub struct Timed<'a> {
    /// Its status.
    pub status: StatusCode,
    /// Its header fields.
    pub headers: &'a HeaderMap,
    /// Its `Cache-Control`.
    pub cc: &'a ResponseDirectives,
    /// When the request that got it was sent.
    pub request_time: SystemTime,
    /// When it was received.
    pub response_time: SystemTime,
}

impl Timed<'_> {
    /// How long it is fresh from its origin (RFC 9111, 4.2.1): `s-maxage`, else `max-age`,
    /// else `Expires` minus `Date`, else, for a heuristically cacheable status (or `public`)
    /// with `Last-Modified`, a tenth of the time since it was last modified. A malformed or
    /// conflicting directive, or an `Expires` that does not parse, is a lifetime of zero.
    pub fn lifetime(&self) -> Duration {
        let secs = |s: u64| Duration::from_secs(s.min(MAX_DELTA));
        for directive in [self.cc.s_maxage, self.cc.max_age] {
            match directive {
                Freshness::Secs(s) => return secs(s),
                Freshness::Invalid => return Duration::ZERO,
                Freshness::Absent => {}
            }
        }
        let served = date(self.headers, header::DATE).unwrap_or(self.response_time);
        if self.headers.contains_key(header::EXPIRES) {
            return date(self.headers, header::EXPIRES)
                .and_then(|e| e.duration_since(served).ok())
                .unwrap_or(Duration::ZERO);
        }
        if heuristically_cacheable(self.status) || self.cc.public {
            if let Some(modified) = date(self.headers, header::LAST_MODIFIED) {
                return served
                    .duration_since(modified)
                    .map(|d| d / 10)
                    .unwrap_or(Duration::ZERO);
            }
        }
        Duration::ZERO
    }

    /// Its age at `now` (RFC 9111, 4.2.3), from its `Age` and `Date` and the time it spent
    /// in transit and in this cache.
    pub fn age(&self, now: SystemTime) -> Duration {
        let since = |a: SystemTime, b: SystemTime| a.duration_since(b).unwrap_or(Duration::ZERO);
        // One `Age` of digits; anything else (a list, a sign, a fraction, a parameter) makes
        // the response as old as can be: stale.
        let mut ages = self.headers.get_all(header::AGE).iter();
        let age_value = match (ages.next(), ages.next()) {
            (None, _) => Duration::ZERO,
            (Some(v), None) => match v.to_str().map(str::trim) {
                Ok(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
                    Duration::from_secs(t.parse::<u64>().map_or(MAX_DELTA, |s| s.min(MAX_DELTA)))
                }
                _ => Duration::from_secs(MAX_DELTA),
            },
            (Some(_), Some(_)) => Duration::from_secs(MAX_DELTA),
        };
        let date_value = date(self.headers, header::DATE).unwrap_or(self.response_time);
        let apparent_age = since(self.response_time, date_value);
        let response_delay = since(self.response_time, self.request_time);
        let corrected_initial_age = apparent_age.max(age_value + response_delay);
        corrected_initial_age + since(now, self.response_time)
    }

    /// Whether it may answer a request with directives `req` at `now` as it is, or needs
    /// the origin first (RFC 9111, 4.2 and 5.2.1).
    pub fn reuse(&self, req: &RequestDirectives, now: SystemTime) -> Reuse {
        if self.cc.no_cache || req.no_cache {
            return Reuse::Revalidate;
        }
        let (lifetime, age) = (self.lifetime(), self.age(now));
        if let Freshness::Secs(max) = req.max_age {
            if age > Duration::from_secs(max) {
                return Reuse::Revalidate;
            }
        } else if req.max_age == Freshness::Invalid {
            return Reuse::Revalidate;
        }
        let left = lifetime.checked_sub(age);
        let min_fresh = match req.min_fresh {
            Freshness::Secs(s) => Duration::from_secs(s),
            Freshness::Invalid => return Reuse::Revalidate,
            Freshness::Absent => Duration::ZERO,
        };
        match left {
            Some(left) if left > Duration::ZERO && left >= min_fresh => Reuse::Fresh,
            _ if req.min_fresh.present() && left.is_some_and(|l| l > Duration::ZERO) => {
                Reuse::Revalidate
            }
            _ => {
                let stale = age.saturating_sub(lifetime);
                let may_serve_stale = !(self.cc.must_revalidate
                    || self.cc.proxy_revalidate
                    || self.cc.s_maxage.present());
                match req.max_stale {
                    Some(allowed) if may_serve_stale && stale <= Duration::from_secs(allowed) => {
                        Reuse::Stale
                    }
                    _ => Reuse::Revalidate,
                }
            }
        }
    }
}

/// Whether a stored response may answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// It is fresh enough for the request.
    Fresh,
    /// It is stale, and the request accepts that (`max-stale`).
    Stale,
    /// The origin must be asked first (conditionally, when it has validators).
    Revalidate,
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn headers(pairs: &[(&str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn http_date(secs: u64) -> String {
        httpdate::fmt_http_date(at(secs))
    }

    fn timed<'a>(h: &'a HeaderMap, cc: &'a ResponseDirectives) -> Timed<'a> {
        Timed {
            status: StatusCode::OK,
            headers: h,
            cc,
            request_time: at(T0),
            response_time: at(T0),
        }
    }

    fn can_store(
        req: &[(&str, String)],
        status: u16,
        resp: &[(&str, String)],
    ) -> Result<(), Uncacheable> {
        let (req, resp) = (headers(req), headers(resp));
        storable(
            &Method::GET,
            &req,
            &RequestDirectives::parse(&req),
            StatusCode::from_u16(status).unwrap(),
            &resp,
            &ResponseDirectives::parse(&resp),
        )
    }

    #[test]
    fn what_a_shared_cache_may_store() {
        let cc = |v: &str| ("cache-control", v.to_owned());
        assert_eq!(can_store(&[], 200, &[]), Ok(()));
        assert_eq!(
            can_store(&[], 200, &[cc("no-store")]),
            Err(Uncacheable::NoStore)
        );
        assert_eq!(
            can_store(&[cc("no-store")], 200, &[]),
            Err(Uncacheable::NoStore)
        );
        assert_eq!(
            can_store(&[], 200, &[cc("private, max-age=60")]),
            Err(Uncacheable::Private)
        );
        assert_eq!(can_store(&[], 302, &[]), Err(Uncacheable::NoFreshness));
        assert_eq!(can_store(&[], 302, &[cc("max-age=60")]), Ok(()));
        assert_eq!(
            can_store(&[], 206, &[cc("max-age=60")]),
            Err(Uncacheable::Status)
        );
        assert_eq!(
            can_store(&[], 200, &[("vary", "Accept, *".into())]),
            Err(Uncacheable::VaryAll)
        );
        let auth = [("authorization", "Bearer x".to_owned())];
        assert_eq!(
            can_store(&auth, 200, &[cc("max-age=60")]),
            Err(Uncacheable::Authorization)
        );
        assert_eq!(can_store(&auth, 200, &[cc("s-maxage=60")]), Ok(()));
        assert_eq!(can_store(&auth, 200, &[cc("public")]), Ok(()));
        // must-understand with an understood status overrides no-store.
        assert_eq!(
            can_store(&[], 200, &[cc("must-understand, no-store, max-age=5")]),
            Ok(())
        );
        assert_eq!(
            can_store(&[], 299, &[cc("must-understand, no-store, max-age=5")]),
            Err(Uncacheable::Status)
        );
    }

    #[test]
    fn lifetime_by_precedence() {
        let h = headers(&[
            ("cache-control", "max-age=60, s-maxage=30".into()),
            ("expires", http_date(T0 + 600)),
            ("date", http_date(T0)),
        ]);
        let cc = ResponseDirectives::parse(&h);
        assert_eq!(timed(&h, &cc).lifetime(), Duration::from_secs(30));
        let h = headers(&[("expires", http_date(T0 + 600)), ("date", http_date(T0))]);
        let cc = ResponseDirectives::parse(&h);
        assert_eq!(timed(&h, &cc).lifetime(), Duration::from_secs(600));
        // An Expires that does not parse means already expired.
        let h = headers(&[("expires", "0".into())]);
        let cc = ResponseDirectives::parse(&h);
        assert_eq!(timed(&h, &cc).lifetime(), Duration::ZERO);
        // Heuristic: a tenth of the time since Last-Modified.
        let h = headers(&[
            ("last-modified", http_date(T0 - 1000)),
            ("date", http_date(T0)),
        ]);
        let cc = ResponseDirectives::parse(&h);
        assert_eq!(timed(&h, &cc).lifetime(), Duration::from_secs(100));
        // A malformed max-age is stale, whatever Expires says.
        let h = headers(&[
            ("cache-control", "max-age=1.5".into()),
            ("expires", http_date(T0 + 600)),
        ]);
        let cc = ResponseDirectives::parse(&h);
        assert_eq!(timed(&h, &cc).lifetime(), Duration::ZERO);
    }

    #[test]
    fn age_counts_the_origin_the_transit_and_the_stay() {
        let h = headers(&[("age", "10".into()), ("date", http_date(T0 - 5))]);
        let cc = ResponseDirectives::parse(&h);
        let t = Timed {
            request_time: at(T0 - 2),
            ..timed(&h, &cc)
        };
        // max(apparent 5, 10 + 2 in transit) + 30 here.
        assert_eq!(t.age(at(T0 + 30)), Duration::from_secs(42));
        // An Age that is not one number makes the response stale.
        for bad in ["abc", "-1", "1.5", "10, 10", "10;a=b"] {
            let h = headers(&[
                ("age", bad.into()),
                ("cache-control", "max-age=3600".into()),
            ]);
            let cc = ResponseDirectives::parse(&h);
            let t = timed(&h, &cc);
            assert_eq!(
                t.reuse(&RequestDirectives::default(), at(T0)),
                Reuse::Revalidate,
                "{bad}"
            );
        }
    }

    #[test]
    fn reuse_follows_the_request_directives() {
        let h = headers(&[
            ("cache-control", "max-age=100".into()),
            ("date", http_date(T0)),
        ]);
        let cc = ResponseDirectives::parse(&h);
        let t = timed(&h, &cc);
        let req = |v: &str| RequestDirectives::parse(&headers(&[("cache-control", v.to_owned())]));
        let none = RequestDirectives::default();
        assert_eq!(t.reuse(&none, at(T0 + 50)), Reuse::Fresh);
        assert_eq!(t.reuse(&none, at(T0 + 150)), Reuse::Revalidate);
        assert_eq!(t.reuse(&req("max-age=10"), at(T0 + 50)), Reuse::Revalidate);
        assert_eq!(
            t.reuse(&req("min-fresh=60"), at(T0 + 50)),
            Reuse::Revalidate
        );
        assert_eq!(t.reuse(&req("no-cache"), at(T0 + 1)), Reuse::Revalidate);
        assert_eq!(t.reuse(&req("max-stale=100"), at(T0 + 150)), Reuse::Stale);
        assert_eq!(t.reuse(&req("max-stale"), at(T0 + 9999)), Reuse::Stale);
        assert_eq!(
            t.reuse(&req("max-stale=10"), at(T0 + 150)),
            Reuse::Revalidate
        );
        // must-revalidate: never stale, whatever the client accepts.
        let h = headers(&[
            ("cache-control", "max-age=100, must-revalidate".into()),
            ("date", http_date(T0)),
        ]);
        let cc = ResponseDirectives::parse(&h);
        assert_eq!(
            timed(&h, &cc).reuse(&req("max-stale"), at(T0 + 150)),
            Reuse::Revalidate
        );
        // no-cache on the response: always ask the origin.
        let h = headers(&[("cache-control", "max-age=100, no-cache".into())]);
        let cc = ResponseDirectives::parse(&h);
        assert_eq!(timed(&h, &cc).reuse(&none, at(T0 + 1)), Reuse::Revalidate);
    }
}
