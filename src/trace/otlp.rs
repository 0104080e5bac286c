//! The OTLP trace export request (`opentelemetry/proto/collector/trace/v1`) in protobuf's wire
//! format, written by hand: the few messages a span needs take a hundred lines, where a
//! generated binding would bring a protobuf toolchain and its crates into the build. Field
//! numbers are the published ones (`trace.proto`, `common.proto`, `resource.proto`); the
//! tests' receiver decodes what this writes with the official definitions.

use super::span::{SpanData, Value};

/// `ExportTraceServiceRequest` with one resource (this sidecar) and one scope holding `spans`.
pub fn export_request(service_name: &str, spans: &[SpanData]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + spans.len() * 640);
    nested(&mut out, 1, |rs| {
        nested(rs, 1, |resource| {
            key_value(
                resource,
                1,
                "service.name",
                &Value::Str(service_name.into()),
            );
            key_value(
                resource,
                1,
                "telemetry.sdk.name",
                &Value::Str("remora".into()),
            );
        });
        nested(rs, 2, |ss| {
            nested(ss, 1, |scope| {
                string(scope, 1, "remora");
                string(scope, 2, env!("CARGO_PKG_VERSION"));
            });
            for s in spans {
                nested(ss, 2, |out| span(out, s));
            }
        });
    });
    out
}

fn span(out: &mut Vec<u8>, s: &SpanData) {
    bytes(out, 1, &s.trace_id.0);
    bytes(out, 2, &s.span_id.0);
    if let Some(parent) = &s.parent {
        bytes(out, 4, &parent.0);
    }
    string(out, 5, &s.name);
    varint_field(out, 6, s.kind as u64);
    fixed64(out, 7, s.start_unix_nanos);
    fixed64(out, 8, s.end_unix_nanos);
    for (k, v) in &s.attributes {
        key_value(out, 9, k, v);
    }
    for e in &s.events {
        nested(out, 11, |event| {
            fixed64(event, 1, e.unix_nanos);
            string(event, 2, &e.name);
            for (k, v) in &e.attributes {
                key_value(event, 3, k, v);
            }
        });
    }
    nested(out, 15, |status| {
        if let Some(message_text) = &s.error {
            string(status, 2, message_text);
            varint_field(status, 3, 2); // STATUS_CODE_ERROR
        }
    });
    // Span.flags (fixed32 16): the sampled bit of the W3C trace flags.
    key(out, 16, 5);
    out.extend_from_slice(&1u32.to_le_bytes());
}

fn key_value(out: &mut Vec<u8>, field: u32, k: &str, v: &Value) {
    nested(out, field, |kv| {
        string(kv, 1, k);
        nested(kv, 2, |any| match v {
            Value::Str(s) => string(any, 1, s),
            Value::Bool(b) => varint_field(any, 2, u64::from(*b)),
            Value::Int(i) => varint_field(any, 3, *i as u64),
            Value::Double(d) => {
                key(any, 4, 1);
                any.extend_from_slice(&d.to_le_bytes());
            }
        });
    });
}

/// A length-delimited field whose contents `write` appends in place: one byte is kept for
/// the length, and the contents are moved along in the rare case it needs more. No
/// message is built apart and copied in, as the simple way would for every attribute.
fn nested(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, 2);
    let at = out.len();
    out.push(0);
    write(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(10);
        varint(&mut prefix, len as u64);
        out.splice(at..=at, prefix);
    }
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
    fn long_nested_fields_get_their_full_length() {
        let mut out = Vec::new();
        nested(&mut out, 1, |m| string(m, 1, &"x".repeat(300)));
        // key, a two-byte length (303), then the inner key, its two-byte length, the text.
        assert_eq!(&out[..3], &[0x0a, 0xaf, 0x02]);
        assert_eq!(out.len(), 3 + 3 + 300);
    }

    #[test]
    fn negative_ints_take_ten_bytes_as_protobuf_int64_does() {
        let mut out = Vec::new();
        key_value(&mut out, 1, "k", &Value::Int(-1));
        // field 1, len; key "k"; field 2 len; AnyValue field 3 varint of 10 bytes.
        assert_eq!(out.len(), 2 + 3 + 2 + 1 + 10);
    }
}
