//! A finished span as the exporter sends it: IDs, times, OpenTelemetry attributes, events.

use std::time::{SystemTime, UNIX_EPOCH};

use super::context::{SpanId, TraceId};

/// What the span stands for, with OTLP's `SpanKind` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A request this sidecar received from a caller (the inbound listener).
    Server = 2,
    /// A request this sidecar sent on for its app (the outbound listener).
    Client = 3,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// A float.
    Double(f64),
}

/// Something that happened during a span (an upstream attempt).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When, in nanoseconds since the Unix epoch.
    pub unix_nanos: u64,
    /// What.
    pub name: String,
    /// Details.
    pub attributes: Vec<(&'static str, Value)>,
}

/// A finished, sampled span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanData {
    /// Its trace.
    pub trace_id: TraceId,
    /// Its own ID.
    pub span_id: SpanId,
    /// The caller's span, when the request carried one.
    pub parent: Option<SpanId>,
    /// `{method} {route}`, or `{method}` when no route took the request.
    pub name: String,
    /// Server (inbound) or client (outbound).
    pub kind: SpanKind,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// End (response headers sent), likewise.
    pub end_unix_nanos: u64,
    /// OpenTelemetry semantic-convention attributes, and Remora's own under `remora.`.
    pub attributes: Vec<(&'static str, Value)>,
    /// Upstream attempts.
    pub events: Vec<Event>,
    /// The status message of a failed span (the `x-remora-error` reason or the 5xx).
    pub error: Option<String>,
}

/// Nanoseconds since the Unix epoch, now.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
