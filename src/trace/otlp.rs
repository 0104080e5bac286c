//! The OTLP trace export request (`opentelemetry/proto/collector/trace/v1`) in protobuf's wire
//! format, written by hand: the few messages a span needs take a hundred lines, where a
//! generated binding would bring a protobuf toolchain and its crates into the build. Field
//! numbers are the published ones (`trace.proto`, `common.proto`, `resource.proto`); the
//! tests' receiver decodes what this writes with the official definitions.
//!
//! A span is encoded as its request goes (see [`super::span::Record`]), straight from the
//! request's own strings: no attribute is copied into an owned value first, and the exporter
//! only wraps the finished messages. That is what keeps a sampled request cheap.

/// `ExportTraceServiceRequest` with one resource (this sidecar) and one scope holding
/// `spans`, each an encoded `Span` message.
pub fn export_request(service_name: &str, spans: &[Vec<u8>]) -> Vec<u8> {
    let size: usize = spans.iter().map(|s| s.len() + 4).sum();
    let mut out = Vec::with_capacity(128 + service_name.len() + size);
    nested(&mut out, 1, |rs| {
        nested(rs, 1, |resource| {
            kv_str(resource, 1, "service.name", service_name);
            kv_str(resource, 1, "telemetry.sdk.name", "remora");
        });
        nested(rs, 2, |ss| {
            nested(ss, 1, |scope| {
                bytes(scope, 1, b"remora");
                bytes(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for s in spans {
                bytes(ss, 2, s);
            }
        });
    });
    out
}

/// A `KeyValue` with a string value, as repeated field `field`.
pub fn kv_str(out: &mut Vec<u8>, field: u32, k: &str, v: &str) {
    let any = 1 + varint_len(v.len() as u64) + v.len();
    kv_head(out, field, k, any);
    out.push(0x0a); // AnyValue.string_value
    small_varint(out, v.len() as u64);
    out.extend_from_slice(v.as_bytes());
}

/// A `KeyValue` with an integer value.
pub fn kv_int(out: &mut Vec<u8>, field: u32, k: &str, v: i64) {
    kv_head(out, field, k, 1 + varint_len(v as u64));
    out.push(0x18); // AnyValue.int_value
    small_varint(out, v as u64);
}

/// A `KeyValue` with a double value.
pub fn kv_double(out: &mut Vec<u8>, field: u32, k: &str, v: f64) {
    kv_head(out, field, k, 9);
    out.push(0x21); // AnyValue.double_value
    out.extend_from_slice(&v.to_bits().to_le_bytes());
}

/// A `KeyValue`'s field key and length, its `key` field, and the key and length of its value
/// (an `AnyValue` of `any` bytes, which the caller writes next). Every length is known
/// beforehand, so the pair's room is reserved once and it is written front to back, the
/// one-byte keys and lengths pushed in place: a span writes a score of these per request,
/// and writing them as nested messages, or through a buffer, cost half as much again.
#[inline(always)]
fn kv_head(out: &mut Vec<u8>, field: u32, k: &str, any: usize) {
    let len = 1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(any as u64) + any;
    out.reserve(len + 12);
    small_varint(out, (u64::from(field) << 3) | 2);
    small_varint(out, len as u64);
    out.push(0x0a); // KeyValue.key
    small_varint(out, k.len() as u64);
    out.extend_from_slice(k.as_bytes());
    out.push(0x12); // KeyValue.value
    small_varint(out, any as u64);
}

/// A varint, inline for the one-byte case that keys and short lengths are.
#[inline(always)]
fn small_varint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        long_varint(out, v);
    }
}

#[cold]
fn long_varint(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 10];
    let n = varint_into(&mut buf, v);
    out.extend_from_slice(&buf[..n]);
}

/// A length-delimited field whose contents `write` appends in place: one byte is kept for
/// the length, and the contents are moved along in the rare case it needs more.
pub fn nested(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, 2);
    let at = out.len();
    out.push(0);
    write(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        let mut prefix = [0u8; 10];
        let n = varint_into(&mut prefix, len as u64);
        out.splice(at..=at, prefix[..n].iter().copied());
    }
}

/// A field's key: its number and wire type.
#[inline]
pub fn key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

/// A varint (an unsigned integer, 7 bits a byte).
#[inline]
pub fn varint(out: &mut Vec<u8>, v: u64) {
    // Keys, lengths and most values here fit in one byte.
    if v < 0x80 {
        out.push(v as u8);
    } else {
        let mut buf = [0u8; 10];
        let n = varint_into(&mut buf, v);
        out.extend_from_slice(&buf[..n]);
    }
}

fn varint_into(buf: &mut [u8; 10], mut v: u64) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        buf[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    buf[n] = v as u8;
    n + 1
}

fn varint_len(v: u64) -> usize {
    // Lengths and keys are almost always under 128 (one byte), and the rest under 16384.
    if v < 0x80 {
        1
    } else if v < 0x4000 {
        2
    } else {
        (64 - v.leading_zeros() as usize).div_ceil(7)
    }
}

/// A varint field (wire type 0).
pub fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, 0);
    varint(out, v);
}

/// A fixed64 field (wire type 1).
pub fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

/// A bytes or string field (wire type 2).
pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
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
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX >> 1, u64::MAX] {
            let mut b = [0; 10];
            assert_eq!(varint_len(v), varint_into(&mut b, v), "{v}");
        }
    }

    #[test]
    fn long_nested_fields_get_their_full_length() {
        let mut out = Vec::new();
        nested(&mut out, 1, |m| bytes(m, 1, "x".repeat(300).as_bytes()));
        // key, a two-byte length (303), then the inner key, its two-byte length, the text.
        assert_eq!(&out[..3], &[0x0a, 0xaf, 0x02]);
        assert_eq!(out.len(), 3 + 3 + 300);
    }

    #[test]
    fn key_values_written_at_once_match_the_nested_form() {
        let nested_kv = |k: &str, any: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            nested(&mut out, 9, |kv| {
                bytes(kv, 1, k.as_bytes());
                nested(kv, 2, any);
            });
            out
        };
        let long = "v".repeat(200);
        for v in ["", "GET", long.as_str()] {
            let mut out = Vec::new();
            kv_str(&mut out, 9, "url.path", v);
            assert_eq!(
                out,
                nested_kv("url.path", &|a| bytes(a, 1, v.as_bytes())),
                "{v}"
            );
        }
        for v in [0, 200, -1, i64::MAX] {
            let mut out = Vec::new();
            kv_int(&mut out, 9, "n", v);
            assert_eq!(out, nested_kv("n", &|a| varint_field(a, 3, v as u64)));
        }
        let mut out = Vec::new();
        kv_double(&mut out, 3, "ms", 1.5);
        let mut want = Vec::new();
        nested(&mut want, 3, |kv| {
            bytes(kv, 1, b"ms");
            nested(kv, 2, |a| fixed64(a, 4, 1.5f64.to_bits()));
        });
        assert_eq!(out, want);
    }

    #[test]
    fn negative_ints_take_ten_bytes_as_protobuf_int64_does() {
        let mut out = Vec::new();
        kv_int(&mut out, 1, "k", -1);
        // field 1, len; key "k"; field 2 len; AnyValue field 3 varint of 10 bytes.
        assert_eq!(out.len(), 2 + 3 + 2 + 1 + 10);
    }
}
