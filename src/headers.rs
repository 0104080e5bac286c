//! HTTP header hygiene between hops, for the listeners and the client alike:
//! request-smuggling checks, hop-by-hop removal (RFC 9110 §7.6.1), `x-forwarded-*`, and
//! upgrade detection.

use http::{
    header::{self, HeaderName},
    HeaderMap, HeaderValue, Method, Version,
};

use crate::error::ProxyError;

/// Hop-by-hop headers that are never forwarded (besides those `Connection` lists), in the
/// order of their bits in [`hop_bit`]'s answer.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    // Ours: it describes one sidecar-to-sidecar hop.
    ORIG_PROTO,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
];
const TE_BIT: u16 = 1 << 7;
const UPGRADE_BIT: u16 = 1 << 8;

/// Refuses framing that two parsers could read differently (request smuggling):
/// `Content-Length` together with `Transfer-Encoding`, or differing `Content-Length`s.
pub fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    check_host(headers)?;
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if headers.contains_key(header::TRANSFER_ENCODING) {
            return Err(ProxyError::BadRequest(
                "both content-length and transfer-encoding",
            ));
        }
        if lengths.any(|v| v != first) || first.as_bytes().contains(&b',') {
            return Err(ProxyError::BadRequest("conflicting content-length values"));
        }
    }
    Ok(())
}

/// Whether this is an HTTP/1.1 `Upgrade` request (WebSocket and the like).
pub fn is_upgrade(version: Version, method: &Method, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && method != Method::CONNECT
        && headers.contains_key(header::UPGRADE)
        && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers. With `upgrade`, keeps `Upgrade` and sends `Connection: upgrade`.
/// `TE: trailers` is kept (gRPC needs it); other `TE` values are dropped.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names (standard ones compare as enum tags) finds which hop-by-hop
    // headers are present; only those are looked up again. Most requests carry none, and most
    // responses only `Connection: keep-alive`, so this is one lookup where a removal of each
    // name was ten.
    let present = headers.keys().fold(0, |bits, name| bits | hop_bit(name));
    if present == 0 && !upgrade {
        return;
    }
    if present & 1 != 0 {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // `keep-alive` is in HOP_BY_HOP: removed below when present.
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in listed {
            if !(upgrade && name == header::UPGRADE) {
                headers.remove(&name);
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if present & TE_BIT != 0 {
        let trailers = headers.get(header::TE).is_some_and(|te| {
            te.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & UPGRADE_BIT != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// Headers whose values h2's HPACK encoder never puts in its table (nghttp2's list): they
/// pin nothing, so [`own_values`] leaves them where they are.
static NEVER_INDEXED: [HeaderName; 9] = [
    header::CONTENT_LENGTH,
    header::AGE,
    header::AUTHORIZATION,
    header::ETAG,
    header::IF_MODIFIED_SINCE,
    header::IF_NONE_MATCH,
    header::LOCATION,
    header::COOKIE,
    header::SET_COOKIE,
];

/// What [`own_values`] allocates for a message's values at first: a typical response's
/// (`date`, `server`, `content-type`) fit several times over.
const OWN_VALUES_ROOM: usize = 256;

/// Moves `headers`' values into one small buffer of their own, for a message an HTTP/2
/// connection sends on. The values a parser made are slices of its read buffer (8 KiB or
/// more), and the HPACK encoder keeps each value it indexes for the connection's life: without
/// this, every idle HTTP/2 connection would pin the read buffer of the last connection its
/// headers came from. One allocation and a copy of the values' bytes (a few hundred).
pub fn own_values(headers: &mut HeaderMap) {
    // One pass: each value is appended to `buf` and split off it, so the values share its
    // allocation (a new one only if they outgrow it).
    let mut buf = bytes::BytesMut::new();
    for (name, v) in headers.iter_mut() {
        if v.is_empty() || NEVER_INDEXED.contains(name) {
            continue;
        }
        if buf.capacity() == 0 {
            buf.reserve(OWN_VALUES_ROOM.max(v.len()));
        }
        buf.extend_from_slice(v.as_bytes());
        // The bytes were a valid value a moment ago, so this cannot fail; if it did, the
        // value would simply stay where it was.
        if let Ok(mut own) = HeaderValue::from_maybe_shared(buf.split().freeze()) {
            own.set_sensitive(v.is_sensitive());
            *v = own;
        }
    }
}

/// The bit of a hop-by-hop header's name: its index in [`HOP_BY_HOP`], or `TE_BIT` or
/// `UPGRADE_BIT`; 0 for an end-to-end header.
fn hop_bit(name: &HeaderName) -> u16 {
    if name == header::TE {
        return TE_BIT;
    }
    if name == header::UPGRADE {
        return UPGRADE_BIT;
    }
    HOP_BY_HOP
        .iter()
        .position(|h| h == name)
        .map_or(0, |i| 1 << i)
}

/// The caller's address as an `x-forwarded-for` entry; made once per connection, so a request
/// that arrives without the header gets it without an allocation.
pub fn forwarded_for(client_ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client_ip.to_string()).expect("an IP address is a valid header value")
}

/// Appends the caller's address (`client`, from [`forwarded_for`]) to `x-forwarded-for` and
/// sets `x-forwarded-proto` when absent.
pub fn add_forwarded(headers: &mut HeaderMap, client: &HeaderValue, proto: &'static str) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    // Entries, so each custom name is hashed once (a lookup and an insert hashed it twice).
    match headers.entry(XFF) {
        header::Entry::Vacant(e) => {
            e.insert(client.clone());
        }
        header::Entry::Occupied(mut e) => {
            let mut value = String::with_capacity(64);
            for p in e.iter().filter_map(|v| v.to_str().ok()) {
                value.push_str(p);
                value.push_str(", ");
            }
            value.push_str(client.to_str().unwrap_or_default());
            e.insert(HeaderValue::from_str(&value).unwrap_or_else(|_| client.clone()));
        }
    }
    headers
        .entry(XFP)
        .or_insert_with(|| HeaderValue::from_static(proto));
}

/// The host part of an authority: `a.b:80` → `a.b`, `[::1]:80` → `[::1]`.
pub fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// A request's authority: the URI's (absolute form, HTTP/2's `:authority`), else `Host`.
pub fn authority<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// The header that carries an mTLS caller's verified identity to the app. Whatever a caller
/// sends under this name is removed first.
pub const CLIENT_ID: HeaderName = HeaderName::from_static("x-remora-client-id");

/// What happens to a request header whose name holds `_` (`limits.headers_with_underscores`,
/// like Envoy's `headers_with_underscores_action`). CGI and WSGI apps read `X_Forwarded_For`
/// and `X-Forwarded-For` as the same header, so such names can smuggle a header past checks
/// made on the other spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Underscores {
    /// Forwarded, except those that alias an `x-remora-*` header, which are always dropped.
    #[default]
    Allow,
    /// Every one is dropped.
    Drop,
    /// The request is refused (400).
    Reject,
}

/// Applies `mode` to `headers` and always removes names that, with `_` read as `-`, are
/// `x-remora-*` names (a caller could forge `X_Remora_Client_Id`). Only custom names can
/// hold `_`, so a request without them costs one pass over its names.
pub fn check_underscores(headers: &mut HeaderMap, mode: Underscores) -> Result<(), ProxyError> {
    let alias = |s: &str| s.len() > 9 && s[..9].replace('_', "-") == "x-remora-";
    let flagged: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let s = n.as_str();
            s.contains('_') && (mode != Underscores::Allow || alias(s))
        })
        .cloned()
        .collect();
    if mode == Underscores::Reject && flagged.iter().any(|n| !alias(n.as_str())) {
        return Err(ProxyError::BadRequest("header name with an underscore"));
    }
    for name in flagged {
        headers.remove(name);
    }
    Ok(())
}

/// Refuses a request whose `Host` is given more than once (RFC 9112 §3.2: a 400).
pub fn check_host(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one host header"));
    }
    Ok(())
}

/// Carries an HTTP/1.1 request's original protocol across a sidecar-to-sidecar HTTP/2 hop.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("x-remora-orig-proto");

/// Whether an HTTP/1 request accepts trailers in a chunked response (`te: trailers`).
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers.get(header::TE).is_some_and(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    })
}

/// Declares gRPC's trailers in a gRPC response's `trailer` header, unless it declares its
/// own: an HTTP/1.1 server (hyper's) sends in a chunked body only the trailers a response
/// declared, and an HTTP/2 upstream need not declare them. A gRPC caller over HTTP/1.1 so gets
/// its `grpc-status`.
pub fn declare_grpc_trailers(headers: &mut HeaderMap) {
    if is_grpc(headers) && !headers.contains_key(header::TRAILER) {
        headers.insert(
            header::TRAILER,
            HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin"),
        );
    }
}

/// Whether a request is gRPC (`content-type: application/grpc`, with or without a `+format`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Whether `part`'s bytes start inside `buf`: for tests that check a value left (or stayed
/// in) the buffer it was parsed from.
#[cfg(test)]
pub(crate) fn points_into(part: &[u8], buf: &[u8]) -> bool {
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    range.contains(&(part.as_ptr() as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn owned_values_leave_the_parsers_buffer_and_keep_their_bytes_and_sensitivity() {
        // As a parser makes them: slices of one large read buffer.
        let read = bytes::Bytes::from(b"nginx/1.22text/plain; charset=utf-8secret".repeat(200));
        let slice = |r: std::ops::Range<usize>| HeaderValue::from_maybe_shared(read.slice(r));
        let mut h = HeaderMap::new();
        h.append("server", slice(0..11).unwrap());
        h.append("x-two", slice(11..21).unwrap());
        h.append("x-two", slice(21..35).unwrap());
        let mut secret = slice(35..41).unwrap();
        secret.set_sensitive(true);
        h.append("x-token", secret);
        h.append("x-empty", HeaderValue::from_static(""));
        // Never in HPACK's table: left alone.
        h.append(header::SET_COOKIE, slice(0..5).unwrap());
        let before = h.clone();
        assert!(points_into(h["server"].as_bytes(), &read));
        own_values(&mut h);
        assert_eq!(h, before);
        assert!(h["x-token"].is_sensitive());
        assert!(!h["server"].is_sensitive());
        for (name, v) in &h {
            let moved = !points_into(v.as_bytes(), &read);
            assert_eq!(moved, name != header::SET_COOKIE, "{name}: {v:?}");
        }
        // Nothing to move: no allocation, no change.
        let mut empty = HeaderMap::new();
        own_values(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        assert!(check_framing(&map(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked")
        ]))
        .is_err());
        assert!(check_framing(&map(&[("content-length", "5"), ("content-length", "6")])).is_err());
        assert!(check_framing(&map(&[("content-length", "5, 6")])).is_err());
        assert!(check_framing(&map(&[("content-length", "5"), ("content-length", "5")])).is_ok());
        assert!(check_framing(&map(&[("transfer-encoding", "chunked")])).is_ok());
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip, trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-keep"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn upgrade_keeps_upgrade_headers() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(Version::HTTP_11, &Method::GET, &h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = map(&[("x-forwarded-for", "1.1.1.1")]);
        let me = forwarded_for("10.0.0.1".parse().unwrap());
        add_forwarded(&mut h, &me, "http");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = map(&[("x-forwarded-proto", "https")]);
        add_forwarded(&mut h, &forwarded_for("::1".parse().unwrap()), "http");
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(
            h["x-forwarded-proto"], "https",
            "the first hop's scheme is kept"
        );
        // Several lines become one list, in order.
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        add_forwarded(&mut h, &me, "http");
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["1.1.1.1, 2.2.2.2, 10.0.0.1"]);
    }
}
