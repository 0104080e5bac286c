//! The upstream side: load balancer distributions, connection pooling, DNS discovery, and
//! each failure's status and `x-remora-error`.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use tokio::net::TcpListener;

use crate::support::*;

fn service_route(endpoints: &[SocketAddr], extra: &str) -> String {
    svc_config(endpoints, &["timeout: 300ms"], &[extra])
}

async fn three() -> [Upstream; 3] {
    [echo("e0").await, echo("e1").await, echo("e2").await]
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let ups = three().await;
    let p = proxy(&service_route(
        &ups.each_ref().map(|u| u.addr),
        "    load_balancer: round_robin",
    ))
    .await;
    for _ in 0..90 {
        assert_eq!(get(p.outbound(), "svc", "/").await.status, 200);
    }
    for u in &ups {
        assert_eq!(u.requests(), 30);
    }
}

#[tokio::test]
async fn random_reaches_every_endpoint() {
    let ups = three().await;
    let p = proxy(&service_route(
        &ups.each_ref().map(|u| u.addr),
        "    load_balancer: random",
    ))
    .await;
    for _ in 0..300 {
        get(p.outbound(), "svc", "/").await;
    }
    for u in &ups {
        assert!((50..=150).contains(&u.requests()), "{}", u.requests());
    }
}

#[tokio::test]
async fn least_request_avoids_the_busy_endpoint() {
    let busy = slow("busy", Duration::from_secs(2)).await;
    let fast = echo("fast").await;
    let p = proxy(&svc_config(
        &[busy.addr, fast.addr],
        &["timeout: 5s"],
        &["load_balancer: least_request"],
    ))
    .await;
    let out = p.outbound();
    let mut pending = Vec::new();
    for _ in 0..40 {
        let before = busy.requests();
        let task = tokio::spawn(async move { get(out, "svc", "/").await });
        // Wait until the answer arrives or the busy endpoint has the request, so each pick
        // sees the fast endpoint idle however slow the machine is.
        wait_until(|| async { task.is_finished() || busy.requests() > before }).await;
        if !task.is_finished() {
            pending.push(task);
        }
    }
    // With power-of-two choices over two endpoints, the busy one only wins a tie.
    assert!(
        busy.requests() <= 2,
        "busy endpoint got {}",
        busy.requests()
    );
    assert!(fast.requests() >= 38);
    for t in pending {
        t.abort();
    }
}

#[tokio::test]
async fn ring_hash_is_sticky_per_key() {
    let ups = three().await;
    let p = proxy(&service_route(
        &ups.each_ref().map(|u| u.addr),
        "    load_balancer: { ring_hash: { header: x-user } }",
    ))
    .await;
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for user in 0..40 {
            let key = format!("user-{user}");
            let r = get_with(p.outbound(), "svc", "/", &[("x-user", &key)]).await;
            let got = r.header("x-upstream").unwrap().to_owned();
            if round == 0 {
                owner.insert(key, got);
            } else {
                assert_eq!(owner[&key], got, "{key} moved");
            }
        }
    }
    for u in &ups {
        assert!(u.requests() > 0, "every endpoint owns some keys");
    }
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    let up = echo("u").await;
    let p = proxy(&service_route(&[up.addr], "")).await;
    for _ in 0..20 {
        // A new client, so a new downstream connection each time.
        assert_eq!(get(p.outbound(), "svc", "/").await.status, 200);
    }
    assert_eq!(up.requests(), 20);
    assert_eq!(
        up.connections(),
        1,
        "one pooled connection served every request"
    );
}

#[tokio::test]
async fn upstream_closing_idle_connections_loses_no_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that answers one request per connection and closes without saying so.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let p = proxy(&service_route(&[addr], "    protocol: http1")).await;
    for i in 0..20 {
        let r = get(p.outbound(), "svc", "/").await;
        assert_eq!(
            r.status,
            200,
            "request {i}: {:?}",
            r.header("x-remora-error")
        );
    }
    server.abort();
}

#[tokio::test]
async fn route_timeout_gives_504() {
    let up = slow("slow", Duration::from_secs(3)).await;
    let p = proxy(&service_route(&[up.addr], "")).await;
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-remora-error"), Some("timeout"));
    assert_eq!(r.header("server"), Some("remora"));
    let m = p
        .metric(r#"remora_upstream_attempts_total{result="timeout",service="s"}"#)
        .await;
    assert_eq!(m, Some(1.0));
}

#[tokio::test]
async fn refused_connection_gives_502() {
    let dead = dead_addr().await;
    let p = proxy(&service_route(&[dead], "")).await;
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-remora-error"), Some("upstream-connect-failure"));
    assert!(r.body.contains(&dead.to_string()), "{}", r.body);
    let m = p
        .metric(r#"remora_upstream_attempts_total{result="connect-failure",service="s"}"#)
        .await;
    assert_eq!(m, Some(1.0));
    let m = p
        .metric(r#"remora_requests_total{code="502",direction="outbound",route="r",service="s"}"#)
        .await;
    assert_eq!(m, Some(1.0));
}

#[tokio::test]
async fn upstream_reset_gives_502() {
    let (addr, server) = resetting().await;
    let p = proxy(&service_route(&[addr], "    protocol: http1")).await;
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-remora-error"), Some("upstream-reset"));
    server.abort();
}

#[tokio::test]
async fn service_without_endpoints_gives_503() {
    let p = proxy(
        r#"
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: r
      match: { host: svc }
      backends: [{ service: s }]
services:
  s: { dns: "does-not-exist.invalid:80", dns_refresh: 1s }
"#,
    )
    .await;
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-remora-error"), Some("no-healthy-endpoints"));
}

#[tokio::test]
async fn dns_discovery_finds_endpoints() {
    // `localhost` may resolve to 127.0.0.1 and ::1: listen on both with one port.
    let (v4, port, _up6) = loop {
        let v4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = v4.local_addr().unwrap().port();
        match TcpListener::bind(("::1", port)).await {
            Ok(v6) => {
                let up6 = serve_upstream(
                    v6,
                    std::sync::Arc::new(|req| Box::pin(async move { echo_response("dns", &req) })),
                );
                break (v4, port, Some(up6));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(_) => break (v4, port, None), // no IPv6 here: localhost is IPv4 only
        }
    };
    let _up = serve_upstream(
        v4,
        std::sync::Arc::new(|req| Box::pin(async move { echo_response("dns", &req) })),
    );
    let p = proxy(&format!(
        r#"
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: r
      match: {{ host: svc }}
      backends: [{{ service: s }}]
services:
  s: {{ dns: "localhost:{port}", dns_refresh: 200ms }}
"#
    ))
    .await;
    wait_until(|| async { get(p.outbound(), "svc", "/").await.status == 200 }).await;
    assert_eq!(
        get(p.outbound(), "svc", "/").await.header("x-upstream"),
        Some("dns")
    );
}

#[tokio::test]
async fn empty_and_sized_bodies_return_their_connection_to_the_pool() {
    let up = upstream_fn(|req| async move {
        let status = if req.uri().path() == "/empty" {
            204
        } else {
            200
        };
        let body = if status == 204 {
            TestBody::empty()
        } else {
            TestBody::text("sized")
        };
        http::Response::builder().status(status).body(body).unwrap()
    })
    .await;
    let p = proxy(&service_route(&[up.addr], "    protocol: http1")).await;
    for i in 0..30 {
        let path = if i % 2 == 0 { "/empty" } else { "/sized" };
        let r = get(p.outbound(), "svc", path).await;
        assert!(r.status == 204 || r.body == "sized");
    }
    assert_eq!(
        up.connections(),
        1,
        "every response handed its connection back"
    );
}

#[tokio::test]
async fn http2_upstream_shares_one_connection() {
    let up = echo("h2").await;
    let p = proxy(&service_route(&[up.addr], "    protocol: http2")).await;
    let out = p.outbound();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                get(out, "svc", "/")
                    .await
                    .header("x-version")
                    .map(str::to_owned)
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().as_deref(), Some("HTTP/2.0"));
    }
    assert_eq!(up.requests(), 20);
    assert_eq!(
        up.connections(),
        1,
        "concurrent requests multiplexed on one connection"
    );
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let up = echo("u").await;
    let p = proxy(&service_route(&[up.addr], "    idle_timeout: 200ms")).await;
    assert_eq!(get(p.outbound(), "svc", "/").await.status, 200);
    assert_eq!(up.connections(), 1);
    // The proxy closes the idle pooled connection; the next request opens a new one.
    wait_until(|| async { up.closed() == 1 }).await;
    assert_eq!(get(p.outbound(), "svc", "/").await.status, 200);
    assert_eq!(up.connections(), 2);
}

/// A listener whose accept queue is full, so new connections to it hang in SYN-SENT.
fn unresponsive_listener() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => return (l, fillers, addr), // the queue is full
        }
    }
    panic!("accept queue never filled");
}

#[tokio::test]
async fn connect_timeout_gives_502() {
    let (_listener, _fillers, addr) = unresponsive_listener();
    let p = proxy(&service_route(&[addr], "    connect_timeout: 200ms")).await;
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-remora-error"), Some("upstream-connect-failure"));
    assert!(r.body.contains("timed out after 200ms"), "{}", r.body);
}
