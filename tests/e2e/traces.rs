//! Distributed tracing through the real listeners, exported to a real OTLP/HTTP receiver that
//! decodes with OpenTelemetry's published protobuf definitions (`fixtures/otlp_receiver.py`).

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use serde_json::Value;

use crate::{netns::fixture, support::*};

/// The receiver process, killed when dropped.
struct Receiver {
    child: Child,
    addr: SocketAddr,
}

impl Receiver {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(fixture("otlp_receiver.py"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the OTLP receiver (tests/install-deps.sh installs its package)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            panic!("the receiver printed no port ({line:?}): is opentelemetry-proto installed?")
        });
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn spans(&self) -> Vec<Value> {
        let r = get(self.addr, "receiver", "/spans").await;
        serde_json::from_str(&r.body).unwrap()
    }

    /// Waits until at least `n` spans arrived, and returns them.
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        wait_until(|| async { self.spans().await.len() >= n }).await;
        let errors = get(self.addr, "receiver", "/errors").await.body;
        assert_eq!(errors, "[]", "the receiver could not decode what it got");
        self.spans().await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tracing_section(endpoint: &str, percent: u32, service: &str) -> String {
    format!(
        "tracing: {{ otlp_endpoint: \"{endpoint}\", sample_percent: {percent}, service_name: {service} }}\n"
    )
}

/// The request headers the echo upstream saw, from its body.
fn seen(body: &str, name: &str) -> Option<String> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::to_owned)
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// A → B → app: A's client span and B's server span are one trace, B's parent is A's span,
/// and the app gets B's span as its parent.
#[tokio::test]
async fn two_sidecars_make_one_trace() {
    let rx = Receiver::start();
    let app = echo("app").await;
    let b = proxy(&format!(
        "{}inbound: {{ listen: 127.0.0.1:0, app: \"{}\" }}\n",
        tracing_section(&rx.endpoint(), 100, "b"),
        app.addr
    ))
    .await;
    let a = proxy(&format!(
        "{}outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: to-b\n      match: {{ host: orders }}\n      backends: [{{ service: orders }}]\nservices:\n  orders: {{ endpoints: [\"{}\"] }}\n",
        tracing_section(&rx.endpoint(), 100, "a"),
        b.inbound()
    ))
    .await;

    let r = get_with(
        a.outbound(),
        "orders",
        "/orders/7",
        &[("user-agent", "curl/8.5.0")],
    )
    .await;
    assert_eq!(r.status, 200);
    let spans = rx.wait_for(2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = spans
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_CLIENT")
        .unwrap();
    let server = spans
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_SERVER")
        .unwrap();

    assert_eq!(client["trace_id"], server["trace_id"], "one trace");
    assert_eq!(client["parent_span_id"], "", "a new trace starts at A");
    assert_eq!(
        server["parent_span_id"], client["span_id"],
        "B's parent is A's span"
    );
    assert_eq!(client["service"], "a");
    assert_eq!(server["service"], "b");
    assert_eq!(client["scope"], "remora");
    assert_eq!(client["name"], "GET to-b");
    assert_eq!(server["name"], "GET");

    for s in [client, server] {
        assert_eq!(attr(s, "http.request.method"), "GET");
        assert_eq!(attr(s, "url.path"), "/orders/7");
        assert_eq!(attr(s, "http.response.status_code"), 200);
        assert_eq!(attr(s, "network.protocol.version"), "1.1");
        assert_eq!(attr(s, "user_agent.original"), "curl/8.5.0");
        assert_eq!(s["status"]["code"], "STATUS_CODE_UNSET");
        assert!(s["end"].as_u64() >= s["start"].as_u64());
    }
    assert_eq!(attr(client, "remora.route"), "to-b");
    assert_eq!(attr(client, "remora.service"), "orders");
    assert_eq!(
        attr(client, "remora.endpoint"),
        b.inbound().to_string().as_str()
    );
    // One try: counted only when there were more.
    assert!(client["attributes"].get("remora.attempts").is_none());
    // One try: the span says it all, so no attempt events.
    assert_eq!(
        client["events"].as_array().map_or(0, Vec::len),
        0,
        "{client}"
    );
    assert_eq!(attr(server, "remora.service"), "app");
    // The caller's address is a server span's; a client span's caller is the local app.
    assert_eq!(attr(server, "client.address"), "127.0.0.1");
    assert!(client["attributes"].get("client.address").is_none());
    // The direction is the span's kind, not an attribute.
    assert!(server["attributes"].get("remora.direction").is_none());
    // One request ID end to end, in both spans.
    let id = seen(&r.body, "x-request-id").expect("the app got a request id");
    assert_eq!(attr(client, "remora.request_id"), id.as_str());
    assert_eq!(attr(server, "remora.request_id"), id.as_str());

    let tp = seen(&r.body, "traceparent").expect("the app got a traceparent");
    let trace = server["trace_id"].as_str().unwrap();
    let span = server["span_id"].as_str().unwrap();
    assert_eq!(
        tp,
        format!("00-{trace}-{span}-01"),
        "the app's parent is B's span"
    );
    assert_eq!(a.metric("remora_spans_exported_total").await, Some(1.0));
}

/// The caller's decision is kept in both directions, whatever the rate; B3 callers keep
/// their trace too, and get B3 back.
#[tokio::test]
async fn a_callers_context_and_decision_are_kept() {
    let rx = Receiver::start();
    let app = echo("app").await;
    let never = proxy(&format!(
        "{}inbound: {{ listen: 127.0.0.1:0, app: \"{}\" }}\n",
        tracing_section(&rx.endpoint(), 0, "never"),
        app.addr
    ))
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let tp = format!("00-{trace}-{parent}-01");
    let r = get_with(
        never.inbound(),
        "app",
        "/",
        &[("traceparent", &tp), ("tracestate", "v=1")],
    )
    .await;
    let forwarded = seen(&r.body, "traceparent").unwrap();
    assert!(
        forwarded.starts_with(&format!("00-{trace}-")) && forwarded.ends_with("-01"),
        "{forwarded}"
    );
    assert_eq!(seen(&r.body, "tracestate").as_deref(), Some("v=1"));
    let spans = rx.wait_for(1).await;
    assert_eq!(spans[0]["trace_id"], trace);
    assert_eq!(spans[0]["parent_span_id"], parent);

    // B3, single header: same trace, and the app gets b3 with this hop's span.
    let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
    let r = get_with(never.inbound(), "app", "/", &[("b3", b3)]).await;
    let spans = rx.wait_for(2).await;
    let s = spans
        .iter()
        .find(|s| s["parent_span_id"] == "e457b5a2e4d86bd1")
        .unwrap();
    assert_eq!(s["trace_id"], "80f198ee56343ba864fe8b2a57d3eff7");
    let b3_out = seen(&r.body, "b3").unwrap();
    assert_eq!(
        b3_out,
        format!(
            "80f198ee56343ba864fe8b2a57d3eff7-{}-1",
            s["span_id"].as_str().unwrap()
        )
    );

    // B3 multi with a 64-bit trace ID.
    get_with(
        never.inbound(),
        "app",
        "/",
        &[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let spans = rx.wait_for(3).await;
    assert!(spans
        .iter()
        .any(|s| s["trace_id"] == "0000000000000000a3ce929d0e0e4736"));

    // A caller that said "not sampled" is not sampled here, at 100%.
    let always = proxy(&format!(
        "{}inbound: {{ listen: 127.0.0.1:0, app: \"{}\" }}\n",
        tracing_section(&rx.endpoint(), 100, "always"),
        app.addr
    ))
    .await;
    let unsampled = format!("00-{trace}-{parent}-00");
    let r = get_with(always.inbound(), "app", "/", &[("traceparent", &unsampled)]).await;
    assert!(seen(&r.body, "traceparent").unwrap().ends_with("-00"));
    // No request made at 0% without context is sampled, and it says so downstream.
    let r = get(never.inbound(), "app", "/").await;
    assert!(seen(&r.body, "traceparent").unwrap().ends_with("-00"));
    // A malformed traceparent is replaced by a new trace.
    let r = get_with(
        always.inbound(),
        "app",
        "/",
        &[("traceparent", "00-zz-yy-01")],
    )
    .await;
    let fresh = seen(&r.body, "traceparent").unwrap();
    assert!(fresh.ends_with("-01") && !fresh.contains("zz"), "{fresh}");
    let spans = rx.wait_for(4).await;
    assert_eq!(
        spans.len(),
        4,
        "only the sampled requests made spans: {spans:#?}"
    );
}

/// Remora's own failures mark the span failed, with the reason.
#[tokio::test]
async fn a_failed_request_is_a_failed_span() {
    let rx = Receiver::start();
    let dead = dead_addr().await;
    let p = proxy(&format!(
        "{}outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: {{ host: svc }}\n      backends: [{{ service: gone }}]\nservices:\n  gone: {{ endpoints: [\"{dead}\"] }}\n",
        tracing_section(&rx.endpoint(), 100, "p"),
    ))
    .await;
    assert_eq!(get(p.outbound(), "svc", "/").await.status, 502);
    let spans = rx.wait_for(1).await;
    assert_eq!(spans[0]["status"]["code"], "STATUS_CODE_ERROR");
    assert_eq!(spans[0]["status"]["message"], "upstream-connect-failure");
    assert_eq!(attr(&spans[0], "remora.error"), "upstream-connect-failure");
    assert_eq!(attr(&spans[0], "http.response.status_code"), 502);
}

/// Each try is an `attempt` event on the span, at the time it began, with what it got.
#[tokio::test]
async fn retries_are_attempt_events() {
    let rx = Receiver::start();
    let up = status_seq(&[503, 200]).await;
    let p = proxy(&format!(
        "{}outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: {{ host: svc }}\n      backends: [{{ service: s }}]\n      retry: {{ attempts: 2, on: [gateway-error], backoff: {{ base: 1ms, max: 2ms }} }}\nservices:\n  s: {{ endpoints: [\"{}\"] }}\n",
        tracing_section(&rx.endpoint(), 100, "p"),
        up.addr
    ))
    .await;
    assert_eq!(get(p.outbound(), "svc", "/").await.status, 200);
    let spans = rx.wait_for(1).await;
    let span = &spans[0];
    let events = span["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{span:#}");
    assert_eq!(events[0]["name"], "attempt");
    assert_eq!(events[0]["attributes"]["http.response.status_code"], 503);
    assert_eq!(events[1]["attributes"]["http.response.status_code"], 200);
    assert_eq!(events[1]["attributes"]["remora.attempt"], 2);
    assert_eq!(
        events[0]["attributes"]["remora.endpoint"],
        up.addr.to_string().as_str()
    );
    let (t0, t1) = (
        events[0]["time"].as_u64().unwrap(),
        events[1]["time"].as_u64().unwrap(),
    );
    assert!(
        span["start"].as_u64().unwrap() <= t0 && t0 <= t1 && t1 <= span["end"].as_u64().unwrap(),
        "{span:#}"
    );
    assert!(
        events[1]["attributes"]["remora.duration_ms"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    assert_eq!(attr(span, "remora.attempts"), 2);
}

/// A dead collector costs requests nothing: every one succeeds, and the spans are counted
/// as dropped.
#[tokio::test]
async fn a_dead_collector_fails_no_request() {
    let app = echo("app").await;
    let dead = dead_addr().await;
    let p = proxy(&format!(
        "{}inbound: {{ listen: 127.0.0.1:0, app: \"{}\" }}\n",
        tracing_section(&format!("http://{dead}"), 100, "p"),
        app.addr
    ))
    .await;
    for _ in 0..200 {
        assert_eq!(get(p.inbound(), "app", "/").await.status, 200);
    }
    let dropped = "remora_spans_dropped_total{reason=\"export-failed\"}";
    wait_until(|| async { p.metric(dropped).await == Some(200.0) }).await;
    assert_eq!(p.metric("remora_spans_exported_total").await, Some(0.0));
}

/// Without a `tracing:` section, trace headers pass through as they came and nothing is
/// exported; the request ID is still given.
#[tokio::test]
async fn no_tracing_section_leaves_trace_headers_alone() {
    let app = echo("app").await;
    let p = proxy(&format!(
        "inbound: {{ listen: 127.0.0.1:0, app: \"{}\" }}\n",
        app.addr
    ))
    .await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get_with(
        p.inbound(),
        "app",
        "/",
        &[("traceparent", tp), ("x-request-id", "mine")],
    )
    .await;
    assert_eq!(seen(&r.body, "traceparent").as_deref(), Some(tp));
    assert_eq!(seen(&r.body, "x-request-id").as_deref(), Some("mine"));
    let r = get(p.inbound(), "app", "/").await;
    assert_eq!(seen(&r.body, "traceparent"), None);
    assert_eq!(seen(&r.body, "x-request-id").map(|id| id.len()), Some(36));
}

#[test]
fn a_bad_tracing_section_is_refused_with_its_position() {
    let dir = std::env::temp_dir().join(format!("remora-test-{}-tracing", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("remora.yaml");
    std::fs::write(
        &path,
        "version: 1\ntracing:\n  otlp_endpoint: \"https://c:4318\"\n  sample_percent: 101\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_remora"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{text}");
    assert!(
        text.contains(":3:")
            && text.contains("tracing.otlp_endpoint: https collectors are not supported"),
        "{text}"
    );
    assert!(
        text.contains(":4:") && text.contains("tracing.sample_percent: must be 0 to 100"),
        "{text}"
    );
}

/// An inbound sidecar tracing every request, and the receiver its spans go to.
async fn traced_app() -> (Receiver, Upstream, Proxy) {
    let rx = Receiver::start();
    let app = echo("app").await;
    let p = proxy(&format!(
        "{}inbound: {{ listen: 127.0.0.1:0, app: \"{}\" }}\n",
        tracing_section(&rx.endpoint(), 100, "p"),
        app.addr
    ))
    .await;
    (rx, app, p)
}

/// Asked for OpenMetrics, `/metrics` gives the duration buckets exemplars with the trace IDs
/// of sampled requests; the plain format stays what `promtool check metrics` accepts.
#[tokio::test]
async fn openmetrics_carries_exemplars_and_text_passes_promtool() {
    let (rx, _app, p) = traced_app().await;
    for _ in 0..3 {
        assert_eq!(get(p.inbound(), "app", "/").await.status, 200);
    }
    let spans = rx.wait_for(3).await;
    let traces: Vec<&str> = spans
        .iter()
        .map(|s| s["trace_id"].as_str().unwrap())
        .collect();
    let open = get_with(
        p.admin,
        "a",
        "/metrics",
        &[("accept", "application/openmetrics-text; version=1.0.0")],
    )
    .await;
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
    assert!(
        open.body.contains("# TYPE remora_requests counter\n"),
        "counter families drop _total"
    );
    let with_exemplar = open
        .body
        .lines()
        .find(|l| {
            l.starts_with("remora_request_duration_seconds_bucket{")
                && l.contains(" # {trace_id=\"")
        })
        .unwrap_or_else(|| panic!("no exemplar in {}", open.body));
    assert!(
        traces.iter().any(|t| with_exemplar.contains(t)),
        "{with_exemplar} names one of {traces:?}"
    );

    let plain = get(p.admin, "a", "/metrics").await;
    assert!(
        !plain.body.contains("trace_id"),
        "exemplars only in OpenMetrics"
    );
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (tests/install-deps.sh installs it)");
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(plain.body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus with exemplar storage scrapes the admin listener and returns the
/// exemplar through its query API.
#[tokio::test]
async fn prometheus_stores_the_exemplars() {
    let (rx, _app, p) = traced_app().await;
    for _ in 0..3 {
        get(p.inbound(), "app", "/").await;
    }
    let spans = rx.wait_for(3).await;
    let dir = std::env::temp_dir().join(format!("remora-test-{}-prometheus", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (_prometheus, web) =
        start_prometheus(&dir, &[p.admin], &["--enable-feature=exemplar-storage"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let query = format!(
        "/api/v1/query_exemplars?query=remora_request_duration_seconds_bucket&start={}&end={}",
        now - 300,
        now + 300
    );
    let traces: Vec<String> = spans
        .iter()
        .map(|s| s["trace_id"].as_str().unwrap().to_owned())
        .collect();
    let found = || async {
        // Until Prometheus listens, nothing is found.
        if tokio::net::TcpStream::connect(web).await.is_err() {
            return false;
        }
        let r = get(web, "prometheus", &query).await;
        traces.iter().any(|t| r.body.contains(t.as_str()))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !found().await {
        assert!(
            std::time::Instant::now() < deadline,
            "no exemplar reached Prometheus: {}",
            get(web, "prometheus", &query).await.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
