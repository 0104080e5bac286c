//! Route matching and route actions through the outbound listener.

use crate::support::*;

async fn setup() -> (Proxy, Upstream, Upstream) {
    let a = echo("a").await;
    let b = echo("b").await;
    let p = proxy(&format!(
        r#"
outbound:
  listen: 127.0.0.1:0
  unmatched: reject
  routes:
    - name: exact-path
      match: {{ host: shop, path: {{ exact: /exact }} }}
      backends: [{{ service: b }}]
    - name: regex-path
      match: {{ host: shop, path: {{ regex: "/users/[0-9]+" }} }}
      backends: [{{ service: b }}]
    - name: by-method
      match: {{ host: shop, path: {{ prefix: /m }}, method: [POST, put] }}
      backends: [{{ service: b }}]
    - name: by-header
      match: {{ host: shop, headers: {{ x-canary: {{ exact: "true" }} }} }}
      backends: [{{ service: b }}]
    - name: by-header-regex
      match: {{ host: shop, headers: {{ x-user: {{ regex: "vip-.*" }} }} }}
      backends: [{{ service: b }}]
    - name: by-query
      match: {{ host: shop, query: {{ debug: {{ present: true }} }} }}
      backends: [{{ service: b }}]
    - name: by-query-value
      match: {{ host: shop, query: {{ v: {{ exact: "2" }} }} }}
      backends: [{{ service: b }}]
    - name: wildcard
      match: {{ host: "*.wild.test" }}
      backends: [{{ service: b }}]
    - name: api-prefix
      match: {{ host: shop, path: {{ prefix: /api }} }}
      backends: [{{ service: a }}]
      rewrite: {{ prefix: /v2/api }}
      request_headers: {{ set: {{ x-env: prod }}, add: {{ x-tag: added }}, remove: [x-debug] }}
      response_headers: {{ set: {{ x-served-by: remora }}, remove: [x-method] }}
    - name: shop-default
      match: {{ host: shop }}
      backends: [{{ service: a }}]
services:
  a: {{ endpoints: ["{a}"] }}
  b: {{ endpoints: ["{b}"] }}
"#,
        a = a.addr,
        b = b.addr
    ))
    .await;
    (p, a, b)
}

#[tokio::test]
async fn each_match_kind_selects_its_route() {
    let (p, _a, _b) = setup().await;
    let out = p.outbound();
    // (host, path and query, extra headers, upstream expected)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("shop", "/exact", &[], "b"),
        ("shop", "/exact?x=1", &[], "b"),
        ("shop", "/exact/more", &[], "a"),
        ("shop", "/users/42", &[], "b"),
        ("shop", "/users/42/x", &[], "a"),
        ("shop", "/", &[("x-canary", "true")], "b"),
        ("shop", "/", &[("x-canary", "false")], "a"),
        ("shop", "/", &[("x-user", "vip-7")], "b"),
        ("shop", "/", &[("x-user", "x-vip-7")], "a"),
        ("shop", "/?debug", &[], "b"),
        ("shop", "/?a=1&debug=0", &[], "b"),
        ("shop", "/?v=2", &[], "b"),
        ("shop", "/?v=22", &[], "a"),
        ("a.wild.test", "/", &[], "b"),
        ("a.b.WILD.test:8080", "/", &[], "b"),
        ("SHOP:80", "/", &[], "a"),
    ];
    for (host, path, headers, want) in cases {
        let r = get_with(out, host, path, headers).await;
        assert_eq!(r.status, 200, "{host}{path}");
        assert_eq!(
            r.header("x-upstream"),
            Some(*want),
            "{host}{path} {headers:?}"
        );
    }
    // Method list (case-insensitive in the file).
    let c = h1_client();
    for (method, want) in [("POST", "b"), ("PUT", "b"), ("GET", "a")] {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://{out}/m"))
            .header("host", "shop")
            .body(Default::default())
            .unwrap();
        assert_eq!(
            send(&c, req).await.header("x-upstream"),
            Some(want),
            "{method}"
        );
    }
}

#[tokio::test]
async fn absolute_form_requests_are_routed_by_their_authority() {
    // HTTP_PROXY=http://remora: the request line names the service, the Host header agrees.
    let (p, _a, _b) = setup().await;
    let req = "GET http://shop/api/x?y=1 HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n";
    let out = raw(p.outbound(), req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-upstream: a"), "{out}");
    assert!(out.contains("x-path: /v2/api/x?y=1"), "{out}");
}

#[tokio::test]
async fn unmatched_requests_are_rejected_with_404() {
    let (p, a, b) = setup().await;
    for host in ["wild.test", "other", "shop.evil"] {
        let r = get(p.outbound(), host, "/").await;
        assert_eq!(r.status, 404, "{host}");
        assert_eq!(r.header("x-remora-error"), Some("no-route"));
        assert_eq!(r.header("server"), Some("remora"));
    }
    assert_eq!(a.requests() + b.requests(), 0);
}

#[tokio::test]
async fn rewrite_and_header_edits() {
    let (p, _a, _b) = setup().await;
    let r = get_with(
        p.outbound(),
        "shop",
        "/api/items?page=2",
        &[("x-debug", "1"), ("x-tag", "orig")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-path"), Some("/v2/api/items?page=2"));
    assert!(r.saw("x-env", "prod"));
    assert!(
        r.saw("x-tag", "orig") && r.saw("x-tag", "added"),
        "{}",
        r.body
    );
    assert!(!r.saw_header("x-debug"));
    assert_eq!(r.header("x-served-by"), Some("remora"));
    assert_eq!(r.header("x-method"), None, "response header removed");
    // Segment-aware prefix: /apix is not under /api.
    let r = get(p.outbound(), "shop", "/apix").await;
    assert_eq!(r.header("x-path"), Some("/apix"));
}

#[tokio::test]
async fn redirect_and_direct_response() {
    let p = proxy(
        r#"
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: docs
      match: { host: docs }
      redirect: { status: 308, location: "https://docs.example.com/" }
    - name: gone
      match: { host: legacy }
      direct_response: { status: 503, body: "legacy is retired" }
    - name: teapot
      match: { host: tea }
      direct_response: { status: 418, body: "{}", content_type: application/json }
"#,
    )
    .await;
    let r = get(p.outbound(), "docs", "/x").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://docs.example.com/"));
    assert_eq!(
        r.header("x-remora-error"),
        None,
        "a redirect is not an error"
    );
    let r = get(p.outbound(), "legacy", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "legacy is retired");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("x-remora-error"), None);
    let r = get(p.outbound(), "tea", "/").await;
    assert_eq!(r.status, 418);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let m = p
        .metric(r#"remora_requests_total{code="308",direction="outbound",route="docs",service=""}"#)
        .await;
    assert_eq!(m, Some(1.0));
}

#[tokio::test]
async fn weighted_split_follows_weights() {
    let a = echo("a").await;
    let b = echo("b").await;
    let p = proxy(&format!(
        r#"
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: split
      match: {{ host: shop }}
      backends: [{{ service: a, weight: 80 }}, {{ service: b, weight: 20 }}, {{ service: c, weight: 0 }}]
services:
  a: {{ endpoints: ["{}"] }}
  b: {{ endpoints: ["{}"] }}
  c: {{ endpoints: ["127.0.0.1:1"] }}
"#,
        a.addr, b.addr
    ))
    .await;
    let n = 1000;
    for _ in 0..n {
        assert_eq!(get(p.outbound(), "shop", "/").await.status, 200);
    }
    let share_b = b.requests() as f64 / n as f64;
    assert_eq!(a.requests() + b.requests(), n);
    assert!((0.15..=0.25).contains(&share_b), "b got {share_b}");
    let m = p
        .metric(
            r#"remora_requests_total{code="200",direction="outbound",route="split",service="b"}"#,
        )
        .await;
    assert_eq!(m, Some(b.requests() as f64));
}

#[tokio::test]
async fn passthrough_forwards_to_the_authority_and_refuses_loops() {
    let up = echo("direct").await;
    let p = proxy("outbound: { listen: 127.0.0.1:0, unmatched: passthrough }\n").await;
    let r = get(p.outbound(), &up.addr.to_string(), "/p?q=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("direct"));
    assert_eq!(r.header("x-path"), Some("/p?q=1"));
    // Explicit HTTP proxy use: an absolute-form request line.
    let req = format!(
        "GET http://{}/abs HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        up.addr, up.addr
    );
    let out = raw(p.outbound(), req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-path: /abs"), "{out}");
    // A request addressed to the proxy itself would loop.
    let r = get(p.outbound(), &p.outbound().to_string(), "/").await;
    assert_eq!(r.status, 508);
    assert_eq!(r.header("x-remora-error"), Some("proxy-loop"));
}

#[tokio::test]
async fn connect_requests_are_tunnelled_on_passthrough_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw TCP echo server stands in for an HTTPS origin.
    let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = origin.local_addr().unwrap();
    let echo_task = tokio::spawn(async move {
        loop {
            let (mut s, _) = origin.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let p = proxy("outbound: { listen: 127.0.0.1:0, unmatched: passthrough }\n").await;
    let mut s = tokio::net::TcpStream::connect(p.outbound()).await.unwrap();
    let req = format!("CONNECT {origin_addr} HTTP/1.1\r\nhost: {origin_addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    for msg in [&b"\x16\x03\x01 tls-ish bytes"[..], b"more"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(DEADLINE, s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
    // With unmatched: reject there is no tunnel.
    let strict = proxy("outbound: { listen: 127.0.0.1:0, unmatched: reject }\n").await;
    let out = raw(strict.outbound(), req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(out.contains("x-remora-error: no-route"), "{out}");
    echo_task.abort();
}
