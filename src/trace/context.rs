//! Trace context on the wire: W3C Trace Context (`traceparent`, `tracestate`) and Zipkin's B3,
//! single (`b3`) and multi (`x-b3-*`) header forms. Read from a request on either listener,
//! and written back with this hop's span as the parent, in W3C form always and in the B3 form
//! the request came with, so apps instrumented for either keep one trace.
//!
//! Malformed context is ignored, as the specifications say: the request goes on as if it
//! carried none (a new trace when sampled), and the bad header is replaced.

use http::{header::HeaderName, HeaderMap, HeaderValue};

/// `traceparent` (W3C Trace Context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `b3`, the single-header B3 form.
pub const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// A 16-byte trace ID (never all zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span ID (never all zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random trace ID.
    pub fn random() -> Self {
        Self(fastrand::u128(1..).to_be_bytes())
    }

    /// Lowercase hex, as every format writes it.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl SpanId {
    /// A random span ID.
    pub fn random() -> Self {
        Self(fastrand::u64(1..).to_be_bytes())
    }

    /// Lowercase hex.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

/// Which header form a request's context came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `traceparent`.
    W3c,
    /// `b3`.
    B3Single,
    /// `x-b3-traceid` and the rest.
    B3Multi,
}

/// The context a request arrived with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// The trace the request belongs to.
    pub trace_id: TraceId,
    /// The caller's span, this hop's parent.
    pub span_id: SpanId,
    /// The caller's sampling decision; `None` when it left the decision to us (B3 without
    /// a sampling state).
    pub sampled: Option<bool>,
    /// The header form it came in.
    pub format: Format,
}

/// The request's context: W3C first, then single B3, then multi B3. `None` when it carries
/// none that parses.
pub fn extract(headers: &HeaderMap) -> Option<Parent> {
    let present = present(headers);
    if present & HAS_TRACEPARENT != 0 {
        if let Some(p) = headers
            .get(TRACEPARENT)
            .and_then(|v| traceparent(v.as_bytes()))
        {
            return Some(p);
        }
    }
    if present & HAS_B3 != 0 {
        if let Some(p) = headers.get(B3).and_then(|v| b3_single(v.as_bytes())) {
            return Some(p);
        }
    }
    if present & HAS_B3_MULTI != 0 {
        return b3_multi(headers);
    }
    None
}

/// The request's context (as [`extract`]) and the sampling decision it carries: its own,
/// or a B3 decision sent without a context ([`sampling_only`]).
pub fn read(headers: &HeaderMap) -> (Option<Parent>, Option<bool>) {
    if present(headers) == 0 {
        return (None, None);
    }
    let parent = extract(headers);
    let decided = match &parent {
        Some(p) => p.sampled,
        None => sampling_only(headers),
    };
    (parent, decided)
}

/// A B3 sampling decision alone (`b3: 0`, `x-b3-sampled: 0` without IDs): an upstream that
/// chose not to sample without starting a trace.
pub fn sampling_only(headers: &HeaderMap) -> Option<bool> {
    let present = present(headers);
    if present & HAS_B3 != 0 {
        return headers.get(B3).and_then(|v| b3_sampling(v.as_bytes()));
    }
    if present & HAS_B3_MULTI == 0 {
        return None;
    }
    if headers.get(B3_FLAGS).is_some_and(|v| v == "1") {
        return Some(true);
    }
    headers
        .get(B3_SAMPLED)
        .and_then(|v| b3_sampling(v.as_bytes()))
}

const HAS_TRACEPARENT: u8 = 1;
const HAS_B3: u8 = 2;
const HAS_B3_MULTI: u8 = 4;

/// Which context headers the request has, in one pass over its names: most requests carry
/// none, and a pass is cheaper than a lookup of each.
fn present(headers: &HeaderMap) -> u8 {
    headers.keys().fold(0, |bits, name| {
        let n = name.as_str();
        bits | match n.len() {
            11 if n == "traceparent" => HAS_TRACEPARENT,
            2 if n == "b3" => HAS_B3,
            10..=17 if n.starts_with("x-b3-") => HAS_B3_MULTI,
            _ => 0,
        }
    })
}

/// Writes this hop's context into the request going on: `traceparent` (keeping
/// `tracestate`, which belongs to the vendors that wrote it), and the B3 form the request
/// came in, if any. `parent` is the caller's span, for B3's parent ID.
pub fn inject(
    headers: &mut HeaderMap,
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
    came_as: Option<Format>,
    parent: Option<SpanId>,
) {
    // 00-<32 hex>-<16 hex>-<flags>, written in place: this runs for every request.
    let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&trace_id.0, &mut tp[3..35]);
    hex_into(&span_id.0, &mut tp[36..52]);
    if sampled {
        tp[54] = b'1';
    }
    headers.insert(TRACEPARENT, bytes_value(&tp));
    let bit = if sampled { "1" } else { "0" };
    match came_as {
        Some(Format::B3Single) => {
            // <trace>-<span>-<bit>: the traceparent's middle, and the bit.
            let mut b3 = [0u8; 51];
            b3[..49].copy_from_slice(&tp[3..52]);
            b3[49] = b'-';
            b3[50] = bit.as_bytes()[0];
            headers.insert(B3, bytes_value(&b3));
        }
        Some(Format::B3Multi) => {
            headers.insert(B3_TRACE_ID, bytes_value(&tp[3..35]));
            headers.insert(B3_SPAN_ID, bytes_value(&tp[36..52]));
            headers.insert(B3_SAMPLED, HeaderValue::from_static(bit));
            headers.remove(B3_FLAGS);
            match parent {
                Some(p) => {
                    let mut id = [0u8; 16];
                    hex_into(&p.0, &mut id);
                    headers.insert(B3_PARENT_ID, bytes_value(&id))
                }
                None => headers.remove(B3_PARENT_ID),
            };
        }
        Some(Format::W3c) | None => {}
    }
}

fn bytes_value(b: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(b).expect("hex and dashes are a valid header value")
}

/// `00-<trace-id>-<parent-id>-<flags>`. A later version is read by its first four fields, as
/// the specification asks; version `ff` and all-zero IDs are invalid.
fn traceparent(v: &[u8]) -> Option<Parent> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.splitn(5, '-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add more.
    if version == "00" && rest.is_some() {
        return None;
    }
    if flags.len() != 2 || !is_lower_hex(flags) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent {
        trace_id: TraceId(lower_hex::<16>(trace)?),
        span_id: SpanId(lower_hex::<8>(span)?),
        sampled: Some(flags & 1 == 1),
        format: Format::W3c,
    })
    .filter(|p| p.trace_id.0 != [0; 16] && p.span_id.0 != [0; 8])
}

/// `{trace}-{span}[-{sampling}[-{parent}]]`; a bare sampling state is not a context.
fn b3_single(v: &[u8]) -> Option<Parent> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let (trace, span) = (parts.next()?, parts.next()?);
    let sampled = match parts.next() {
        None => None,
        Some(state) => Some(b3_sampling(state.as_bytes())?),
    };
    if let Some(parent) = parts.next() {
        b3_hex::<8>(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Parent {
        trace_id: TraceId(b3_trace(trace)?),
        span_id: SpanId(b3_hex::<8>(span)?),
        sampled,
        format: Format::B3Single,
    })
    .filter(|p| p.trace_id.0 != [0; 16] && p.span_id.0 != [0; 8])
}

fn b3_multi(headers: &HeaderMap) -> Option<Parent> {
    let text = |n: &HeaderName| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let trace = b3_trace(text(&B3_TRACE_ID)?)?;
    let span = b3_hex::<8>(text(&B3_SPAN_ID)?)?;
    let sampled = if text(&B3_FLAGS) == Some("1") {
        Some(true)
    } else {
        match text(&B3_SAMPLED) {
            None => None,
            Some(s) => Some(b3_sampling(s.as_bytes())?),
        }
    };
    Some(Parent {
        trace_id: TraceId(trace),
        span_id: SpanId(span),
        sampled,
        format: Format::B3Multi,
    })
    .filter(|p| p.trace_id.0 != [0; 16] && p.span_id.0 != [0; 8])
}

/// `1`, `d` (debug) and `true` sample; `0` and `false` do not.
fn b3_sampling(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"d" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

/// A B3 trace ID: 32 hex digits, or 16 (a 64-bit ID, the high half zero).
fn b3_trace(s: &str) -> Option<[u8; 16]> {
    if s.len() == 16 {
        let low = b3_hex::<8>(s)?;
        let mut id = [0; 16];
        id[8..].copy_from_slice(&low);
        return Some(id);
    }
    b3_hex::<16>(s)
}

/// B3 IDs are lowercase hex in the specification; uppercase is accepted, as Zipkin does.
fn b3_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    lower_hex::<N>(&s.to_ascii_lowercase())
}

/// Exactly `2 * N` lowercase hex digits.
fn lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !is_lower_hex(s) {
        return None;
    }
    let mut out = [0; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Writes `bytes` as lowercase hex into `out` (twice as long), a byte's two digits at a
/// time from a table: every request's `traceparent` is written this way.
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
            i += 1;
        }
        t
    };
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair.copy_from_slice(&PAIRS[usize::from(*b)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_traceparent() {
        let p = extract(&map(&[("traceparent", TP)])).unwrap();
        assert_eq!(p.trace_id.hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.span_id.hex(), "00f067aa0ba902b7");
        assert_eq!(p.sampled, Some(true));
        assert_eq!(p.format, Format::W3c);
        let unsampled = TP.replace("-01", "-00");
        assert_eq!(
            extract(&map(&[("traceparent", &unsampled)]))
                .unwrap()
                .sampled,
            Some(false)
        );
        // A later version: its first four fields, whatever follows.
        let future = TP.replace("00-", "cc-") + "-what-ever";
        assert!(extract(&map(&[("traceparent", &future)])).is_some());
    }

    #[test]
    fn refuses_malformed_traceparent() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(extract(&map(&[("traceparent", bad)])), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_b3_single_and_multi() {
        let single = extract(&map(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]))
        .unwrap();
        assert_eq!(single.trace_id.hex(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(single.span_id.hex(), "e457b5a2e4d86bd1");
        assert_eq!(single.sampled, Some(true));
        assert_eq!(single.format, Format::B3Single);
        // 64-bit trace IDs are widened; no sampling state defers the decision.
        let short = extract(&map(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")])).unwrap();
        assert_eq!(short.trace_id.hex(), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(short.sampled, None);
        assert_eq!(extract(&map(&[("b3", "0")])), None);
        assert_eq!(sampling_only(&map(&[("b3", "0")])), Some(false));

        let multi = extract(&map(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        assert_eq!(multi.sampled, Some(false));
        assert_eq!(multi.format, Format::B3Multi);
        let debug = extract(&map(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-flags", "1"),
        ]))
        .unwrap();
        assert_eq!(debug.sampled, Some(true));
    }

    #[test]
    fn w3c_wins_over_b3_and_bad_b3_is_ignored() {
        let both = map(&[
            ("traceparent", TP),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
        ]);
        assert_eq!(extract(&both).unwrap().format, Format::W3c);
        for bad in [
            "xyz-e457b5a2e4d86bd1",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-7",
            "a-b-c-d-e",
        ] {
            assert_eq!(extract(&map(&[("b3", bad)])), None, "{bad}");
        }
    }

    #[test]
    fn writes_the_next_hop_in_the_form_it_came() {
        let (t, s) = (TraceId([0xab; 16]), SpanId([0x01; 8]));
        let mut h = map(&[("tracestate", "vendor=1"), ("b3", "x")]);
        inject(&mut h, t, s, true, Some(Format::B3Single), None);
        assert_eq!(h["traceparent"], format!("00-{}-{}-01", t.hex(), s.hex()));
        assert_eq!(h["b3"], format!("{}-{}-1", t.hex(), s.hex()));
        assert_eq!(h["tracestate"], "vendor=1");

        let mut h = map(&[("x-b3-flags", "1")]);
        inject(
            &mut h,
            t,
            s,
            false,
            Some(Format::B3Multi),
            Some(SpanId([2; 8])),
        );
        assert_eq!(h["traceparent"], format!("00-{}-{}-00", t.hex(), s.hex()));
        assert_eq!(h["x-b3-traceid"], t.hex());
        assert_eq!(h["x-b3-spanid"], s.hex());
        assert_eq!(h["x-b3-sampled"], "0");
        assert_eq!(h["x-b3-parentspanid"], "0202020202020202");
        assert!(!h.contains_key("x-b3-flags"));
        // Round trip.
        let back = extract(&h).unwrap();
        assert_eq!(
            (back.trace_id, back.span_id, back.sampled),
            (t, s, Some(false))
        );
    }
}
