//! Rate limits and fault injection through the real listeners.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use crate::support::*;

fn routed(up: &Upstream, route_extra: &str) -> String {
    svc_config(&[up.addr], &[route_extra], &[])
}

#[tokio::test]
async fn route_rate_limit_answers_429_with_retry_after() {
    let up = echo("u").await;
    let p = proxy(&routed(
        &up,
        "      rate_limit: { requests_per_second: 1, burst: 3 }",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(get(p.outbound(), "svc", "/").await.status, 200);
    }
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-remora-error"), Some("rate-limited"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        up.requests(),
        3,
        "a limited request never reaches the upstream"
    );
    let m = p
        .metric(r#"remora_rate_limited_total{direction="outbound"}"#)
        .await;
    assert_eq!(m, Some(1.0));
    let m = p
        .metric(r#"remora_requests_total{code="429",direction="outbound",route="r",service=""}"#)
        .await;
    assert_eq!(m, Some(1.0));
}

#[tokio::test]
async fn inbound_rate_limit_covers_all_callers() {
    let app = echo("app").await;
    let p = proxy(&format!(
        "inbound: {{ listen: 127.0.0.1:0, app: \"{}\", rate_limit: {{ requests_per_second: 1, burst: 2 }} }}\n",
        app.addr
    ))
    .await;
    let statuses: Vec<u16> = statuses_of(p.inbound(), 4).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    let m = p
        .metric(r#"remora_rate_limited_total{direction="inbound"}"#)
        .await;
    assert_eq!(m, Some(2.0));
}

async fn statuses_of(addr: std::net::SocketAddr, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(addr, "app", "/").await.status.as_u16());
    }
    out
}

#[tokio::test]
async fn abort_faults_follow_their_percentage() {
    let up = echo("u").await;
    let p = proxy(&routed(
        &up,
        "      fault: { abort: { percent: 50, status: 503 } }",
    ))
    .await;
    let n = 400;
    let mut aborted = 0;
    for _ in 0..n {
        let r = get(p.outbound(), "svc", "/").await;
        if r.status == 503 {
            assert_eq!(r.header("x-remora-error"), Some("fault-injected"));
            aborted += 1;
        } else {
            assert_eq!(r.status, 200);
        }
    }
    // Binomial(400, 0.5): the standard deviation is 10.
    assert!((150..=250).contains(&aborted), "{aborted} of {n} aborted");
    assert_eq!(
        up.requests(),
        n - aborted,
        "aborted requests never reach the upstream"
    );
    let m = p
        .metric(r#"remora_faults_injected_total{kind="abort",route="r"}"#)
        .await;
    assert_eq!(m, Some(aborted as f64));
}

#[tokio::test]
async fn delay_faults_hold_requests_back() {
    let up = echo("u").await;
    let p = proxy(&routed(
        &up,
        "      fault: { delay: { percent: 100, duration: 300ms } }",
    ))
    .await;
    let started = tokio::time::Instant::now();
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "delayed at least 300ms"
    );
    let m = p
        .metric(r#"remora_faults_injected_total{kind="delay",route="r"}"#)
        .await;
    assert_eq!(m, Some(1.0));
}

#[test]
fn bad_policies_are_config_errors() {
    let text = "version: 1\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      direct_response: { status: 200 }\n      rate_limit: { requests_per_second: 0 }\n      fault: { abort: { percent: 150, status: 42 } }\n";
    let err = config_error(text);
    assert!(
        err.contains(
            "f.yaml:7:42: outbound.routes[0].rate_limit.requests_per_second: must be at least 1"
        ),
        "{err}"
    );
    assert!(
        err.contains("outbound.routes[0].fault.abort.percent: percent must be between 0 and 100"),
        "{err}"
    );
    assert!(
        err.contains("outbound.routes[0].fault.abort.status: invalid status 42"),
        "{err}"
    );
}

#[test]
fn explain_shows_the_policies() {
    let text = "version: 1\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      direct_response: { status: 200 }\n      rate_limit: { requests_per_second: 200, burst: 50 }\n      fault: { delay: { percent: 1, duration: 100ms }, abort: { percent: 0.1, status: 503 } }\n";
    let c = remora::config::parse("f.yaml", text).unwrap();
    let ob = c.outbound.as_ref().unwrap();
    let probe = remora::explain::Probe::new("GET", "http://x/", []).unwrap();
    let out = remora::explain::explain(&probe, &ob.routes, ob.unmatched, &c.services).to_string();
    assert!(out.contains("    rate limit 200/s, burst 50"), "{out}");
    assert!(
        out.contains("    fault: delay 1% by 100ms; abort 0.1% with 503"),
        "{out}"
    );
    let text = "version: 1\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      backends: [{ service: s }]\n      retry: { attempts: 3, per_try_timeout: 500ms, on: [gateway-error, { retriable-status: [409] }, unavailable] }\nservices:\n  s: { endpoints: [\"127.0.0.1:1\"] }\n";
    let c = remora::config::parse("f.yaml", text).unwrap();
    let ob = c.outbound.as_ref().unwrap();
    let out = remora::explain::explain(&probe, &ob.routes, ob.unmatched, &c.services).to_string();
    assert!(
        out.contains("    retry: 3 attempts of at most 500ms, on gateway-error, 409, grpc 14, backoff 25ms..250ms"),
        "{out}"
    );
}

fn breaker_config(up: &Upstream, breaker: &str) -> String {
    let breaker = format!("circuit_breaker: {breaker}");
    svc_config(&[up.addr], &["timeout: 5s"], &["protocol: http1", &breaker])
}

/// How many answers were 200, and how many 503 `overloaded`.
fn ok_and_overloaded(results: &[(u16, Option<String>)]) -> (usize, usize) {
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let overloaded = results
        .iter()
        .filter(|(s, e)| *s == 503 && e.as_deref() == Some("overloaded"))
        .count();
    (ok, overloaded)
}

/// Sends `n` requests at once and returns their statuses and `x-remora-error`s.
async fn concurrently(out: std::net::SocketAddr, n: usize) -> Vec<(u16, Option<String>)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let r = get(out, "svc", "/").await;
                (
                    r.status.as_u16(),
                    r.header("x-remora-error").map(str::to_owned),
                )
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn max_requests_fails_fast_with_503_overloaded() {
    // Held long enough that all five arrive while the first two are in flight.
    let up = slow("slow", Duration::from_secs(2)).await;
    let p = proxy(&breaker_config(&up, "{ max_requests: 2 }")).await;
    let results = concurrently(p.outbound(), 5).await;
    let (ok, overloaded) = ok_and_overloaded(&results);
    assert_eq!((ok, overloaded), (2, 3), "{results:?}");
    assert_eq!(
        up.requests(),
        2,
        "refused requests never reach the upstream"
    );
    let m = p
        .metric(r#"remora_circuit_breaker_overflows_total{limit="max_requests",service="s"}"#)
        .await;
    assert_eq!(m, Some(3.0));
    let open = p
        .metric(r#"remora_circuit_breaker_open{service="s"}"#)
        .await;
    assert_eq!(open, Some(0.0), "closed again once the requests finished");
}

#[tokio::test]
async fn max_connections_queues_up_to_max_pending() {
    let up = slow("slow", Duration::from_secs(1)).await;
    let p = proxy(&breaker_config(
        &up,
        "{ max_connections: 1, max_pending_requests: 1 }",
    ))
    .await;
    let results = concurrently(p.outbound(), 3).await;
    let (ok, overloaded) = ok_and_overloaded(&results);
    // One on the connection, one waiting for it, one refused.
    assert_eq!((ok, overloaded), (2, 1), "{results:?}");
    assert_eq!(
        up.connections(),
        1,
        "the waiting request reused the one connection"
    );
    let m = p
        .metric(
            r#"remora_circuit_breaker_overflows_total{limit="max_pending_requests",service="s"}"#,
        )
        .await;
    assert_eq!(m, Some(1.0));
}

#[test]
fn breaker_limits_must_be_positive() {
    let text = "version: 1\noutbound: { listen: 127.0.0.1:0 }\nservices:\n  s:\n    endpoints: [\"127.0.0.1:1\"]\n    circuit_breaker: { max_requests: 0 }\n";
    let err = config_error(text);
    assert!(
        err.contains("services.s.circuit_breaker.max_requests: must be at least 1"),
        "{err}"
    );
}

fn outlier_config(good: &Upstream, bad: &Upstream) -> String {
    svc_config(
        &[good.addr, bad.addr],
        &[],
        &[
            "load_balancer: round_robin",
            "outlier_detection: { consecutive_failures: 3, base_ejection: 300ms, max_ejected_percent: 50 }",
        ],
    )
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_then_returns_and_is_ejected_again() {
    let good = echo("good").await;
    let bad = status_seq(&[500]).await;
    let p = proxy(&outlier_config(&good, &bad)).await;
    for _ in 0..20 {
        get(p.outbound(), "svc", "/").await;
    }
    assert_eq!(bad.requests(), 3, "ejected after three failures in a row");
    assert_eq!(good.requests(), 17, "the rest went to the healthy endpoint");
    let gauge = format!(
        r#"remora_endpoint_ejected{{endpoint="{}",service="s"}}"#,
        bad.addr
    );
    assert_eq!(p.metric(&gauge).await, Some(1.0));
    let ejections = r#"remora_outlier_ejections_total{service="s"}"#;
    assert_eq!(p.metric(ejections).await, Some(1.0));

    // After base_ejection it takes traffic again, fails, and is ejected for longer.
    wait_until(|| async {
        get(p.outbound(), "svc", "/").await;
        p.metric(ejections).await == Some(2.0)
    })
    .await;
    assert_eq!(bad.requests(), 6);
}

#[tokio::test]
async fn caller_deadlines_shorten_the_route_timeout_and_travel_upstream() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Option<String>, bool)>::new()));
    let log = seen.clone();
    let up = upstream_fn(move |req| {
        let log = log.clone();
        async move {
            let grpc = req
                .headers()
                .get("grpc-timeout")
                .map(|v| v.to_str().unwrap().to_owned());
            log.lock()
                .unwrap()
                .push((grpc, req.headers().contains_key("x-remora-timeout")));
            tokio::time::sleep(Duration::from_secs(2)).await;
            http::Response::new(TestBody::empty())
        }
    })
    .await;
    let p = proxy(&routed(&up, "      timeout: 10s")).await;
    let started = tokio::time::Instant::now();
    let r = get_with(p.outbound(), "svc", "/", &[("grpc-timeout", "300m")]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-remora-error"), Some("timeout"));
    let r = get_with(p.outbound(), "svc", "/", &[("x-remora-timeout", "200ms")]).await;
    assert_eq!(r.status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the callers' deadlines, not the route's 10s"
    );
    let seen = seen.lock().unwrap().clone();
    let (grpc, own) = &seen[0];
    let ms: u64 = grpc
        .as_deref()
        .unwrap()
        .trim_end_matches('m')
        .parse()
        .unwrap();
    assert!(
        ms <= 300 && ms > 200,
        "the time left went upstream: {grpc:?}"
    );
    assert!(!own);
    assert_eq!(seen[1], (None, false), "x-remora-timeout is Remora's own");
}

/// An upstream whose `/healthz` answers 200 or 500 as `healthy` says, and 200 elsewhere.
async fn checked(
    name: &'static str,
    healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Upstream {
    upstream_fn(move |req| {
        let healthy = healthy.clone();
        async move {
            if req.uri().path() == "/healthz" {
                let ok = healthy.load(std::sync::atomic::Ordering::SeqCst);
                http::Response::builder()
                    .status(if ok { 200 } else { 500 })
                    .body(TestBody::empty())
                    .unwrap()
            } else {
                echo_response(name, &req)
            }
        }
    })
    .await
}

#[tokio::test]
async fn health_checks_take_endpoints_out_and_back() {
    use std::sync::{atomic::AtomicBool, atomic::Ordering, Arc};
    let (a_ok, b_ok) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(true)),
    );
    let a = checked("a", a_ok.clone()).await;
    let b = checked("b", b_ok.clone()).await;
    let p = proxy(&svc_config(
        &[a.addr, b.addr],
        &[],
        &[
            "load_balancer: round_robin",
            "health_check: { path: /healthz, interval: 100ms, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }",
        ],
    ))
    .await;
    let gauge = |addr: std::net::SocketAddr| {
        format!(r#"remora_endpoint_healthy{{endpoint="{addr}",service="s"}}"#)
    };
    let served_by = |p: &Proxy| {
        let out = p.outbound();
        async move {
            let mut names = Vec::new();
            for _ in 0..10 {
                names.push(
                    get(out, "svc", "/")
                        .await
                        .header("x-upstream")
                        .unwrap_or("")
                        .to_owned(),
                );
            }
            names
        }
    };

    b_ok.store(false, Ordering::SeqCst);
    wait_until(|| async { p.metric(&gauge(b.addr)).await == Some(0.0) }).await;
    assert!(
        served_by(&p).await.iter().all(|n| n == "a"),
        "b is out of rotation"
    );

    b_ok.store(true, Ordering::SeqCst);
    wait_until(|| async { p.metric(&gauge(b.addr)).await == Some(1.0) }).await;
    assert!(served_by(&p).await.iter().any(|n| n == "b"), "b is back");

    // Nobody healthy: 503, not a request to a failing endpoint.
    a_ok.store(false, Ordering::SeqCst);
    b_ok.store(false, Ordering::SeqCst);
    wait_until(|| async {
        p.metric(&gauge(a.addr)).await == Some(0.0) && p.metric(&gauge(b.addr)).await == Some(0.0)
    })
    .await;
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-remora-error"), Some("no-healthy-endpoints"));
}

fn mirrored(primary: &Upstream, shadow: std::net::SocketAddr, percent: u32) -> String {
    format!(
        r#"
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: r
      match: {{ host: svc }}
      backends: [{{ service: primary }}]
      mirror: {{ service: shadow, percent: {percent} }}
services:
  primary: {{ endpoints: ["{}"] }}
  shadow: {{ endpoints: ["{shadow}"] }}
"#,
        primary.addr
    )
}

#[tokio::test]
async fn mirror_copies_reach_the_shadow_while_the_caller_sees_the_primary() {
    let primary = echo("primary").await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let log = seen.clone();
    let shadow = upstream_fn(move |req| {
        let log = log.clone();
        async move {
            let host = req.headers()["host"].to_str().unwrap().to_owned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            log.lock()
                .unwrap()
                .push((host, String::from_utf8_lossy(&body).into_owned()));
            http::Response::builder()
                .status(500)
                .body(TestBody::empty())
                .unwrap()
        }
    })
    .await;
    let p = proxy(&mirrored(&primary, shadow.addr, 100)).await;
    let r = get(p.outbound(), "svc", "/a").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-upstream")),
        (200, Some("primary"))
    );
    let req = Request::post(format!("http://{}/b", p.outbound()))
        .header("host", "svc")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let r = send(&h1_client(), req).await;
    assert_eq!(r.status, 200, "the shadow's 500 never reaches the caller");
    wait_until(|| async { seen.lock().unwrap().len() == 2 }).await;
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        [
            ("svc-shadow".to_owned(), String::new()),
            ("svc-shadow".to_owned(), "payload".to_owned())
        ]
    );
    assert_eq!(primary.requests(), 2);
    wait_until(|| async {
        p.metric(r#"remora_mirror_requests_total{result="sent",route="r"}"#)
            .await
            == Some(2.0)
    })
    .await;
}

#[tokio::test]
async fn a_stuck_shadow_never_holds_callers_up_and_copies_are_bounded() {
    let primary = echo("primary").await;
    // A shadow that never answers.
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let hold = release.clone();
    let shadow = upstream_fn(move |_req| {
        let hold = hold.clone();
        async move {
            hold.notified().await;
            http::Response::new(TestBody::empty())
        }
    })
    .await;
    let p = proxy(&mirrored(&primary, shadow.addr, 100)).await;
    for _ in 0..70 {
        // Each answer arrives while the shadow still holds its copy.
        assert_eq!(get(p.outbound(), "svc", "/").await.status, 200);
    }
    wait_until(|| async { shadow.requests() == 64 }).await;
    let dropped = p
        .metric(r#"remora_mirror_requests_total{result="dropped",route="r"}"#)
        .await;
    assert_eq!(
        dropped,
        Some(6.0),
        "at most 64 copies in flight; the rest are dropped"
    );
    release.notify_waiters();
}

#[tokio::test]
async fn a_dead_shadow_is_counted_and_harmless() {
    let primary = echo("primary").await;
    let p = proxy(&mirrored(&primary, dead_addr().await, 100)).await;
    for _ in 0..5 {
        assert_eq!(get(p.outbound(), "svc", "/").await.status, 200);
    }
    wait_until(|| async {
        p.metric(r#"remora_mirror_requests_total{result="failed",route="r"}"#)
            .await
            == Some(5.0)
    })
    .await;
    let none = proxy(&mirrored(&primary, dead_addr().await, 0)).await;
    get(none.outbound(), "svc", "/").await;
    assert_eq!(
        none.metric(r#"remora_mirror_requests_total{result="failed",route="r"}"#)
            .await,
        Some(0.0),
        "percent 0 copies nothing"
    );
}

#[tokio::test]
async fn health_checks_speak_http2_to_http2_services() {
    let versions = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = versions.clone();
    let up = upstream_fn(move |req| {
        let log = log.clone();
        async move {
            if req.uri().path() == "/healthz" {
                log.lock().unwrap().push(format!("{:?}", req.version()));
            }
            http::Response::new(TestBody::empty())
        }
    })
    .await;
    let _p = proxy(&svc_config(
        &[up.addr],
        &[],
        &[
            "protocol: http2",
            "health_check: { path: /healthz, interval: 50ms }",
        ],
    ))
    .await;
    wait_until(|| async { !versions.lock().unwrap().is_empty() }).await;
    assert_eq!(versions.lock().unwrap()[0], "HTTP/2.0");
}
