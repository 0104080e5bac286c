//! Retries through the real listeners: conditions, the attempt cap, per-try timeouts,
//! idempotency, body replay, the retry budget, gRPC status codes and the route deadline.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Full};

use crate::support::*;

fn config(endpoints: &[std::net::SocketAddr], retry: &str, extra_service: &str) -> String {
    let retry = format!("retry: {retry}");
    svc_config(
        endpoints,
        &["timeout: 5s", &retry],
        &["load_balancer: round_robin", extra_service],
    )
}

const FAST: &str = "backoff: { base: 1ms, max: 5ms }";

async fn request(p: &Proxy, method: &str, body: &'static str) -> Resp {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}/", p.outbound()))
        .header("host", "svc")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    send(&h1_client(), req).await
}

async fn retries(p: &Proxy) -> Option<f64> {
    p.metric(r#"remora_retries_total{route="r",service="s"}"#)
        .await
}

#[tokio::test]
async fn gateway_errors_are_retried_until_success() {
    let up = status_seq(&[503, 502, 200]).await;
    let p = proxy(&config(
        &[up.addr],
        &format!("{{ attempts: 3, {FAST} }}"),
        "",
    ))
    .await;
    assert_eq!(get(p.outbound(), "svc", "/").await.status, 200);
    assert_eq!(up.requests(), 3);
    assert_eq!(retries(&p).await, Some(2.0));
}

#[tokio::test]
async fn attempts_cap_the_tries_and_the_last_answer_is_returned() {
    let up = status_seq(&[503]).await;
    let p = proxy(&config(
        &[up.addr],
        &format!("{{ attempts: 3, {FAST} }}"),
        "",
    ))
    .await;
    assert_eq!(get(p.outbound(), "svc", "/").await.status, 503);
    assert_eq!(
        up.requests(),
        3,
        "attempts counts every try, the first included"
    );
}

#[tokio::test]
async fn only_listed_conditions_are_retried() {
    let up = status_seq(&[503, 200]).await;
    let p = proxy(&config(
        &[up.addr],
        &format!("{{ attempts: 3, on: [connect-failure], {FAST} }}"),
        "",
    ))
    .await;
    assert_eq!(get(p.outbound(), "svc", "/").await.status, 503);
    assert_eq!(up.requests(), 1);

    let conflict = status_seq(&[409, 200]).await;
    let p = proxy(&config(
        &[conflict.addr],
        &format!("{{ attempts: 2, on: [{{ retriable-status: [409] }}], {FAST} }}"),
        "",
    ))
    .await;
    assert_eq!(get(p.outbound(), "svc", "/").await.status, 200);
    assert_eq!(conflict.requests(), 2);
}

#[tokio::test]
async fn a_per_try_timeout_moves_the_request_to_another_endpoint() {
    let stuck = slow("stuck", Duration::from_secs(3)).await;
    let fast = echo("fast").await;
    let p = proxy(&config(
        &[stuck.addr, fast.addr],
        &format!("{{ attempts: 2, per_try_timeout: 200ms, {FAST} }}"),
        "",
    ))
    .await;
    // Round robin sends the first try to the stuck endpoint; the retry avoids it.
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("fast"));
    assert_eq!(stuck.requests(), 1);
}

#[tokio::test]
async fn post_is_retried_only_if_it_never_reached_the_upstream_unless_opted_in() {
    let up = status_seq(&[503, 200]).await;
    let p = proxy(&config(
        &[up.addr],
        &format!("{{ attempts: 2, {FAST} }}"),
        "",
    ))
    .await;
    assert_eq!(request(&p, "POST", "x").await.status, 503);
    assert_eq!(up.requests(), 1, "the upstream saw the POST: not retried");

    let dead = dead_addr().await;
    let good = echo("good").await;
    let p = proxy(&config(
        &[dead, good.addr],
        &format!("{{ attempts: 2, {FAST} }}"),
        "",
    ))
    .await;
    for _ in 0..6 {
        assert_eq!(
            request(&p, "POST", "x").await.status,
            200,
            "a refused connection is safe to retry"
        );
    }
}

#[tokio::test]
async fn opted_in_post_bodies_are_replayed_and_large_ones_are_not_retried() {
    let bodies = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = bodies.clone();
    let up = upstream_fn(move |req| {
        let seen = seen.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut all = seen.lock().unwrap();
            all.push(String::from_utf8_lossy(&body).into_owned());
            let status = if all.len() % 2 == 1 { 503 } else { 200 };
            http::Response::builder()
                .status(status)
                .body(TestBody::empty())
                .unwrap()
        }
    })
    .await;
    let p = proxy(&config(
        &[up.addr],
        &format!("{{ attempts: 2, non_idempotent: true, {FAST} }}"),
        "",
    ))
    .await;
    assert_eq!(request(&p, "POST", "payload").await.status, 200);
    assert_eq!(
        *bodies.lock().unwrap(),
        ["payload", "payload"],
        "the retry replayed the body"
    );

    // Over the 64 KiB replay cap: streamed once, never retried.
    bodies.lock().unwrap().clear();
    let big: &'static str = Box::leak("b".repeat(100 * 1024).into_boxed_str());
    assert_eq!(request(&p, "POST", big).await.status, 503);
    assert_eq!(bodies.lock().unwrap().len(), 1);
    assert_eq!(
        bodies.lock().unwrap()[0].len(),
        100 * 1024,
        "streamed whole"
    );
}

#[tokio::test]
async fn the_budget_bounds_attempts_during_an_outage() {
    let up = status_seq(&[503]).await;
    let p = proxy(&config(
        &[up.addr],
        &format!("{{ attempts: 5, {FAST} }}"),
        "    retry_budget: { ratio: 0.2, min_per_second: 1 }",
    ))
    .await;
    let n = 50;
    for _ in 0..n {
        assert_eq!(get(p.outbound(), "svc", "/").await.status, 503);
    }
    // Without a budget: 250 attempts. With it: requests + 20% + 1/s over the 10 s window.
    let attempts = up.requests();
    assert!(
        attempts <= n + n / 5 + 10,
        "{attempts} attempts for {n} requests"
    );
    assert!(attempts > n, "some retries were allowed");
    let exhausted = p
        .metric(r#"remora_retry_budget_exhausted_total{service="s"}"#)
        .await;
    assert!(exhausted >= Some(1.0));
}

#[tokio::test]
async fn the_route_timeout_bounds_every_attempt_together() {
    let up = slow("slow", Duration::from_secs(2)).await;
    let p = proxy(
        &config(
            &[up.addr],
            &format!("{{ attempts: 5, per_try_timeout: 300ms, {FAST} }}"),
            "",
        )
        .replace("timeout: 5s", "timeout: 500ms"),
    )
    .await;
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-remora-error"), Some("timeout"));
    assert!(
        up.requests() <= 2,
        "no try starts that could not finish: {}",
        up.requests()
    );
}

/// A gRPC upstream answering `grpc-status: 14` (unavailable) first, then OK; the status
/// is in the headers (trailers-only) or in trailers after them.
async fn flaky_grpc(in_trailers: bool) -> Upstream {
    let calls = Arc::new(Mutex::new(0));
    upstream_fn(move |_req| {
        let calls = calls.clone();
        async move {
            let n = {
                let mut c = calls.lock().unwrap();
                *c += 1;
                *c
            };
            let code = if n == 1 { "14" } else { "0" };
            let mut b = http::Response::builder().header("content-type", "application/grpc");
            if in_trailers {
                let mut t = HeaderMap::new();
                t.insert("grpc-status", HeaderValue::from_static(code));
                b.body(TestBody::with_trailers(vec![], t)).unwrap()
            } else {
                b = b.header("grpc-status", code);
                b.body(TestBody::empty()).unwrap()
            }
        }
    })
    .await
}

#[tokio::test]
async fn grpc_unavailable_is_retried_from_headers_or_trailers() {
    for in_trailers in [false, true] {
        let up = flaky_grpc(in_trailers).await;
        let p = proxy(
            &config(
                &[up.addr],
                &format!("{{ attempts: 2, on: [unavailable], {FAST} }}"),
                "",
            )
            .replace("endpoints: [", "protocol: http2\n    endpoints: ["),
        )
        .await;
        let req = Request::post("http://svc/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let r = send_h2(p.outbound(), req).await;
        let status = r.header("grpc-status").map(str::to_owned).or_else(|| {
            r.trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.to_str().unwrap().to_owned())
        });
        assert_eq!(status.as_deref(), Some("0"), "in trailers: {in_trailers}");
        assert_eq!(up.requests(), 2, "in trailers: {in_trailers}");
    }
}

#[test]
fn retry_config_errors() {
    let text = "version: 1\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      backends: [{ service: s }]\n      retry: { attempts: 0, on: [sometimes, { retriable-status: [700] }], backoff: { base: 1s, max: 10ms } }\nservices:\n  s: { endpoints: [\"127.0.0.1:1\"], retry_budget: { ratio: 2 } }\n";
    let err = config_error(text);
    for want in [
        "outbound.routes[0].retry.attempts: must be at least 1",
        "outbound.routes[0].retry.on[0]: unknown retry condition \"sometimes\"",
        "outbound.routes[0].retry.on[1]: invalid status 700",
        "outbound.routes[0].retry.backoff: base must not exceed max",
        "services.s.retry_budget.ratio: must be 0 to 1, got 2",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[tokio::test]
async fn resets_and_5xx_are_retried_only_when_listed() {
    let (reset, server) = resetting().await;
    let good = echo("good").await;
    let eps = [reset, good.addr];
    let p = proxy(&config(
        &eps,
        &format!("{{ attempts: 2, on: [reset], {FAST} }}"),
        "",
    ))
    .await;
    assert_eq!(
        get(p.outbound(), "svc", "/").await.status,
        200,
        "reset, retried on the other endpoint"
    );
    let p = proxy(&config(
        &eps,
        &format!("{{ attempts: 2, on: [gateway-error], {FAST} }}"),
        "",
    ))
    .await;
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-remora-error")),
        (502, Some("upstream-reset"))
    );
    server.abort();

    let up = status_seq(&[500, 200]).await;
    let p = proxy(&config(
        &[up.addr],
        &format!("{{ attempts: 2, {FAST} }}"),
        "",
    ))
    .await;
    assert_eq!(
        get(p.outbound(), "svc", "/").await.status,
        500,
        "500 is not a gateway error"
    );
    assert_eq!(up.requests(), 1);
    let up = status_seq(&[500, 200]).await;
    let p = proxy(&config(
        &[up.addr],
        &format!("{{ attempts: 2, on: [5xx], {FAST} }}"),
        "",
    ))
    .await;
    assert_eq!(
        get(p.outbound(), "svc", "/").await.status,
        200,
        "5xx covers 500"
    );
    assert_eq!(up.requests(), 2);
}
