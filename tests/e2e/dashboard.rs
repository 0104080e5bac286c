//! The shipped Grafana dashboard and Prometheus rules against the real thing: a real
//! Prometheus scrapes two real sidecars (A calling B over mTLS) while they carry traffic that
//! exercises every panel (retries and a spent budget, an ejected endpoint, a saturated
//! breaker, health checks, request bodies, a reload), and every panel's query must parse and
//! return data. The rules pass `promtool check rules` and their own `promtool test rules`.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

fn root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    for args in [
        ["check", "rules", "deploy/prometheus/remora-rules.yaml"],
        ["test", "rules", "deploy/prometheus/remora-rules.test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(root())
            .output()
            .expect("promtool (tests/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every query of every panel, with the dashboard's variables given values as Grafana
/// would (all sidecars, a rate window that holds several scrapes).
fn panel_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("deploy/grafana/remora.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "30s")
                .replace("$instance", ".*");
            out.push((p["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    assert!(out.len() >= 20, "the dashboard has its panels");
    out
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Traffic for every panel: good calls over mTLS (some with bodies), failing ones that retry,
/// spend the budget and eject an endpoint, and concurrent ones past a breaker's limit.
async fn traffic(a: SocketAddr) {
    let client = h1_client();
    for i in 0..5 {
        assert_eq!(get(a, "b", "/orders").await.status, 200);
        let post = Request::post(format!("http://{a}/orders"))
            .header("host", "b")
            .body(Full::new(Bytes::from(format!("order {i}"))))
            .unwrap();
        assert_eq!(send(&client, post).await.status, 200);
    }
    for _ in 0..10 {
        get(a, "flaky", "/").await;
    }
    let tight: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(a, "tight", "/").await.status }))
        .collect();
    for t in tight {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn every_dashboard_panel_returns_data_from_a_real_prometheus() {
    let dir = std::env::temp_dir().join(format!("remora-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ids: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| format!("spiffe://test.local/ns/shop/sa/{n}"))
        .collect();
    remora::tls::certs::write_dev_certs(&dir, &ids, 10).unwrap();
    let identity = |n: &str| {
        format!(
            "identity: {{ trust_anchors: {:?}, certificate: {:?}, private_key: {:?} }}\n",
            dir.join("ca.crt"),
            dir.join(format!("{n}.crt")),
            dir.join(format!("{n}.key"))
        )
    };
    let app = echo("app").await;
    let b = proxy(&format!(
        "{}inbound:\n  listen: 127.0.0.1:0\n  app: \"{}\"\n  tls: strict\n",
        identity("b"),
        app.addr
    ))
    .await;
    let bad = status_seq(&[503]).await;
    let dead = dead_addr().await;
    let slow = slow("slow", Duration::from_millis(400)).await;
    let a_yaml = format!(
        r#"version: 1
admin: {{ listen: 127.0.0.1:0 }}
{identity}outbound:
  listen: 127.0.0.1:0
  routes:
    - name: to-b
      match: {{ host: b }}
      backends: [{{ service: b }}]
    - name: flaky
      match: {{ host: flaky }}
      backends: [{{ service: flaky }}]
      retry: {{ attempts: 3, on: [connect-failure, gateway-error], backoff: {{ base: 1ms, max: 2ms }} }}
    - name: tight
      match: {{ host: tight }}
      backends: [{{ service: tight }}]
services:
  b:
    endpoints: ["{b_in}"]
    tls: {{ identity: "{b_id}" }}
    health_check: {{ path: /healthz, interval: 1s, timeout: 1s }}
  flaky:
    endpoints: ["{dead}", "{bad}"]
    retry_budget: {{ ratio: 0.01, min_per_second: 1 }}
    outlier_detection: {{ consecutive_failures: 2, base_ejection: 60s, max_ejected_percent: 100 }}
  tight:
    endpoints: ["{slow}"]
    circuit_breaker: {{ max_requests: 1 }}
"#,
        identity = identity("a"),
        b_in = b.inbound(),
        b_id = ids[1],
        bad = bad.addr,
        slow = slow.addr,
    );
    let a_file = dir.join("a.yaml");
    std::fs::write(&a_file, &a_yaml).unwrap();
    let a = proxy_file(&a_file).await;
    traffic(a.outbound()).await;
    // A reload, so the reload panels have something to show.
    std::fs::write(&a_file, a_yaml.replace("base: 1ms", "base: 2ms")).unwrap();
    let r = raw(
        a.admin,
        b"POST /reload HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    let (_prometheus, web) = start_prometheus(&dir, &[a.admin, b.admin], &[]);
    let queries = panel_queries();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Traffic goes on while Prometheus scrapes, so rates have two samples to go by.
        traffic(a.outbound()).await;
        let mut empty = Vec::new();
        if tokio::net::TcpStream::connect(web).await.is_ok() {
            for (title, expr) in &queries {
                let r = get(
                    web,
                    "prometheus",
                    &format!("/api/v1/query?query={}", percent_encode(expr)),
                )
                .await;
                let v: serde_json::Value = serde_json::from_str(&r.body)
                    .unwrap_or_else(|_| panic!("{title}: {expr}: {}", r.body));
                assert_eq!(
                    v["status"], "success",
                    "{title}: {expr} does not parse: {}",
                    r.body
                );
                if v["data"]["result"].as_array().is_none_or(|a| a.is_empty()) {
                    empty.push(format!("{title}: {expr}"));
                }
            }
            if empty.is_empty() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "panels without data after 60 s:\n{}",
            empty.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
