//! The admin listener, metrics, graceful drain, and the real binary.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

#[tokio::test]
async fn admin_endpoints() {
    let up = echo("u").await;
    let p = proxy(&format!(
        r#"
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: r
      match: {{ host: svc }}
      backends: [{{ service: s, weight: 3 }}]
services:
  s: {{ endpoints: ["{}"] }}
"#,
        up.addr
    ))
    .await;
    assert_eq!(get(p.admin, "a", "/live").await.status, 200);
    assert_eq!(get(p.admin, "a", "/ready").await.status, 200);
    assert_eq!(get(p.admin, "a", "/nope").await.status, 404);
    let cfg = get(p.admin, "a", "/config").await;
    assert_eq!(cfg.status, 200);
    // The effective config: what the file said plus every default.
    assert!(cfg.body.contains("weight: 3"), "{}", cfg.body);
    assert!(
        cfg.body.contains("timeout: 15s"),
        "route default shown: {}",
        cfg.body
    );
    assert!(
        cfg.body.contains("load_balancer: least_request"),
        "{}",
        cfg.body
    );
    // Sections the file left out appear with the values in force, not as null.
    for shown in [
        "max_header_bytes: 65536",
        "header_read_timeout: 10s",
        "drain_timeout: 30s",
        "level: info",
        "format: json",
    ] {
        assert!(cfg.body.contains(shown), "{shown} in {}", cfg.body);
    }
    assert!(!cfg.body.contains("null"), "{}", cfg.body);
}

#[tokio::test]
async fn metrics_count_requests_exactly() {
    let up = status_seq(&[500, 200]).await;
    let p = proxy(&format!(
        r#"
outbound:
  listen: 127.0.0.1:0
  unmatched: reject
  routes:
    - name: orders
      match: {{ host: orders }}
      backends: [{{ service: orders-v1 }}]
services:
  orders-v1: {{ endpoints: ["{}"] }}
"#,
        up.addr
    ))
    .await;
    for _ in 0..7 {
        get(p.outbound(), "orders", "/").await;
    }
    for _ in 0..3 {
        get(p.outbound(), "unknown", "/").await;
    }
    let text = p.metrics().await;
    let line = |s: &str| {
        text.lines()
            .find(|l| l.starts_with(s))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    assert_eq!(
        line(r#"remora_requests_total{code="500",direction="outbound",route="orders",service="orders-v1"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        line(r#"remora_requests_total{code="200",direction="outbound",route="orders",service="orders-v1"}"#).as_deref(),
        Some("6")
    );
    assert_eq!(
        line(r#"remora_requests_total{code="404",direction="outbound",route="",service=""}"#)
            .as_deref(),
        Some("3")
    );
    assert_eq!(
        line(r#"remora_request_duration_seconds_count{direction="outbound",route="orders",service="orders-v1"}"#)
            .as_deref(),
        Some("7")
    );
    assert!(text.contains(r#"remora_request_duration_seconds_bucket{direction="outbound",route="orders",service="orders-v1",le="0.0005"}"#));
    assert!(text.contains(r#"le="30"}"#), "buckets reach 30 s");
    assert_eq!(
        line(r#"remora_upstream_attempts_total{result="success",service="orders-v1"}"#).as_deref(),
        Some("7")
    );
    assert!(text.contains("remora_build_info{version=\""));
    assert!(text.contains("process_resident_memory_bytes"));
    assert!(text.contains("process_open_fds"));
    assert!(text.contains(r#"remora_connections_open{direction="outbound"}"#));
}

/// Each failure Remora answers itself is counted under its own reason, so a 503 because the
/// breaker is full and a 503 because no endpoint is healthy are different series.
#[tokio::test]
async fn errors_are_counted_by_reason() {
    let up = echo("u").await;
    let dead = dead_addr().await;
    let p = proxy(&format!(
        r#"
outbound:
  listen: 127.0.0.1:0
  unmatched: reject
  routes:
    - name: ok
      match: {{ host: ok }}
      backends: [{{ service: live }}]
    - name: dead
      match: {{ host: dead }}
      backends: [{{ service: gone }}]
    - name: limited
      match: {{ host: limited }}
      backends: [{{ service: live }}]
      rate_limit: {{ requests_per_second: 1, burst: 1 }}
services:
  live: {{ endpoints: ["{}"] }}
  gone: {{ endpoints: ["{}"] }}
"#,
        up.addr, dead
    ))
    .await;
    assert_eq!(get(p.outbound(), "ok", "/").await.status, 200);
    for _ in 0..2 {
        assert_eq!(get(p.outbound(), "dead", "/").await.status, 502);
    }
    assert_eq!(get(p.outbound(), "nowhere", "/").await.status, 404);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(p.outbound(), "limited", "/").await.status);
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited >= 1, "{statuses:?}");
    let errors = |route: &str, service: &str, reason: &str| {
        format!(
            r#"remora_proxy_errors_total{{direction="outbound",reason="{reason}",route="{route}",service="{service}"}}"#
        )
    };
    assert_eq!(
        p.metric(&errors("dead", "gone", "upstream-connect-failure"))
            .await,
        Some(2.0)
    );
    assert_eq!(p.metric(&errors("", "", "no-route")).await, Some(1.0));
    assert_eq!(
        // Refused before a backend was picked: no service.
        p.metric(&errors("limited", "", "rate-limited")).await,
        Some(limited as f64)
    );
    let text = p.metrics().await;
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("remora_proxy_errors_total") && l.contains(r#"route="ok""#)),
        "a served request is no error: {text}"
    );
}

/// Body bytes are counted as they stream, each way, under the route and service: a chunked
/// echo has no content-length to read them from.
#[tokio::test]
async fn body_bytes_are_counted_as_they_stream() {
    let up = body_echo(None).await;
    let p = proxy(&format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: echo\n      match: {{ host: echo }}\n      backends: [{{ service: e }}]\nservices:\n  e: {{ endpoints: [\"{}\"] }}\n",
        up.addr
    ))
    .await;
    for size in [1000usize, 2345] {
        let req = Request::post(format!("http://{}/", p.outbound()))
            .header("host", "echo")
            .body(Full::new(Bytes::from(vec![b'x'; size])))
            .unwrap();
        let r = send(&h1_client(), req).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), size);
    }
    let labels = r#"{direction="outbound",route="echo",service="e"}"#;
    let total = 1000.0 + 2345.0;
    wait_until(|| async {
        p.metric(&format!("remora_response_bytes_total{labels}"))
            .await
            == Some(total)
    })
    .await;
    assert_eq!(
        p.metric(&format!("remora_request_bytes_total{labels}"))
            .await,
        Some(total)
    );
    // A bodiless GET adds nothing, and makes no request-bytes series of its own.
    get(p.outbound(), "echo", "/").await;
    assert_eq!(
        p.metric(&format!("remora_request_bytes_total{labels}"))
            .await,
        Some(total)
    );
}

#[tokio::test]
async fn graceful_stop_finishes_in_flight_requests() {
    let up = slow("slow", Duration::from_millis(600)).await;
    let mut p = proxy(&format!(
        "shutdown: {{ grace: 0s, drain_timeout: 10s }}\n{}",
        svc_config(&[up.addr], &["timeout: 5s"], &[])
    ))
    .await;
    let out = p.outbound();
    let in_flight = tokio::spawn(async move { get(out, "svc", "/").await });
    wait_until(|| async { up.requests() == 1 }).await;
    let stopped = p.begin_shutdown();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request completes");
    tokio::time::timeout(DEADLINE, stopped)
        .await
        .expect("drains")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(out).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn readiness_turns_off_at_once_during_grace() {
    let mut p = proxy("shutdown: { grace: 2s }\noutbound: { listen: 127.0.0.1:0 }\n").await;
    let admin = p.admin;
    let stopped = p.begin_shutdown();
    wait_until(|| async { get(admin, "a", "/ready").await.status == 503 }).await;
    // Still accepting during the grace period.
    assert_eq!(get(p.outbound(), "nothing", "/").await.status, 502);
    tokio::time::timeout(DEADLINE, stopped)
        .await
        .unwrap()
        .unwrap();
}

// === the real binary ===

/// A `remora` child process, killed on drop.
struct Child_(Child);

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn remora() -> Command {
    Command::new(env!("CARGO_BIN_EXE_remora"))
}

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("remora-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("remora.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn binary_version_help_and_check() {
    let out = remora().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    for sub in [&["--help"][..], &["run", "--help"], &["check", "--help"]] {
        assert!(
            remora().args(sub).output().unwrap().status.success(),
            "{sub:?}"
        );
    }
    let good = temp_config("good", "version: 1\noutbound: { listen: 127.0.0.1:0 }\n");
    assert_eq!(
        remora().arg("check").arg(&good).status().unwrap().code(),
        Some(0)
    );
    let bad = temp_config(
        "bad",
        "version: 1\noutbound: { listen: 127.0.0.1:0, colour: red }\n",
    );
    let out = remora().arg("check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":2:34: outbound.colour: unknown field `colour`"),
        "{err}"
    );
    let out = remora()
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "run refuses a bad config too");
    // In the log format the file asks for (JSON by default) on stdout, and plain on stderr.
    let line: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(line["level"], "ERROR");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("outbound.colour: unknown field"),
        "{line}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("outbound.colour: unknown field"));
    let text = temp_config(
        "bad-text",
        "version: 1\nlog: { format: text }\noutbound: { listen: 127.0.0.1:0, colour: red }\n",
    );
    let out = remora()
        .args(["run", "--config"])
        .arg(&text)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ERROR") && stdout.contains("cannot start") && !stdout.starts_with('{'),
        "{stdout}"
    );

    // A listener that cannot bind, after the config loaded: the same.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = temp_config(
        "busy",
        &format!(
            "version: 1\nadmin: {{ listen: 127.0.0.1:0 }}\noutbound: {{ listen: {} }}\n",
            taken.local_addr().unwrap()
        ),
    );
    let out = remora()
        .args(["run", "--config"])
        .arg(&busy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(last["level"], "ERROR", "{last}");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("Address already in use"),
        "{last}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("remora:"));
}

/// A running `remora run` with its log lines on a channel (so every wait for one is
/// bounded) and the addresses its port-0 listeners were bound to.
struct Running {
    child: Child_,
    lines: std::sync::mpsc::Receiver<String>,
    admin: std::net::SocketAddr,
    outbound: std::net::SocketAddr,
}

impl Running {
    fn start(cfg: &std::path::Path) -> Self {
        Self::start_with(cfg, &[])
    }

    /// Starts the binary on `cfg` with `env` added to its environment.
    fn start_with(cfg: &std::path::Path, env: &[(&str, &str)]) -> Self {
        // One worker: the single-threaded scheduler a one-CPU sidecar runs.
        let child = remora()
            .args(["run", "--workers", "1", "--config"])
            .arg(cfg)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = Child_(child);
        let stdout = child.0.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut running = Running {
            child,
            lines,
            admin: "0.0.0.0:0".parse().unwrap(),
            outbound: "0.0.0.0:0".parse().unwrap(),
        };
        // The "listener bound" lines say where the port-0 listeners ended up.
        let (mut admin, mut outbound) = (None, None);
        while admin.is_none() || outbound.is_none() {
            let line = running.next_line();
            let addr = line
                .split("\"addr\":\"")
                .nth(1)
                .and_then(|s| s.split('"').next()?.parse().ok());
            if line.contains("admin listener bound") {
                admin = addr;
            } else if line.contains("\"direction\":\"outbound\"") && line.contains("listener bound")
            {
                outbound = addr;
            }
        }
        running.admin = admin.unwrap();
        running.outbound = outbound.unwrap();
        // Signals are handled from here on (SIGHUP before would end the process).
        running.line_with(&["\"message\":\"ready\""]);
        running
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a log line before the deadline")
    }

    /// The next log line containing every one of `parts`.
    fn line_with(&self, parts: &[&str]) -> String {
        loop {
            let line = self.next_line();
            if parts.iter().all(|p| line.contains(p)) {
                return line;
            }
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.0.id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Waits for the process to exit and returns its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "the process exits");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn binary_runs_serves_logs_and_stops_on_sigterm() {
    // An upstream bound now, so its address can go in the file; served once the test runs.
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    app.set_nonblocking(true).unwrap();
    let grpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    grpc.set_nonblocking(true).unwrap();
    let cfg = temp_config(
        "run",
        &format!(
            r#"version: 1
admin: {{ listen: 127.0.0.1:0 }}
log: {{ format: json, level: info, access_log: true }}
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: hello
      match: {{ host: hello }}
      direct_response: {{ status: 200, body: "hi" }}
    - name: app
      match: {{ host: app }}
      backends: [{{ service: app }}]
      cache: {{}}
    - name: h2
      match: {{ host: h2 }}
      backends: [{{ service: h2 }}]
services:
  app: {{ endpoints: ["{}"] }}
  h2: {{ endpoints: ["{}"], protocol: http2 }}
"#,
            app.local_addr().unwrap(),
            grpc.local_addr().unwrap()
        ),
    );
    let mut run = Running::start(&cfg);
    let (admin, outbound) = (run.admin, run.outbound);
    run.block_on(async {
        wait_until(|| async { get(admin, "a", "/ready").await.status == 200 }).await;
        let r = get(outbound, "hello", "/greet").await;
        assert_eq!(r.body, "hi");
        let _up = serve_upstream(
            tokio::net::TcpListener::from_std(app).unwrap(),
            std::sync::Arc::new(|req| Box::pin(async move { echo_response("app", &req) })),
        );
        assert_eq!(get(outbound, "app", "/x").await.status, 200);
        let _h2 = serve_speaking(
            tokio::net::TcpListener::from_std(grpc).unwrap(),
            std::sync::Arc::new(|req| Box::pin(async move { echo_response("h2", &req) })),
            Speaks::Http2,
        );
        assert_eq!(get(outbound, "h2", "/y").await.status, 200);
    });
    // One flat JSON access log line for the request.
    let access = run.line_with(&["\"target\":\"remora::access\""]);
    for field in [
        "\"method\":\"GET\"",
        "\"authority\":\"hello\"",
        "\"path\":\"/greet\"",
        "\"status\":200",
        "\"route\":\"hello\"",
        "\"direction\":\"outbound\"",
        "\"duration_ms\":",
        "\"response_headers_ms\":",
        "\"protocol\":\"1.1\"",
        "\"response_bytes\":2",
        "\"request_bytes\":0",
        "\"request_id\":\"",
    ] {
        assert!(access.contains(field), "{field} missing from {access}");
    }
    // Forwarded: the try's timings, connecting included (a new connection).
    let forwarded = run.line_with(&["\"target\":\"remora::access\"", "\"route\":\"app\""]);
    let line: serde_json::Value = serde_json::from_str(&forwarded).unwrap();
    let response = line["upstream_response_ms"]
        .as_f64()
        .expect("upstream_response_ms");
    let connect = line["upstream_connect_ms"]
        .as_f64()
        .expect("upstream_connect_ms");
    let whole = line["duration_ms"].as_f64().unwrap();
    assert!(connect <= response && response <= whole, "{forwarded}");
    assert_eq!(line["attempts"], 1, "{forwarded}");
    // The route caches: what its cache did (nothing stored yet: a miss).
    assert_eq!(line["cache"], "miss", "{forwarded}");
    // The same for the request that opened the shared HTTP/2 connection.
    let forwarded = run.line_with(&["\"target\":\"remora::access\"", "\"route\":\"h2\""]);
    let line: serde_json::Value = serde_json::from_str(&forwarded).unwrap();
    let connect = line["upstream_connect_ms"]
        .as_f64()
        .expect("upstream_connect_ms over HTTP/2");
    assert!(
        connect <= line["upstream_response_ms"].as_f64().unwrap(),
        "{forwarded}"
    );
    run.signal("-TERM");
    assert_eq!(run.wait_exit(), Some(0));
}

/// `REMORA_OPAQUE_PORTS` (what `remora inject` sets from a pod's `remora.io/opaque-ports`)
/// adds ports to `opaque_ports`: a server-first protocol's greeting comes through at once,
/// where detection would wait for the client (here, an hour). A bad value is refused.
#[test]
fn opaque_ports_from_the_environment_skip_detection() {
    use std::io::{Read, Write};
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_addr = app.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in app.incoming().flatten().take(4) {
            let _ = s.write_all(b"220 ready\r\n");
            std::thread::spawn(move || {
                let mut sink = [0u8; 64];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    // Explicit mode has no original destination: the port is the listener's own.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = temp_config(
        "opaque-env",
        &format!(
            "version: 1\nadmin: {{ listen: 127.0.0.1:0 }}\nlog: {{ format: json, level: info }}\nlimits: {{ detect_timeout: 1h }}\ninbound:\n  listen: 127.0.0.1:{port}\n  app: \"{app_addr}\"\noutbound: {{ listen: 127.0.0.1:0 }}\n"
        ),
    );
    let run = Running::start_with(&cfg, &[("REMORA_OPAQUE_PORTS", &format!("4222, {port}"))]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 11];
    s.read_exact(&mut greeting)
        .expect("the greeting, without detection's wait");
    assert_eq!(&greeting, b"220 ready\r\n");
    run.signal("-TERM");
    let out = remora()
        .arg("check")
        .arg(&cfg)
        .env("REMORA_OPAQUE_PORTS", "4222,nats")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("REMORA_OPAQUE_PORTS: \"nats\" is not a port"),
        "{err}"
    );
}

/// `POST /shutdown` stops the process as SIGTERM does: how a Job's app ends a sidecar that
/// runs as an ordinary container.
#[test]
fn post_shutdown_stops_the_process_gracefully() {
    let cfg = temp_config(
        "quit",
        "version: 1\nadmin: { listen: 127.0.0.1:0 }\nlog: { format: json, level: info }\nshutdown: { grace: 0s, drain_timeout: 1s }\noutbound: { listen: 127.0.0.1:0 }\n",
    );
    let mut run = Running::start(&cfg);
    let admin = run.admin;
    run.block_on(async {
        wait_until(|| async { get(admin, "a", "/ready").await.status == 200 }).await;
        let r = raw(admin, b"GET /shutdown HTTP/1.1\r\nhost: a\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        assert_eq!(get(admin, "a", "/ready").await.status, 200);
        let r = raw(
            admin,
            b"POST /shutdown HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    });
    run.line_with(&["stop requested on the admin listener"]);
    assert_eq!(run.wait_exit(), Some(0));
}

#[test]
fn sigterm_is_not_held_up_by_a_reload_still_compiling() {
    let small = "version: 1\nadmin: { listen: 127.0.0.1:0 }\nlog: { format: json, level: debug }\nshutdown: { grace: 0s, drain_timeout: 1s }\noutbound: { listen: 127.0.0.1:0 }\n";
    let cfg = temp_config("slow-reload", small);
    // A big file (3 MiB, 20,000 routes and services, under the 4 MiB cap) that takes seconds
    // to compile in a test build.
    let mut big = small.replace("outbound: { listen: 127.0.0.1:0 }\n", "services:\n");
    for i in 0..20_000 {
        big.push_str(&format!(
            "  s{i}: {{ endpoints: [127.0.0.1:{}] }}\n",
            1000 + i
        ));
    }
    big.push_str("outbound:\n  listen: 127.0.0.1:0\n  routes:\n");
    for i in 0..20_000 {
        big.push_str(&format!("    - {{ name: r{i}, match: {{ host: h{i}, path: {{ prefix: /v{i}/ }} }}, backends: [{{ service: s{i} }}] }}\n"));
    }
    let big_file = temp_config("slow-reload-big", &big);
    let started = std::time::Instant::now();
    let out = remora().arg("check").arg(&big_file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compile = started.elapsed();

    let run = Running::start(&cfg);
    std::fs::write(&cfg, &big).unwrap();
    run.signal("-HUP");
    run.line_with(&["config reload started"]);
    let stopping = std::time::Instant::now();
    run.signal("-TERM");
    let mut run = run;
    assert_eq!(run.wait_exit(), Some(0));
    let stop = stopping.elapsed();
    assert!(
        stop * 2 < compile,
        "SIGTERM took {stop:?} while the reload's compile takes {compile:?}"
    );
}

#[test]
fn binary_reloads_on_sighup() {
    let config = |body: &str| {
        format!(
            "version: 1\nadmin: {{ listen: 127.0.0.1:0 }}\nlog: {{ format: json }}\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: hello\n      direct_response: {{ status: 200, body: {body} }}\n"
        )
    };
    let cfg = temp_config("sighup", &config("v1"));
    let run = Running::start(&cfg);
    let outbound = run.outbound;
    run.block_on(async { assert_eq!(get(outbound, "any", "/").await.body, "v1") });
    std::fs::write(&cfg, config("v2")).unwrap();
    run.signal("-HUP");
    // The file watch may notice the change first; either way SIGHUP reloads and says so.
    run.line_with(&["config reloaded", "\"trigger\":\"sighup\""]);
    run.block_on(async { assert_eq!(get(outbound, "any", "/").await.body, "v2") });
}

#[test]
fn binary_exits_1_when_a_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = temp_config(
        "taken",
        &format!("version: 1\nadmin: {{ listen: \"127.0.0.1:0\" }}\noutbound: {{ listen: \"{addr}\" }}\n"),
    );
    // The config comes from REMORA_CONFIG here.
    let out = remora()
        .arg("run")
        .env("REMORA_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr.to_string()) && err.contains("outbound"),
        "{err}"
    );
}

#[tokio::test]
async fn a_flood_of_silent_connections_cannot_keep_a_scrape_out() {
    let up = echo("u").await;
    let p = proxy(&svc_config(&[up.addr], &[], &[])).await;
    // More silent connections than the admin listener takes at once.
    let mut silent = Vec::new();
    for _ in 0..(remora::admin::MAX_CONNECTIONS + 50) {
        silent.push(tokio::net::TcpStream::connect(p.admin).await.unwrap());
    }
    // Served well before the silent ones' head deadline frees anything.
    let within = remora::admin::HEAD_TIMEOUT / 2;
    let r = tokio::time::timeout(within, get(p.admin, "admin", "/ready"))
        .await
        .expect("a real client gets in while the flood holds on");
    assert_eq!(r.status, 200);
    let r = tokio::time::timeout(within, get(p.admin, "admin", "/metrics"))
        .await
        .expect("and again");
    assert_eq!(r.status, 200);
    drop(silent);
}
