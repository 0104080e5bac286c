//! Distributed tracing: trace context read and passed on at both listeners, a span per
//! request (server spans inbound, client spans outbound), and OTLP export.
//!
//! The [`Tracer`] outlives config snapshots (its queue and exporter task survive reloads); a
//! reload changes its settings in place. With no `tracing:` section nothing is sampled, and
//! trace headers pass through untouched.
//!
//! Sampling is parent-based: a caller's decision (the W3C sampled flag, B3's sampling state)
//! is kept, so a trace is whole or absent across every sidecar it crosses. A request without
//! one starts a new trace, sampled at `sample_percent`, and the decision travels on in
//! `traceparent` (flag 00 or 01) for the next hops to honour.

pub mod context;
mod export;
mod otlp;
pub mod span;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use http::HeaderMap;
use prometheus::IntCounterVec;
use tokio::sync::mpsc;

pub use context::{SpanId, TraceId};
pub use span::{AddrText, Attributes, Record, SpanKind};

use crate::metrics::Metrics;

/// Where spans go: an OTLP/HTTP collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port (4318, OTLP/HTTP's, when the URL names none).
    pub port: u16,
    /// Request path: the URL's, or `/v1/traces` when it has none.
    pub path: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/path]`. Spans go to `/v1/traces` unless the URL names a
    /// path, as OpenTelemetry's `OTEL_EXPORTER_OTLP_ENDPOINT` does.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| format!("{url:?} is not a URL (http://host:4318)"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(
                    "https collectors are not supported: use http:// to a local collector or agent"
                        .into(),
                )
            }
            _ => {
                return Err(format!(
                    "{url:?} needs http://, as in http://collector:4318"
                ))
            }
        }
        let auth = uri
            .authority()
            .ok_or_else(|| format!("{url:?} names no host"))?;
        let path = match uri.path() {
            "" | "/" => "/v1/traces".to_owned(),
            p => p.to_owned(),
        };
        Ok(Self {
            host: auth.host().trim_matches(['[', ']']).to_owned(),
            port: auth.port_u16().unwrap_or(4318),
            path,
        })
    }

    /// `host:port`, for the `Host` header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

/// The compiled `tracing:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The collector.
    pub endpoint: Endpoint,
    /// Share of new traces sampled, 0 to 100.
    pub sample_percent: f64,
    /// `service.name` of the spans' resource.
    pub service_name: String,
    /// Finished spans waiting for export at most; more are dropped.
    pub queue: usize,
}

/// The process's tracer, shared by every snapshot.
#[derive(Debug)]
pub struct Tracer {
    active: ArcSwapOption<Active>,
    destination: export::Destination,
    /// The queue's sender and capacity, kept across reloads while the capacity is unchanged.
    queue: Mutex<Option<(mpsc::Sender<Vec<u8>>, usize)>>,
    counters: export::Counters,
}

/// The settings in force, and where a sampled span goes.
#[derive(Debug)]
struct Active {
    sample_percent: f64,
    queue: mpsc::Sender<Vec<u8>>,
    queue_full: prometheus::IntCounter,
}

impl Tracer {
    /// A tracer that samples nothing until [`configure`](Self::configure)d, counting into
    /// `metrics`.
    pub fn new(metrics: &Metrics) -> Arc<Self> {
        let exported = prometheus::IntCounter::new(
            "remora_spans_exported_total",
            "Sampled spans the collector accepted.",
        )
        .expect("valid metric");
        let dropped = IntCounterVec::new(
            prometheus::Opts::new(
                "remora_spans_dropped_total",
                "Sampled spans dropped, by reason (queue-full: the collector is behind; export-failed: it refused or is unreachable).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        metrics.register(Box::new(exported.clone()));
        metrics.register(Box::new(dropped.clone()));
        let counters = export::Counters {
            exported,
            queue_full: dropped.with_label_values(&["queue-full"]),
            export_failed: dropped.with_label_values(&["export-failed"]),
        };
        Arc::new(Self {
            active: ArcSwapOption::empty(),
            destination: Arc::new(ArcSwapOption::empty()),
            queue: Mutex::new(None),
            counters,
        })
    }

    /// Puts `settings` in force (`None`: tracing off). The exporter task starts with the
    /// first settings, on the current Tokio runtime.
    pub fn configure(&self, settings: Option<&TracingSettings>) {
        let Some(s) = settings else {
            self.active.store(None);
            self.destination.store(None);
            return;
        };
        self.destination
            .store(Some(Arc::new((s.endpoint.clone(), s.service_name.clone()))));
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let sender = match &*queue {
            Some((tx, cap)) if *cap == s.queue && !tx.is_closed() => tx.clone(),
            _ => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    tracing::error!("no runtime to export spans on; tracing stays off");
                    return;
                };
                let (tx, rx) = mpsc::channel(s.queue.max(1));
                rt.spawn(export::run(
                    rx,
                    self.destination.clone(),
                    self.counters.clone(),
                ));
                *queue = Some((tx.clone(), s.queue));
                tx
            }
        };
        self.active.store(Some(Arc::new(Active {
            sample_percent: s.sample_percent,
            queue: sender,
            queue_full: self.counters.queue_full.clone(),
        })));
    }

    /// Begins this hop's span for a request with `headers`: reads the caller's context,
    /// decides whether to sample, and writes the next hop's context into `headers`. `None`
    /// when tracing is off (the headers are left as they came).
    pub fn start(&self, headers: &mut HeaderMap) -> Option<Started> {
        let active = self.active.load();
        let active = active.as_ref()?;
        let (parent, decided) = context::read(headers);
        let sampled = decided.unwrap_or_else(|| fastrand::f64() * 100.0 < active.sample_percent);
        let trace_id = parent.as_ref().map_or_else(TraceId::random, |p| p.trace_id);
        let span_id = SpanId::random();
        let parent_span = parent.as_ref().map(|p| p.span_id);
        context::inject(
            headers,
            trace_id,
            span_id,
            sampled,
            parent.as_ref().map(|p| p.format),
            parent_span,
        );
        Some(Started {
            trace_id,
            span_id,
            // The clock is read, and the buffer taken, only for a span that will be sent.
            recording: sampled.then(|| {
                let record = Record::begin(trace_id, span_id, parent_span, span::unix_nanos());
                (record, active.clone())
            }),
        })
    }
}

/// A request's span, begun.
#[derive(Debug)]
pub struct Started {
    /// The request's trace.
    pub trace_id: TraceId,
    /// This hop's span.
    pub span_id: SpanId,
    /// The span being written and where it goes; `None` when not sampled.
    recording: Option<(Record, Arc<Active>)>,
}

impl Started {
    /// Whether the span will be exported.
    pub fn sampled(&self) -> bool {
        self.recording.is_some()
    }

    /// The span's message, to write attributes and events into; `None` when not sampled.
    pub fn record(&mut self) -> Option<&mut Record> {
        self.recording.as_mut().map(|(r, _)| r)
    }

    /// Ends the span `elapsed` after it began, named the concatenation of `name`, failed
    /// with `error` when given, and queues it for export; a full queue drops it (counted).
    pub fn end(self, name: &[&str], kind: SpanKind, error: Option<&str>, elapsed: Duration) {
        let Some((record, to)) = self.recording else {
            return;
        };
        if to
            .queue
            .try_send(record.finish(name, kind, error, elapsed))
            .is_err()
        {
            to.queue_full.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_default_to_otlp_http() {
        let e = Endpoint::parse("http://collector:4318").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("collector", 4318, "/v1/traces")
        );
        let e = Endpoint::parse("http://10.0.0.1/custom/traces").unwrap();
        assert_eq!((e.port, e.path.as_str()), (4318, "/custom/traces"));
        let e = Endpoint::parse("http://[::1]:9000").unwrap();
        assert_eq!(e.authority(), "[::1]:9000");
        assert!(Endpoint::parse("https://c:4318")
            .unwrap_err()
            .contains("not supported"));
        assert!(Endpoint::parse("collector:4318").is_err());
        assert!(Endpoint::parse("http://").is_err());
    }

    fn tracer(percent: f64) -> (Arc<Tracer>, Metrics) {
        let m = Metrics::new();
        let t = Tracer::new(&m);
        t.configure(Some(&TracingSettings {
            endpoint: Endpoint::parse("http://127.0.0.1:1").unwrap(),
            sample_percent: percent,
            service_name: "t".into(),
            queue: 4,
        }));
        (t, m)
    }

    #[tokio::test]
    async fn a_callers_decision_wins_over_the_rate() {
        let (t, _m) = tracer(0.0);
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let s = t.start(&mut h).unwrap();
        assert!(s.sampled());
        assert_eq!(s.trace_id.hex(), "4bf92f3577b34da6a3ce929d0e0e4736");

        assert_eq!(
            h["traceparent"],
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", s.span_id.hex())
        );

        let (t, _m) = tracer(100.0);
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
                .parse()
                .unwrap(),
        );
        assert!(!t.start(&mut h).unwrap().sampled());
        assert!(h["traceparent"].to_str().unwrap().ends_with("-00"));
    }

    #[tokio::test]
    async fn new_traces_are_sampled_at_the_rate_and_say_so() {
        let (all, _m) = tracer(100.0);
        let (none, _m2) = tracer(0.0);
        let mut h = HeaderMap::new();
        let s = all.start(&mut h).unwrap();
        assert!(s.sampled());
        assert!(h["traceparent"].to_str().unwrap().ends_with("-01"));
        let mut h = HeaderMap::new();
        assert!(!none.start(&mut h).unwrap().sampled());
        assert!(h["traceparent"].to_str().unwrap().ends_with("-00"));
        // Off: nothing read or written.
        all.configure(None);
        let mut h = HeaderMap::new();
        assert!(all.start(&mut h).is_none());
        assert!(h.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        // The exporter task cannot run (this test never yields), so the queue of 4 fills.
        let (t, m) = tracer(100.0);
        for _ in 0..6 {
            let s = t.start(&mut HeaderMap::new()).unwrap();
            s.end(&["GET"], SpanKind::Client, None, Duration::ZERO);
        }
        let text = m.encode();
        assert!(
            text.contains(r#"remora_spans_dropped_total{reason="queue-full"} 2"#),
            "{text}"
        );
    }
}
