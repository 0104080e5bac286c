//! A sampled span, recorded as its request goes: each attribute is written into the span's
//! OTLP `Span` message the moment it is known, from the request's own strings, so a sampled
//! request costs one buffer rather than an owned copy of every attribute (see [`super::otlp`]).

use std::{
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use super::{
    context::{SpanId, TraceId},
    otlp,
};

/// What the span stands for, with OTLP's `SpanKind` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A request this sidecar received from a caller (the inbound listener).
    Server = 2,
    /// A request this sidecar sent on for its app (the outbound listener).
    Client = 3,
}

/// `Span.attributes` and `Span.Event.attributes` field numbers.
const SPAN_ATTRIBUTES: u32 = 9;
const EVENT_ATTRIBUTES: u32 = 3;

/// A sampled span's message, being written.
#[derive(Debug)]
pub struct Record {
    buf: Vec<u8>,
    start_unix_nanos: u64,
}

impl Record {
    /// The span's IDs and start time, written first.
    pub(super) fn begin(
        trace_id: TraceId,
        span_id: SpanId,
        parent: Option<SpanId>,
        start_unix_nanos: u64,
    ) -> Self {
        // A span with its usual attributes and a try or two fits without growing.
        let mut buf = Vec::with_capacity(1024);
        // Fixed-size pieces: each copy is a few moves, not a call.
        buf.extend_from_slice(&[0x0a, 16]); // trace_id
        buf.extend_from_slice(&trace_id.0);
        buf.extend_from_slice(&[0x12, 8]); // span_id
        buf.extend_from_slice(&span_id.0);
        if let Some(p) = parent {
            buf.extend_from_slice(&[0x22, 8]); // parent_span_id
            buf.extend_from_slice(&p.0);
        }
        buf.push(0x39); // start_time_unix_nano (fixed64 7)
        buf.extend_from_slice(&start_unix_nanos.to_le_bytes());
        Self {
            buf,
            start_unix_nanos,
        }
    }

    /// When the span began, in nanoseconds since the Unix epoch.
    pub fn start_unix_nanos(&self) -> u64 {
        self.start_unix_nanos
    }

    /// The span's attributes, to add to.
    pub fn attributes(&mut self) -> Attributes<'_> {
        Attributes {
            out: &mut self.buf,
            field: SPAN_ATTRIBUTES,
        }
    }

    /// An event named `name` at `unix_nanos`, with the attributes `write` gives it.
    pub fn event(&mut self, unix_nanos: u64, name: &str, write: impl FnOnce(&mut Attributes<'_>)) {
        otlp::nested(&mut self.buf, 11, |event| {
            otlp::fixed64(event, 1, unix_nanos);
            otlp::bytes(event, 2, name.as_bytes());
            write(&mut Attributes {
                out: event,
                field: EVENT_ATTRIBUTES,
            });
        });
    }

    /// The finished message: its name (the concatenation of `name`), kind, end time
    /// (`elapsed` after its start: the clock is read once per span) and status (an ERROR
    /// with `error` as its message, when given).
    pub(super) fn finish(
        mut self,
        name: &[&str],
        kind: SpanKind,
        error: Option<&str>,
        elapsed: std::time::Duration,
    ) -> Vec<u8> {
        let end = self.start_unix_nanos + elapsed.as_nanos() as u64;
        let b = &mut self.buf;
        otlp::key(b, 5, 2);
        let len: usize = name.iter().map(|p| p.len()).sum();
        otlp::varint(b, len as u64);
        for part in name {
            b.extend_from_slice(part.as_bytes());
        }
        b.extend_from_slice(&[0x30, kind as u8]); // kind (varint 6)
        b.push(0x41); // end_time_unix_nano (fixed64 8)
        b.extend_from_slice(&end.to_le_bytes());
        otlp::nested(b, 15, |status| {
            if let Some(message) = error {
                otlp::bytes(status, 2, message.as_bytes());
                otlp::varint_field(status, 3, 2); // STATUS_CODE_ERROR
            }
        });
        // Span.flags (fixed32 16, key 0x85 0x01): the sampled bit of the W3C trace flags.
        b.extend_from_slice(&[0x85, 0x01, 1, 0, 0, 0]);
        self.buf
    }
}

/// Where attributes go: a span's, or one of its events'.
#[derive(Debug)]
pub struct Attributes<'a> {
    out: &'a mut Vec<u8>,
    field: u32,
}

impl Attributes<'_> {
    /// A string attribute.
    pub fn str(&mut self, key: &str, value: &str) {
        otlp::kv_str(self.out, self.field, key, value);
    }

    /// An integer attribute.
    pub fn int(&mut self, key: &str, value: i64) {
        otlp::kv_int(self.out, self.field, key, value);
    }

    /// A float attribute.
    pub fn double(&mut self, key: &str, value: f64) {
        otlp::kv_double(self.out, self.field, key, value);
    }

    /// An `ip:port` attribute, written as the standard formatter writes it.
    pub fn addr(&mut self, key: &str, value: SocketAddr) {
        self.str(key, AddrText::new(value).as_str());
    }
}

/// `ip:port` as text, on the stack: the standard formatter (through a `String`) costs more
/// than the rest of a span's attributes together, and an endpoint is written per try.
pub struct AddrText {
    buf: [u8; 64],
    len: usize,
}

impl AddrText {
    /// The text of `addr`, as the standard formatter writes it.
    pub fn new(addr: SocketAddr) -> Self {
        let mut t = Self {
            buf: [0; 64],
            len: 0,
        };
        match addr {
            SocketAddr::V4(v4) => {
                let [a, b, c, d] = v4.ip().octets();
                t.decimal(a.into());
                t.push(b'.');
                t.decimal(b.into());
                t.push(b'.');
                t.decimal(c.into());
                t.push(b'.');
                t.decimal(d.into());
                t.push(b':');
                t.decimal(v4.port().into());
            }
            SocketAddr::V6(_) => {
                // The longest is 58 bytes: `[`, eight groups of four, `%4294967295]:65535`.
                use std::io::Write;
                let mut w = &mut t.buf[..];
                let _ = write!(w, "{addr}");
                let left = w.len();
                t.len = t.buf.len() - left;
            }
        }
        t
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    /// Appends `n` (at most 65535) in decimal, last digit first, in place.
    fn decimal(&mut self, mut n: u32) {
        let digits = match n {
            0..=9 => 1,
            10..=99 => 2,
            100..=999 => 3,
            1000..=9999 => 4,
            _ => 5,
        };
        let end = self.len + digits;
        for slot in self.buf[self.len..end].iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        self.len = end;
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_the_standard_formatter_does() {
        for a in [
            "127.0.0.1:1",
            "10.200.0.255:65535",
            "255.255.255.255:65535",
            "0.0.0.0:0",
            "[::1]:8080",
            "[fe80::1]:443",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535",
            "[::ffff:255.255.255.255]:1",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(AddrText::new(addr).as_str(), addr.to_string());
        }
    }
}
