//! The cache on a route's stack, above its action: answers from the store what it may,
//! revalidates what it must, stores what the specification allows, and drops what an unsafe
//! request changed.
//!
//! A request to a route without `cache:` passes straight through (one branch). A stored
//! body is `Bytes` shared by every hit; a response being stored streams to the caller while
//! a copy of at most `max_object_size` bytes is kept ([`crate::body::Tee`]), stored once the
//! body has ended whole; a larger one (by `Content-Length`, or once the copy outgrows the
//! limit) is not kept.

use std::{sync::Arc, time::SystemTime};

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use tower::{Layer, Service};

use super::{
    directives::{Freshness, RequestDirectives, ResponseDirectives},
    freshness::{storable, Reuse, Timed},
    range::{self, Ranged},
    store::{vary_of, Entry, Fetch, Pending, Store},
};
use crate::{
    body::{ProxyBody, Tee},
    context::{stack_service, BoxFuture, Req, Resp, Stage},
    headers::authority,
};

/// How long a miss waits for a concurrent fetch of the same response before fetching itself.
const COALESCE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Puts a route's cache (or none) over its action.
#[derive(Debug, Clone)]
pub struct CacheLayer {
    store: Option<Arc<Store>>,
}

impl CacheLayer {
    /// A layer for `store` (`None`: the route does not cache).
    pub fn new(store: Option<Arc<Store>>) -> Self {
        Self { store }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Cache<S> {
        Cache {
            store: self.store.clone(),
            inner,
        }
    }
}

/// A route's cache over its action.
#[derive(Debug, Clone)]
pub struct Cache<S> {
    store: Option<Arc<Store>>,
    inner: S,
}

/// The primary cache key: authority (lower-cased, without a default port) and path with
/// query.
fn key_of(req: &Request<ProxyBody>) -> String {
    let host = authority(req.uri(), req.headers()).unwrap_or("");
    let host = host
        .strip_suffix(":80")
        .filter(|_| req.uri().scheme_str() != Some("https"))
        .unwrap_or(host);
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    format!("{}{path}", host.to_ascii_lowercase())
}

/// The key a `Location` or `Content-Location` value names, when it is on the request's
/// authority `host` (lower-cased).
fn key_of_location(host: &str, value: &HeaderValue) -> Option<String> {
    let uri: http::Uri = value.to_str().ok()?.parse().ok()?;
    match uri.authority() {
        Some(a) if a.as_str().to_ascii_lowercase() != host => None,
        _ => Some(format!(
            "{host}{}",
            uri.path_and_query().map_or("/", |p| p.as_str())
        )),
    }
}

/// Whether a POST's response to `key` is a representation of `key` itself: a 200 whose
/// `Content-Location` names it, with explicit freshness.
fn represents(resp: &Resp, host: &str, key: &str) -> bool {
    let h = resp.headers();
    let cc = ResponseDirectives::parse(h);
    resp.status() == StatusCode::OK
        && h.get(header::CONTENT_LOCATION)
            .and_then(|v| key_of_location(host, v))
            .is_some_and(|k| k == key)
        && (cc.max_age.present() || cc.s_maxage.present() || h.contains_key(header::EXPIRES))
}

impl<S> Service<Req> for Cache<S>
where
    S: Stage + Clone + Send + 'static,
{
    stack_service!();

    fn call(&mut self, req: Req) -> BoxFuture {
        let Some(store) = self.store.clone() else {
            return self.inner.call(req);
        };
        let method = req.http.method().clone();
        let key = key_of(&req.http);
        let ctx = req.ctx.clone();
        if !matches!(method, Method::GET | Method::HEAD) {
            note(&ctx, &store, Outcome::Uncacheable);
            if matches!(method, Method::OPTIONS | Method::TRACE) {
                return self.inner.call(req);
            }
            // An unsafe method: once it succeeds, what it names is stale (RFC 9111, 4.4).
            let host = authority(req.http.uri(), req.http.headers())
                .unwrap_or("")
                .to_ascii_lowercase();
            let mut inner = self.inner.clone();
            let post = (method == Method::POST).then(|| req.http.headers().clone());
            return Box::pin(async move {
                let request_time = SystemTime::now();
                let resp = inner.call(req).await?;
                let response_time = SystemTime::now();
                if resp.status().is_success() || resp.status().is_redirection() {
                    store.remove(&key);
                    for name in [header::LOCATION, header::CONTENT_LOCATION] {
                        if let Some(k) = resp
                            .headers()
                            .get(&name)
                            .and_then(|v| key_of_location(&host, v))
                        {
                            store.remove(&k);
                        }
                    }
                }
                // A POST's response that says it is the target's current representation,
                // with explicit freshness, answers later GETs of it (RFC 9110, 9.3.3).
                match post {
                    Some(req_headers) if represents(&resp, &host, &key) => {
                        let cc = RequestDirectives::parse(&req_headers);
                        let times = (request_time, response_time);
                        Ok(keep(&store, key, &req_headers, &cc, resp, times, None))
                    }
                    _ => Ok(resp),
                }
            });
        }
        let req_cc = RequestDirectives::parse(req.http.headers());
        let now = SystemTime::now();
        let stored = store.get(&key, req.http.headers());
        let reuse = stored.as_ref().map(|e| timed(e).reuse(&req_cc, now));
        match (&stored, reuse) {
            (Some(entry), Some(Reuse::Fresh)) => {
                note(&ctx, &store, Outcome::Hit);
                return ready(answer(entry, &req.http, now));
            }
            (Some(entry), Some(Reuse::Stale)) => {
                note(&ctx, &store, Outcome::Stale);
                return ready(answer(entry, &req.http, now));
            }
            (Some(entry), Some(Reuse::Revalidate))
                if may_serve_while_revalidating(entry, &req_cc, now) =>
            {
                // RFC 5861, 3: answer stale now, refresh in the background (once per key).
                note(&ctx, &store, Outcome::Stale);
                let resp = answer(entry, &req.http, now);
                if let Fetch::Lead(pending) = store.fetch(&key) {
                    let refresh = background_request(&req, entry);
                    let (store, entry, inner) = (store.clone(), entry.clone(), self.inner.clone());
                    tokio::spawn(refresh_in_background(
                        store, key, entry, refresh, inner, pending,
                    ));
                }
                return ready(resp);
            }
            _ if req_cc.only_if_cached => {
                note(&ctx, &store, Outcome::Miss);
                let mut resp = Response::new(ProxyBody::empty());
                *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                return ready(resp);
            }
            _ => {}
        }
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let mut req = req;
            let head = method == Method::HEAD;
            // Concurrent misses for one key: one goes to the origin, the others wait for
            // its response to be stored.
            let mut lead = None;
            if stored.is_none() && !head && !req_cc.no_cache && !req_cc.no_store {
                match store.fetch(&key) {
                    Fetch::Lead(pending) => lead = Some(pending),
                    Fetch::Follow(mut done) => {
                        let _ = tokio::time::timeout(COALESCE_WAIT, done.changed()).await;
                        let now = SystemTime::now();
                        if let Some(entry) = store.get(&key, req.http.headers()) {
                            if timed(&entry).reuse(&req_cc, now) == Reuse::Fresh {
                                note(&ctx, &store, Outcome::Coalesced);
                                return Ok(answer(&entry, &req.http, now));
                            }
                        }
                    }
                }
            }
            // Revalidate a stored response with its own validators in place of the
            // caller's; the caller's condition is then answered from the refreshed response.
            // One without validators leaves a conditional request as the caller sent it (a
            // 304 would then be about the caller's copy, not the stored one).
            let req_headers = req.http.headers().clone();
            let revalidating =
                stored.filter(|e| !head && (validated(e) || !conditional(req.http.headers())));
            if let Some(entry) = &revalidating {
                conditional_on(req.http.headers_mut(), entry);
            }
            let request_time = SystemTime::now();
            let result = inner.call(req).await;
            let response_time = SystemTime::now();
            if let Some(entry) = &revalidating {
                let stale_if_error = |status: Option<StatusCode>| {
                    status.is_none_or(|s| s.is_server_error())
                        && stale_if_error(entry, &req_cc, response_time)
                };
                match &result {
                    Ok(resp) if resp.status() == StatusCode::NOT_MODIFIED => {
                        note(&ctx, &store, Outcome::Revalidated);
                        let updated = refreshed(entry, resp.headers(), request_time, response_time);
                        let resp =
                            answer(&updated, &request_like(&req_headers, head), response_time);
                        store.insert(&key, updated);
                        return Ok(resp);
                    }
                    Ok(resp) if stale_if_error(Some(resp.status())) => {
                        note(&ctx, &store, Outcome::Stale);
                        return Ok(answer(
                            entry,
                            &request_like(&req_headers, head),
                            response_time,
                        ));
                    }
                    // The origin unreachable (breaker open, no healthy endpoint, refused,
                    // timed out): a disconnected cache may answer stale unless forbidden
                    // (RFC 9111, 4.2.4).
                    Err(_)
                        if stale_if_error(None)
                            || (!stale_forbidden(entry) && !req_cc.no_cache) =>
                    {
                        note(&ctx, &store, Outcome::Stale);
                        return Ok(answer(
                            entry,
                            &request_like(&req_headers, head),
                            response_time,
                        ));
                    }
                    _ => {}
                }
            }
            note(&ctx, &store, Outcome::Miss);
            let resp = result?;
            if head {
                return Ok(resp);
            }
            Ok(keep(
                &store,
                key,
                &req_headers,
                &req_cc,
                resp,
                (request_time, response_time),
                lead,
            ))
        })
    }
}

/// What the cache did with a request: a metric's `result` label and the access log's
/// `cache` field.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Coalesced,
    Uncacheable,
}

/// Counts what the cache did, and tags the request with it for the access log.
fn note(ctx: &crate::context::Ctx, store: &Store, outcome: Outcome) {
    let m = store.metrics();
    let (counter, name) = match outcome {
        Outcome::Hit => (&m.hit, "hit"),
        Outcome::Miss => (&m.miss, "miss"),
        Outcome::Stale => (&m.stale, "stale"),
        Outcome::Revalidated => (&m.revalidated, "revalidated"),
        Outcome::Coalesced => (&m.coalesced, "coalesced"),
        Outcome::Uncacheable => (&m.uncacheable, "uncacheable"),
    };
    counter.inc();
    ctx.tags().cache = Some(name);
}

fn ready(resp: Resp) -> BoxFuture {
    Box::pin(std::future::ready(Ok(resp)))
}

fn timed(e: &Entry) -> Timed<'_> {
    Timed {
        status: e.status,
        headers: &e.headers,
        cc: &e.cc,
        request_time: e.request_time,
        response_time: e.response_time,
    }
}

/// Whether the caller's request is conditional itself.
fn conditional(h: &HeaderMap) -> bool {
    h.contains_key(header::IF_NONE_MATCH) || h.contains_key(header::IF_MODIFIED_SINCE)
}

/// Whether a stored response has a validator to revalidate it with.
fn validated(e: &Entry) -> bool {
    e.headers.contains_key(header::ETAG) || e.headers.contains_key(header::LAST_MODIFIED)
}

/// A request with the caller's header fields, for [`answer`] after the request itself was
/// sent.
fn request_like(headers: &HeaderMap, head: bool) -> Request<ProxyBody> {
    let mut r = Request::new(ProxyBody::empty());
    *r.headers_mut() = headers.clone();
    if head {
        *r.method_mut() = Method::HEAD;
    }
    r
}

/// Whether the response forbids being served stale.
fn stale_forbidden(entry: &Entry) -> bool {
    entry.cc.must_revalidate
        || entry.cc.proxy_revalidate
        || entry.cc.s_maxage.present()
        || entry.cc.no_cache
}

/// Whether `entry`, stale, may answer now while it is refreshed (`stale-while-revalidate`).
fn may_serve_while_revalidating(entry: &Entry, req: &RequestDirectives, now: SystemTime) -> bool {
    let Freshness::Secs(window) = entry.cc.stale_while_revalidate else {
        return false;
    };
    let t = timed(entry);
    let stale = t.age(now).saturating_sub(t.lifetime());
    !req.no_cache
        && !stale_forbidden(entry)
        && req.max_age == Freshness::Absent
        && !req.min_fresh.present()
        && stale <= std::time::Duration::from_secs(window)
}

/// A GET for the same resource as `req`, conditional on `entry`'s validators, with a context
/// of its own (its work is not the caller's request).
fn background_request(req: &Req, entry: &Entry) -> Req {
    let mut http = Request::new(ProxyBody::empty());
    *http.uri_mut() = req.http.uri().clone();
    *http.version_mut() = req.http.version();
    *http.headers_mut() = req.http.headers().clone();
    conditional_on(http.headers_mut(), entry);
    Req::new(http, crate::context::Ctx::new(req.ctx.conn().clone()))
}

/// Makes a request's conditions `entry`'s validators, in place of any it had.
fn conditional_on(h: &mut HeaderMap, entry: &Entry) {
    h.remove(header::IF_NONE_MATCH);
    h.remove(header::IF_MODIFIED_SINCE);
    if let Some(etag) = entry.headers.get(header::ETAG) {
        h.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = entry.headers.get(header::LAST_MODIFIED) {
        h.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

/// Refreshes `entry` from the origin: a 304 updates it, a storable response replaces it (its
/// body read to the end here, as no caller reads it).
async fn refresh_in_background<S: Stage>(
    store: Arc<Store>,
    key: String,
    entry: Arc<Entry>,
    req: Req,
    mut inner: S,
    pending: Pending,
) {
    let req_headers = req.http.headers().clone();
    let request_time = SystemTime::now();
    let Ok(resp) = inner.call(req).await else {
        return;
    };
    let response_time = SystemTime::now();
    if resp.status() == StatusCode::NOT_MODIFIED {
        let updated = refreshed(&entry, resp.headers(), request_time, response_time);
        store.insert(&key, updated);
        return;
    }
    let cc = RequestDirectives::default();
    let resp = keep(
        &store,
        key,
        &req_headers,
        &cc,
        resp,
        (request_time, response_time),
        Some(pending),
    );
    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
}

/// Whether the origin's failure may be answered with `entry` (RFC 5861, 4): the response or
/// the request allows it for this long past freshness, and the response does not forbid
/// stale use.
fn stale_if_error(entry: &Entry, req: &RequestDirectives, now: SystemTime) -> bool {
    let t = timed(entry);
    let stale = t.age(now).saturating_sub(t.lifetime());
    let allowed = match (entry.cc.stale_if_error, req.stale_if_error) {
        (Freshness::Secs(a), Freshness::Secs(b)) => a.max(b),
        (Freshness::Secs(a), _) | (_, Freshness::Secs(a)) => a,
        _ => return false,
    };
    !(entry.cc.must_revalidate || entry.cc.proxy_revalidate || entry.cc.s_maxage.present())
        && stale <= std::time::Duration::from_secs(allowed)
}

/// `entry` as the answer to `req`: its status and headers with its `Age`, its body unless
/// the request is HEAD (or the part of it a `Range` asks for), or 304 when the caller's own
/// validators match it.
fn answer(entry: &Entry, req: &Request<ProxyBody>, now: SystemTime) -> Resp {
    let mut headers = entry.headers.clone();
    let age = timed(entry).age(now).as_secs();
    headers.insert(header::AGE, HeaderValue::from(age));
    if not_modified(entry, req.headers()) {
        let mut resp = Response::new(ProxyBody::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        for name in [
            header::ETAG,
            header::LAST_MODIFIED,
            header::CACHE_CONTROL,
            header::EXPIRES,
            header::VARY,
            header::DATE,
            header::AGE,
            header::CONTENT_LOCATION,
        ] {
            if let Some(v) = headers.get(&name) {
                resp.headers_mut().insert(name, v.clone());
            }
        }
        return resp;
    }
    if req.method() == Method::HEAD {
        let mut resp = Response::new(ProxyBody::empty());
        *resp.status_mut() = entry.status;
        *resp.headers_mut() = headers;
        return resp;
    }
    let len = entry.body.len() as u64;
    let ranged = if entry.status == StatusCode::OK {
        range::select(req.headers(), &entry.headers, len)
    } else {
        Ranged::Whole
    };
    let (status, body) = match ranged {
        Ranged::Whole => (entry.status, entry.body.clone()),
        Ranged::Part(r) => {
            let content_range = format!("bytes {}-{}/{len}", r.start, r.end - 1);
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::try_from(content_range).expect("digits and ASCII"),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(r.end - r.start));
            let part = entry.body.slice(r.start as usize..r.end as usize);
            (StatusCode::PARTIAL_CONTENT, part)
        }
        Ranged::Unsatisfiable => {
            let mut resp = Response::new(ProxyBody::empty());
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let content_range = format!("bytes */{len}");
            resp.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::try_from(content_range).expect("digits and ASCII"),
            );
            return resp;
        }
    };
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Whether the caller's `If-None-Match` (weak comparison) or, without it,
/// `If-Modified-Since` says it has `entry` already (RFC 9110, 13.1).
fn not_modified(entry: &Entry, req: &HeaderMap) -> bool {
    if entry.status != StatusCode::OK {
        return false;
    }
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = entry
            .headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        return inm.trim() == "*" || inm.split(',').any(|t| opaque(t) == opaque(etag));
    }
    let since = req
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    // Without Last-Modified, the stored response's Date, else when it arrived (RFC 9111,
    // 4.3.2).
    let date = |name| {
        entry
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
    };
    let modified = date(header::LAST_MODIFIED)
        .or_else(|| date(header::DATE))
        .unwrap_or(entry.response_time);
    since.is_some_and(|s| modified <= s)
}

/// `entry` with the header fields of a 304 that confirmed it (RFC 9111, 4.3.4).
fn refreshed(
    entry: &Entry,
    update: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Entry {
    let mut headers = entry.headers.clone();
    for name in update.keys() {
        // Framing describes the 304, not the stored body; nor may it change the body's
        // identity or digest.
        if matches!(
            name.as_str(),
            "content-length"
                | "content-encoding"
                | "transfer-encoding"
                | "content-range"
                | "content-md5"
                | "etag"
        ) {
            continue;
        }
        headers.remove(name);
        for v in update.get_all(name) {
            headers.append(name.clone(), v.clone());
        }
    }
    Entry {
        status: entry.status,
        cc: ResponseDirectives::parse(&headers),
        headers,
        body: entry.body.clone(),
        request_time,
        response_time,
        vary: entry.vary.clone(),
    }
}

/// The response on its way to the caller, with a copy kept for the store when it may be
/// stored and is small enough.
fn keep(
    store: &Arc<Store>,
    key: String,
    req_headers: &HeaderMap,
    req_cc: &RequestDirectives,
    resp: Resp,
    (request_time, response_time): (SystemTime, SystemTime),
    lead: Option<Pending>,
) -> Resp {
    let cc = ResponseDirectives::parse(resp.headers());
    let allowed = storable(
        &Method::GET,
        req_headers,
        req_cc,
        resp.status(),
        resp.headers(),
        &cc,
    )
    .is_ok();
    // A response that sets a cookie is one caller's, unless it says a shared cache may
    // reuse it.
    let cookie =
        resp.headers().contains_key(header::SET_COOKIE) && !(cc.public || cc.s_maxage.present());
    let limit = store.settings.max_object_size;
    let too_large = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit);
    if !allowed || cookie || too_large {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let headers = parts.headers.clone();
    let status = parts.status;
    let vary = vary_of(&headers, req_headers);
    let make = move |body: bytes::Bytes| Entry {
        status,
        headers,
        body,
        cc,
        request_time,
        response_time,
        vary,
    };
    if http_body::Body::is_end_stream(&body) {
        store.insert(&key, make(bytes::Bytes::new()));
        return Response::from_parts(parts, body);
    }
    let (tee, copied) = Tee::with_limit(body, limit as usize);
    let store = store.clone();
    tokio::spawn(async move {
        if let Ok(body) = copied.await {
            store.insert(&key, make(body));
        }
        // Those waiting for this fetch look again now.
        drop(lead);
    });
    Response::from_parts(parts, ProxyBody::Tee(tee))
}
