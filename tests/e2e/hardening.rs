//! Hostile callers, through the real listeners: what they send is refused with its own
//! status, counts against nobody upstream, and never reaches an app in a shape the app could
//! misread.

use crate::support::*;

/// A route to `up` whose endpoint is ejected after 3 failures in a row.
fn ejecting(up: &Upstream) -> String {
    svc_config(
        &[up.addr],
        &[],
        &[
            "protocol: http1",
            "outlier_detection: { consecutive_failures: 3, base_ejection: 1h, max_ejected_percent: 100 }",
        ],
    )
}

#[tokio::test]
async fn a_malformed_request_body_is_the_callers_fault_and_ejects_nothing() {
    let up = body_echo(None).await;
    let p = proxy(&ejecting(&up)).await;
    for bad in ["ZZ", "-5", "fffffffffffffffffffff"] {
        for _ in 0..4 {
            let req = format!(
                "POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n{bad}\r\nabc\r\n0\r\n\r\n"
            );
            let out = raw(p.outbound(), req.as_bytes()).await;
            assert!(
                !out.contains(" 502 ") && !out.contains("upstream-reset"),
                "{bad}: {out}"
            );
        }
    }
    let resets = "remora_upstream_attempts_total{result=\"reset\",service=\"s\"}";
    // No attempt failed: the series is absent (created at a first failure) or 0.
    assert_eq!(
        p.metric(resets).await.unwrap_or(0.0),
        0.0,
        "{}",
        p.metrics().await
    );
    let ejected = format!(
        "remora_endpoint_ejected{{endpoint=\"{}\",service=\"s\"}}",
        up.addr
    );
    assert_eq!(p.metric(&ejected).await, Some(0.0));
    // Everyone else is still served.
    assert_eq!(get(p.outbound(), "svc", "/").await.status, 200);
}

#[tokio::test]
async fn two_host_headers_are_refused_and_an_absolute_target_wins_over_host() {
    let up = echo("u").await;
    let p = proxy(&svc_config(&[up.addr], &[], &["protocol: http1"])).await;
    let out = raw(
        p.outbound(),
        b"GET /x HTTP/1.1\r\nHost: svc\r\nHost: evil\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(up.requests(), 0);

    let out = raw(
        p.outbound(),
        b"GET http://svc/x HTTP/1.1\r\nHost: evil\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("host: svc\n"),
        "routed by svc, sent as svc: {out}"
    );
    assert!(!out.contains("evil"), "{out}");
}

#[tokio::test]
async fn paths_are_normalized_before_authorization_and_forwarded_normalized() {
    let app = echo("app").await;
    let p = proxy(&format!(
        "inbound:\n  listen: 127.0.0.1:0\n  app: \"{}\"\n  authorize:\n    - {{ unauthenticated: true, paths: [/public/*] }}\n",
        app.addr
    ))
    .await;
    let line =
        |path: &str| format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n");
    for path in [
        "/public/../secret",
        "/public/%2e%2e/secret",
        "/public/%2E%2E/secret",
        "/public/./../secret",
        "/public/..\\secret",
    ] {
        let out = raw(p.inbound(), line(path).as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 403"), "{path}: {out}");
    }
    let out = raw(p.inbound(), line("/public/..%2fsecret").as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("malformed-request"), "{out}");
    assert_eq!(app.requests(), 0, "nothing reached the app");

    let out = raw(p.inbound(), line("/public/a/../%62?q=1").as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("x-path: /public/b"),
        "forwarded normalized: {out}"
    );
}

/// An upstream that answers every request with `response`, byte for byte.
async fn raw_upstream(response: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(response).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstreams_framing_tricks_and_bogus_statuses_stop_at_the_proxy() {
    let both = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let p = proxy(&svc_config(&[both], &[], &["protocol: http1"])).await;
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello");
    assert_ne!(r.header("content-length"), Some("100"));

    let bogus = raw_upstream(b"HTTP/1.1 999 Weird\r\nContent-Length: 0\r\n\r\n").await;
    let p = proxy(&svc_config(&[bogus], &[], &["protocol: http1"])).await;
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.header("x-remora-error"), Some("upstream-reset"));
}

#[tokio::test]
async fn the_header_count_limit_is_a_limits_key() {
    let up = echo("u").await;
    let p = proxy(&format!(
        "limits: {{ max_headers: 20 }}\n{}",
        svc_config(&[up.addr], &[], &[])
    ))
    .await;
    let request = |n: usize| {
        let mut r = String::from("GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n");
        for i in 0..n {
            r.push_str(&format!("x-h{i}: v\r\n"));
        }
        r.push_str("\r\n");
        r
    };
    assert!(raw(p.outbound(), request(10).as_bytes())
        .await
        .starts_with("HTTP/1.1 200"));
    let out = raw(p.outbound(), request(30).as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    // The same limit holds for an HTTP/2 caller (hyper counts fields for HTTP/1.1 only).
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(p.outbound()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<
        _,
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(TokioExecutor::new(), TokioIo::new(tcp))
    .await
    .unwrap();
    tokio::spawn(conn);
    let h2 = |n: usize| {
        let mut b = http::Request::get("http://svc/");
        for i in 0..n {
            b = b.header(format!("x-h{i}"), "v");
        }
        b.body(http_body_util::Empty::new()).unwrap()
    };
    let many = sender.send_request(h2(30)).await.unwrap();
    assert_eq!(many.status(), 431);
    assert_eq!(
        many.headers().get("x-remora-error").unwrap(),
        "too-many-headers"
    );
    let few = sender.send_request(h2(10)).await.unwrap();
    assert_eq!(few.status(), 200, "the connection still serves");
    assert_eq!(
        up.requests(),
        2,
        "the refused requests never reached the upstream"
    );
}

#[tokio::test]
async fn http2_rapid_reset_closes_the_connection_and_spares_everyone_else() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let up = slow("slow", std::time::Duration::from_secs(2)).await;
    let p = proxy(&svc_config(&[up.addr], &[], &[])).await;
    let tcp = tokio::net::TcpStream::connect(p.outbound()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<
        _,
        _,
        http_body_util::Full<bytes::Bytes>,
    >(TokioExecutor::new(), TokioIo::new(tcp))
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    // HEADERS then RST_STREAM a moment later, over and over.
    let mut sent = 0;
    for _ in 0..300 {
        if sender.ready().await.is_err() {
            break;
        }
        let req = http::Request::get("http://svc/")
            .body(Default::default())
            .unwrap();
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(2),
            sender.send_request(req),
        )
        .await;
        sent += 1;
    }
    assert!(
        sent < 300,
        "the connection was closed before all {sent} resets"
    );
    tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("the abusive connection ends")
        .unwrap()
        .ok();
    // Others are served as ever.
    let ok = send_h2(
        p.outbound(),
        http::Request::get("http://svc/")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn headers_with_underscores_follow_the_configured_action() {
    let app = echo("app").await;
    let req = b"GET / HTTP/1.1\r\nhost: app\r\nx_custom: 1\r\nx_remora_client_id: spiffe://forged\r\nconnection: close\r\n\r\n";
    for (action, want_status, custom_seen) in [
        ("allow", "HTTP/1.1 200", true),
        ("drop", "HTTP/1.1 200", false),
        ("reject", "HTTP/1.1 400", false),
    ] {
        let p = proxy(&format!(
            "limits: {{ headers_with_underscores: {action} }}\ninbound:\n  listen: 127.0.0.1:0\n  app: \"{}\"\n",
            app.addr
        ))
        .await;
        let out = raw(p.inbound(), req).await;
        assert!(out.starts_with(want_status), "{action}: {out}");
        assert_eq!(out.contains("x_custom"), custom_seen, "{action}: {out}");
        assert!(!out.contains("forged"), "{action}: {out}");
    }
}
