//! The OpenMetrics text format (what Prometheus asks for with
//! `Accept: application/openmetrics-text`), with exemplars: each bucket of the request
//! duration histogram carries the trace ID of a recent sampled request that fell in it, so a
//! latency panel links to a trace.
//!
//! The `prometheus` crate stores the metrics but writes only the older text format and has no
//! exemplars; `prometheus-client` has both but would mean rewriting every metric and its
//! pre-resolved handles. So the metrics stay where they are, and this module writes their
//! gathered families in OpenMetrics, adding the exemplars kept beside the histograms.

use std::{
    collections::HashMap,
    fmt::Write,
    sync::{Arc, Mutex},
};

use prometheus::proto::{LabelPair, MetricFamily, MetricType};

/// The content type of this format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One exemplar: a sampled request's trace, its duration, and when it was seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    /// The request's trace ID.
    pub trace_id: [u8; 16],
    /// The observed value (seconds).
    pub value: f64,
    /// Unix seconds.
    pub timestamp: f64,
}

/// The latest exemplar of each bucket of one histogram series (index = bucket; the last is
/// `+Inf`).
#[derive(Debug)]
pub struct Slots {
    bounds: &'static [f64],
    latest: Mutex<Vec<Option<Exemplar>>>,
}

impl Slots {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            latest: Mutex::new(vec![None; bounds.len() + 1]),
        }
    }

    /// Keeps `e` as its bucket's latest.
    pub fn record(&self, e: Exemplar) {
        let i = self.bounds.partition_point(|b| *b < e.value);
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest[i] = Some(e);
    }

    fn get(&self, bucket: usize) -> Option<Exemplar> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())[bucket]
    }
}

/// Every histogram series' exemplars, by metric name and label values (in label-name order).
/// A series keeps its slots across reloads: the key is its labels, not its handle.
#[derive(Debug, Default)]
pub struct Exemplars(Mutex<HashMap<SeriesKey, Arc<Slots>>>);

/// A series: its metric name and label values.
type SeriesKey = (String, Vec<String>);

impl Exemplars {
    /// The slots of `metric`'s series with these label values, made at first use.
    pub fn slots(&self, metric: &str, labels: &[&str], bounds: &'static [f64]) -> Arc<Slots> {
        let key = (
            metric.to_owned(),
            labels.iter().map(|l| (*l).to_owned()).collect(),
        );
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert_with(|| Arc::new(Slots::new(bounds)))
            .clone()
    }

    fn find(&self, metric: &str, labels: &[LabelPair]) -> Option<Arc<Slots>> {
        let key = (
            metric.to_owned(),
            labels.iter().map(|l| l.value().to_owned()).collect(),
        );
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
    }
}

/// Writes `families` in OpenMetrics text, with the exemplars of histogram buckets.
pub fn encode(families: &[MetricFamily], exemplars: &Exemplars) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for f in families {
        let name = f.name();
        match f.get_field_type() {
            MetricType::COUNTER => {
                // OpenMetrics names the counter family without `_total`; samples keep it.
                let base = name.strip_suffix("_total").unwrap_or(name);
                head(&mut out, base, f.help(), "counter");
                for m in f.get_metric() {
                    sample(
                        &mut out,
                        &format!("{base}_total"),
                        m.get_label(),
                        None,
                        m.get_counter().get_value(),
                    );
                }
            }
            MetricType::GAUGE => {
                head(&mut out, name, f.help(), "gauge");
                for m in f.get_metric() {
                    sample(
                        &mut out,
                        name,
                        m.get_label(),
                        None,
                        m.get_gauge().get_value(),
                    );
                }
            }
            MetricType::HISTOGRAM => {
                head(&mut out, name, f.help(), "histogram");
                for m in f.get_metric() {
                    let h = m.get_histogram();
                    let slots = exemplars.find(name, m.get_label());
                    let bucket_name = format!("{name}_bucket");
                    let mut last_bound = f64::NAN;
                    for (i, b) in h.get_bucket().iter().enumerate() {
                        last_bound = b.upper_bound();
                        let le = float_label(b.upper_bound());
                        let e = slots.as_ref().and_then(|s| s.get(i));
                        bucket(
                            &mut out,
                            &bucket_name,
                            m.get_label(),
                            &le,
                            b.cumulative_count() as f64,
                            e,
                        );
                    }
                    if last_bound != f64::INFINITY {
                        let n = h.get_bucket().len();
                        let e = slots.as_ref().and_then(|s| s.get(n));
                        bucket(
                            &mut out,
                            &bucket_name,
                            m.get_label(),
                            "+Inf",
                            h.get_sample_count() as f64,
                            e,
                        );
                    }
                    sample(
                        &mut out,
                        &format!("{name}_count"),
                        m.get_label(),
                        None,
                        h.get_sample_count() as f64,
                    );
                    sample(
                        &mut out,
                        &format!("{name}_sum"),
                        m.get_label(),
                        None,
                        h.get_sample_sum(),
                    );
                }
            }
            // Remora registers no summaries or untyped metrics.
            _ => {}
        }
    }
    out.push_str("# EOF\n");
    out
}

fn head(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "# HELP {name} {}", escape(help));
}

fn labels(out: &mut String, labels: &[LabelPair], extra: Option<(&str, &str)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().map(|l| (l.name(), l.value())).chain(extra) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    out.push('}');
}

fn sample(out: &mut String, name: &str, l: &[LabelPair], extra: Option<(&str, &str)>, value: f64) {
    out.push_str(name);
    labels(out, l, extra);
    let _ = writeln!(out, " {}", float(value));
}

fn bucket(
    out: &mut String,
    name: &str,
    l: &[LabelPair],
    le: &str,
    count: f64,
    e: Option<Exemplar>,
) {
    out.push_str(name);
    labels(out, l, Some(("le", le)));
    let _ = write!(out, " {}", float(count));
    if let Some(e) = e {
        let _ = write!(
            out,
            " # {{trace_id=\"{}\"}} {} {:.3}",
            hex(&e.trace_id),
            float(e.value),
            e.timestamp
        );
    }
    out.push('\n');
}

/// A sample value: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// A bucket bound as OpenMetrics writes it: always with a fraction (`1.0`, `0.005`).
fn float_label(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Lowercase hex, as trace IDs are written everywhere.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Escapes `\`, `"` and newlines in label values and help text.
fn escape(s: &str) -> String {
    s.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[f64] = &[0.1, 1.0];

    #[test]
    fn writes_families_with_exemplars_and_the_eof() {
        let r = prometheus::Registry::new();
        let c = prometheus::IntCounterVec::new(
            prometheus::Opts::new("x_requests_total", "Requests \"seen\"."),
            &["route"],
        )
        .unwrap();
        let h = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("x_seconds", "Latency.").buckets(BOUNDS.to_vec()),
            &["route"],
        )
        .unwrap();
        r.register(Box::new(c.clone())).unwrap();
        r.register(Box::new(h.clone())).unwrap();
        c.with_label_values(&["a\"b"]).inc_by(3);
        h.with_label_values(&["r"]).observe(0.5);
        h.with_label_values(&["r"]).observe(2.0);
        let ex = Exemplars::default();
        let slots = ex.slots("x_seconds", &["r"], BOUNDS);
        slots.record(Exemplar {
            trace_id: [0xab; 16],
            value: 0.5,
            timestamp: 1700000000.25,
        });
        slots.record(Exemplar {
            trace_id: [0xcd; 16],
            value: 2.0,
            timestamp: 1700000001.0,
        });
        let text = encode(&r.gather(), &ex);
        let want = format!(
            "# TYPE x_requests counter\n\
             # HELP x_requests Requests \\\"seen\\\".\n\
             x_requests_total{{route=\"a\\\"b\"}} 3\n\
             # TYPE x_seconds histogram\n\
             # HELP x_seconds Latency.\n\
             x_seconds_bucket{{route=\"r\",le=\"0.1\"}} 0\n\
             x_seconds_bucket{{route=\"r\",le=\"1.0\"}} 1 # {{trace_id=\"{}\"}} 0.5 1700000000.250\n\
             x_seconds_bucket{{route=\"r\",le=\"+Inf\"}} 2 # {{trace_id=\"{}\"}} 2 1700000001.000\n\
             x_seconds_count{{route=\"r\"}} 2\n\
             x_seconds_sum{{route=\"r\"}} 2.5\n\
             # EOF\n",
            "ab".repeat(16),
            "cd".repeat(16),
        );
        assert_eq!(text, want);
    }
}
