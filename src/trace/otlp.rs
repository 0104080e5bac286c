//! The OTLP trace export request (`opentelemetry/proto/collector/trace/v1`) in protobuf's wire
//! format, written by hand: the few messages a span needs take a hundred lines, where a
//! generated binding would bring a protobuf toolchain and its crates into the build. Field
//! numbers are the published ones (`trace.proto`, `common.proto`, `resource.proto`); the
//! tests' receiver decodes what this writes with the official definitions.

use super::span::{SpanData, Value};

/// `ExportTraceServiceRequest` with one resource (this sidecar) and one scope holding `spans`.
pub fn export_request(service_name: &str, spans: &[SpanData]) -> Vec<u8> {
    let mut resource = Vec::new();
    key_value(
        &mut resource,
        1,
        "service.name",
        &Value::Str(service_name.into()),
    );
    key_value(
        &mut resource,
        1,
        "telemetry.sdk.name",
        &Value::Str("remora".into()),
    );

    let mut scope = Vec::new();
    string(&mut scope, 1, "remora");
    string(&mut scope, 2, env!("CARGO_PKG_VERSION"));

    let mut scope_spans = Vec::new();
    message(&mut scope_spans, 1, &scope);
    for s in spans {
        message(&mut scope_spans, 2, &span(s));
    }

    let mut resource_spans = Vec::new();
    message(&mut resource_spans, 1, &resource);
    message(&mut resource_spans, 2, &scope_spans);

    let mut request = Vec::new();
    message(&mut request, 1, &resource_spans);
    request
}

fn span(s: &SpanData) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    bytes(&mut out, 1, &s.trace_id.0);
    bytes(&mut out, 2, &s.span_id.0);
    if let Some(parent) = &s.parent {
        bytes(&mut out, 4, &parent.0);
    }
    string(&mut out, 5, &s.name);
    varint_field(&mut out, 6, s.kind as u64);
    fixed64(&mut out, 7, s.start_unix_nanos);
    fixed64(&mut out, 8, s.end_unix_nanos);
    for (k, v) in &s.attributes {
        key_value(&mut out, 9, k, v);
    }
    for e in &s.events {
        let mut event = Vec::new();
        fixed64(&mut event, 1, e.unix_nanos);
        string(&mut event, 2, &e.name);
        for (k, v) in &e.attributes {
            key_value(&mut event, 3, k, v);
        }
        message(&mut out, 11, &event);
    }
    let mut status = Vec::new();
    if let Some(message_text) = &s.error {
        string(&mut status, 2, message_text);
        varint_field(&mut status, 3, 2); // STATUS_CODE_ERROR
    }
    message(&mut out, 15, &status);
    // Span.flags (fixed32 16): the sampled bit of the W3C trace flags.
    key(&mut out, 16, 5);
    out.extend_from_slice(&1u32.to_le_bytes());
    out
}

fn key_value(out: &mut Vec<u8>, field: u32, k: &str, v: &Value) {
    let mut any = Vec::new();
    match v {
        Value::Str(s) => string(&mut any, 1, s),
        Value::Bool(b) => varint_field(&mut any, 2, u64::from(*b)),
        Value::Int(i) => varint_field(&mut any, 3, *i as u64),
    }
    let mut kv = Vec::new();
    string(&mut kv, 1, k);
    message(&mut kv, 2, &any);
    message(out, field, &kv);
}

fn key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, 0);
    varint(out, v);
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    bytes(out, field, s.as_bytes());
}

fn message(out: &mut Vec<u8>, field: u32, m: &[u8]) {
    bytes(out, field, m);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_base_128() {
        let mut out = Vec::new();
        varint(&mut out, 1);
        varint(&mut out, 300);
        varint(&mut out, u64::MAX);
        assert_eq!(&out[..3], &[0x01, 0xac, 0x02]);
        assert_eq!(out.len(), 3 + 10);
    }

    #[test]
    fn negative_ints_take_ten_bytes_as_protobuf_int64_does() {
        let mut out = Vec::new();
        key_value(&mut out, 1, "k", &Value::Int(-1));
        // field 1, len; key "k"; field 2 len; AnyValue field 3 varint of 10 bytes.
        assert_eq!(out.len(), 2 + 3 + 2 + 1 + 10);
    }
}
