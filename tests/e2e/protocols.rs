//! Faithful proxying: HTTP/1.1 and HTTP/2, gRPC with trailers, WebSocket upgrades, large
//! streamed bodies, hop-by-hop hygiene, smuggling shapes and header limits.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::support::*;

fn route_to(addr: std::net::SocketAddr, protocol: &str) -> String {
    svc_config(&[addr], &[], &[&format!("protocol: {protocol}")])
}

#[tokio::test]
async fn http1_and_http2_clients_with_matching_upstream_protocol() {
    let up = echo("u").await;
    let p = proxy(&route_to(up.addr, "auto")).await;
    let h1 = get(p.outbound(), "svc", "/x").await;
    assert_eq!(h1.status, 200);
    assert_eq!(h1.header("x-version"), Some("HTTP/1.1"));
    assert!(h1.saw("host", "svc"), "{}", h1.body);

    let req = Request::get("http://svc/y").body(Full::default()).unwrap();
    let h2 = send_h2(p.outbound(), req).await;
    assert_eq!(h2.status, 200);
    assert_eq!(
        h2.header("x-version"),
        Some("HTTP/2.0"),
        "auto keeps the caller's protocol"
    );
    assert_eq!(h2.header("x-path"), Some("/y"));
}

#[tokio::test]
async fn protocol_setting_converts_between_versions() {
    let up = echo("u").await;
    let p = proxy(&route_to(up.addr, "http2")).await;
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(r.header("x-version"), Some("HTTP/2.0"));
    let p1 = proxy(&route_to(up.addr, "http1")).await;
    let req = Request::get("http://svc/").body(Full::default()).unwrap();
    let r = send_h2(p1.outbound(), req).await;
    assert_eq!(r.header("x-version"), Some("HTTP/1.1"));
    assert!(
        r.saw("host", "svc"),
        "h2 :authority becomes Host: {}",
        r.body
    );
}

fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = vec![0u8];
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    Bytes::from(b)
}

#[tokio::test]
async fn grpc_unary_call_keeps_trailers() {
    let up = upstream_fn(|req| async move {
        assert_eq!(
            req.headers().get("te").map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("7"));
        trailers.insert(
            "grpc-message",
            HeaderValue::from_static("permission denied"),
        );
        http::Response::builder()
            .header("content-type", "application/grpc")
            .body(TestBody::with_trailers(vec![body], trailers))
            .unwrap()
    })
    .await;
    let p = proxy(&route_to(up.addr, "http2")).await;
    let req = Request::post("http://svc/pkg.Svc/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_frame(b"hello")))
        .unwrap();
    let r = send_h2(p.outbound(), req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_bytes(), &grpc_frame(b"hello")[..]);
    let t = r.trailers.expect("trailers arrive");
    assert_eq!(t["grpc-status"], "7");
    assert_eq!(t["grpc-message"], "permission denied");
}

/// gRPC answers are counted by their grpc-status, whether it comes in trailers, in the
/// headers of a trailers-only answer, or not at all; to HTTP/2 and HTTP/1.1 callers alike.
#[tokio::test]
async fn grpc_status_is_counted() {
    let up = upstream_fn(|req| async move {
        let b = http::Response::builder().header("content-type", "application/grpc");
        match req.uri().path() {
            "/pkg.Svc/Denied" => {
                let mut t = HeaderMap::new();
                t.insert("grpc-status", HeaderValue::from_static("7"));
                b.body(TestBody::with_trailers(vec![grpc_frame(b"x")], t))
                    .unwrap()
            }
            "/pkg.Svc/Down" => b
                .header("grpc-status", "14")
                .body(TestBody::empty())
                .unwrap(),
            _ => b.body(TestBody::text(String::new())).unwrap(),
        }
    })
    .await;
    let p = proxy(&route_to(up.addr, "http2")).await;
    let call = |path: &str| {
        Request::post(format!("http://svc{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(grpc_frame(b"hello")))
            .unwrap()
    };
    for path in ["/pkg.Svc/Denied", "/pkg.Svc/Down", "/pkg.Svc/Silent"] {
        assert_eq!(send_h2(p.outbound(), call(path)).await.status, 200);
    }
    // An HTTP/1.1 caller's trailers arrive through the read-ahead path.
    let mut req = call("/pkg.Svc/Denied");
    *req.uri_mut() = format!("http://{}/pkg.Svc/Denied", p.outbound())
        .parse()
        .unwrap();
    req.headers_mut()
        .insert("host", HeaderValue::from_static("svc"));
    assert_eq!(send(&h1_client(), req).await.status, 200);

    let count = |code: &str| {
        format!(
            r#"remora_grpc_responses_total{{direction="outbound",grpc_status="{code}",route="r",service="s"}}"#
        )
    };
    wait_until(|| async { p.metric(&count("7")).await == Some(2.0) }).await;
    assert_eq!(p.metric(&count("14")).await, Some(1.0));
    assert_eq!(p.metric(&count("missing")).await, Some(1.0));
    // A plain HTTP request is not a gRPC answer.
    get(p.outbound(), "svc", "/").await;
    let text = p.metrics().await;
    let grpc_lines = text
        .lines()
        .filter(|l| l.starts_with("remora_grpc_responses_total{"))
        .count();
    assert_eq!(grpc_lines, 3, "{text}");
}

#[tokio::test]
async fn grpc_bidi_stream_is_not_buffered() {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let up = body_echo(Some(trailers)).await;
    let p = proxy(&route_to(up.addr, "http2")).await;

    let stream = tokio::net::TcpStream::connect(p.outbound()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (tx, body) = TestBody::channel();
    let req = Request::post("http://svc/pkg.Svc/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    tx.send(http_body::Frame::data(grpc_frame(b"one")))
        .await
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // Each message comes back before the next one is sent: both directions stream.
    for msg in [&b"one"[..], b"two", b"three"] {
        if msg != b"one" {
            tx.send(http_body::Frame::data(grpc_frame(msg)))
                .await
                .unwrap();
        }
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("echo arrives while the call is open");
        let data = frame.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&data[..], &grpc_frame(msg)[..]);
    }
    drop(tx);
    let mut trailers = None;
    while let Some(f) = tokio::time::timeout(DEADLINE, body.frame()).await.unwrap() {
        if let Ok(t) = f.unwrap().into_trailers() {
            trailers = Some(t);
        }
    }
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    let up = ws_echo().await;
    let p = proxy(&route_to(up.addr, "auto")).await;
    let (headers, mut io) = open_upgrade(p.outbound(), "svc").await;
    assert_eq!(headers["upgrade"], "websocket");
    assert_eq!(
        headers["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    for msg in [&b"ping"[..], b"second message"] {
        echo_through(&mut io, msg).await;
    }
    // And through the inbound listener to the app.
    let p = proxy(&format!(
        "inbound:\n  listen: 127.0.0.1:0\n  app: \"{}\"\n",
        up.addr
    ))
    .await;
    let (headers, mut io) = open_upgrade(p.inbound(), "app").await;
    assert_eq!(headers["upgrade"], "websocket");
    echo_through(&mut io, b"inbound").await;
}

/// FNV-1a, enough to compare 50 MB streams.
fn fnv(h: &mut u64, data: &[u8]) {
    for b in data {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

#[tokio::test]
async fn fifty_megabytes_stream_both_ways() {
    let up = body_echo(None).await;
    let p = proxy(&route_to(up.addr, "auto")).await;
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 800; // 50 MiB + change
    let (tx, body) = TestBody::channel();
    let feeder = tokio::spawn(async move {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for i in 0..CHUNKS {
            let chunk: Vec<u8> = (0..CHUNK).map(|j| ((i * 31 + j * 7) % 251) as u8).collect();
            fnv(&mut h, &chunk);
            if tx
                .send(http_body::Frame::data(Bytes::from(chunk)))
                .await
                .is_err()
            {
                break;
            }
        }
        h
    });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<TestBody>();
    let req = Request::post(format!("http://{}/upload", p.outbound()))
        .header("host", "svc")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut h, mut n) = (0xcbf2_9ce4_8422_2325u64, 0usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Some(frame) = tokio::time::timeout_at(deadline, body.frame())
        .await
        .expect("stream finishes")
    {
        if let Ok(d) = frame.unwrap().into_data() {
            fnv(&mut h, &d);
            n += d.len();
        }
    }
    assert_eq!(n, CHUNK * CHUNKS);
    assert_eq!(h, feeder.await.unwrap(), "checksum of what came back");
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded_and_xff_is_appended() {
    let up = echo("u").await;
    let p = proxy(&route_to(up.addr, "http1")).await;
    let r = get_with(
        p.outbound(),
        "svc",
        "/",
        &[
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "gzip"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-keep", "yes"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    for h in ["x-secret", "keep-alive", "proxy-authorization", "te"] {
        assert!(!r.saw_header(h), "{h} forwarded: {}", r.body);
    }
    assert!(r.saw("x-keep", "yes"));
    assert!(
        r.saw("x-forwarded-for", "203.0.113.9, 127.0.0.1"),
        "{}",
        r.body
    );
    assert!(r.saw("x-forwarded-proto", "http"));
}

#[tokio::test]
async fn smuggling_shapes_are_refused() {
    let up = echo("u").await;
    let p = proxy(&route_to(up.addr, "http1")).await;
    let cases = [
        "POST / HTTP/1.1\r\nhost: svc\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde",
        "POST / HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.0\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for case in cases {
        let out = raw(p.outbound(), case.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{case:?} → {out}");
    }
    assert_eq!(up.requests(), 0, "nothing reached the upstream");
    // The proxy still serves everyone else.
    assert_eq!(get(p.outbound(), "svc", "/").await.status, 200);
}

/// Content-Length together with Transfer-Encoding: hyper's parser follows RFC 9112 §6.1
/// (the length is discarded, the body is read as chunked, the connection closes after the
/// response), so the upstream never sees conflicting framing and a request smuggled behind
/// the chunked body is never run.
#[tokio::test]
async fn content_length_with_chunked_cannot_smuggle_a_request() {
    let up = echo("u").await;
    let p = proxy(&route_to(up.addr, "http1")).await;
    let attack =
        "POST / HTTP/1.1\r\nhost: svc\r\ncontent-length: 40\r\ntransfer-encoding: chunked\r\n\r\n\
                  0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: svc\r\n\r\n";
    let out = raw(p.outbound(), attack.as_bytes()).await;
    assert!(!out.contains("x-path: /smuggled"), "{out}");
    assert!(
        !out.contains("content-length: 40"),
        "upstream saw only one framing: {out}"
    );
    assert_eq!(
        out.matches("HTTP/1.1 ").count(),
        1,
        "one response, then close: {out}"
    );
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn unusable_authority_gets_400_with_reason() {
    let p = proxy("outbound: { listen: 127.0.0.1:0, unmatched: passthrough }\n").await;
    for host in ["bad host", "h:notaport"] {
        let req = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let out = raw(p.outbound(), req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{host}: {out}");
        assert!(
            out.contains("x-remora-error: malformed-request"),
            "{host}: {out}"
        );
    }
    let m = p
        .metric(r#"remora_requests_total{code="400",direction="outbound",route="",service="passthrough"}"#)
        .await;
    assert_eq!(m, Some(2.0));
}

#[tokio::test]
async fn oversized_header_block_gets_431() {
    let up = echo("u").await;
    let p = proxy(&format!(
        "limits: {{ max_header_bytes: 16384 }}\n{}",
        route_to(up.addr, "http1")
    ))
    .await;
    let big = "a".repeat(20_000);
    let req = format!("GET / HTTP/1.1\r\nhost: svc\r\nx-big: {big}\r\n\r\n");
    let out = raw(p.outbound(), req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(up.requests(), 0);
    let ok = get_with(p.outbound(), "svc", "/", &[("x-small", &"b".repeat(8000))]).await;
    assert_eq!(ok.status, 200);
    assert!(
        p.metric(r#"remora_downstream_connection_errors_total{direction="outbound"}"#)
            .await
            >= Some(1.0),
        "protocol errors are counted"
    );
}

#[tokio::test]
async fn inbound_forwards_to_the_app_and_strips_forged_identity() {
    let app = echo("app").await;
    let p = proxy(&format!(
        "inbound: {{ listen: 127.0.0.1:0, app: \"{}\", timeout: 2s }}\n",
        app.addr
    ))
    .await;
    let r = get_with(
        p.inbound(),
        "orders",
        "/orders/1",
        &[("x-remora-client-id", "spiffe://evil/sa/admin")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("app"));
    assert_eq!(r.header("x-path"), Some("/orders/1"));
    assert!(!r.saw_header("x-remora-client-id"), "{}", r.body);
    let req = Request::get("http://orders/h2")
        .body(Full::default())
        .unwrap();
    assert_eq!(send_h2(p.inbound(), req).await.status, 200);
    let m = p
        .metric(r#"remora_requests_total{code="200",direction="inbound",route="",service="app"}"#)
        .await;
    assert_eq!(m, Some(2.0));
}

#[tokio::test]
async fn slow_header_senders_are_cut_off() {
    let up = echo("u").await;
    let p = proxy(&format!(
        "limits: {{ header_read_timeout: 300ms }}\n{}",
        route_to(up.addr, "http1")
    ))
    .await;
    let started = tokio::time::Instant::now();
    // Half a header block, then silence: read_to_end returns once the proxy hangs up.
    let out = raw(
        p.outbound(),
        b"GET / HTTP/1.1\r\nhost: svc\r\nx-slow: 1\r\n",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cut off, not left to the client: {out}"
    );
    assert!(!out.contains("200"), "{out}");
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn idle_downstream_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = echo("u").await;
    let p = proxy(&format!(
        "limits: {{ idle_timeout: 300ms, header_read_timeout: 30s }}\n{}",
        route_to(up.addr, "http1")
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(p.outbound()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Keep-alive, then nothing: the proxy closes the connection after the idle timeout.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed by the idle timeout")
        .unwrap();
    wait_until(|| async {
        p.metric(r#"remora_connections_open{direction="outbound"}"#)
            .await
            == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn connection_limit_queues_extra_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = echo("u").await;
    let p = proxy(&format!(
        "limits: {{ max_connections: 1 }}\n{}",
        route_to(up.addr, "http1")
    ))
    .await;
    let req = b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n";
    let mut first = tokio::net::TcpStream::connect(p.outbound()).await.unwrap();
    first.write_all(req).await.unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(first.read(&mut buf).await.unwrap() > 0);
    // The second client waits while the first holds the only slot...
    let mut second = tokio::net::TcpStream::connect(p.outbound()).await.unwrap();
    second.write_all(req).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(waited.is_err(), "served beyond the limit");
    // ...and is served once the first leaves.
    drop(first);
    let n = tokio::time::timeout(DEADLINE, second.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn an_http2_caller_of_an_http1_only_upstream_falls_back_once_and_remembers() {
    let up = echo_speaking("h1", Speaks::Http1).await;
    let p = proxy(&route_to(up.addr, "auto")).await;
    for path in ["/a", "/b", "/c"] {
        let req = Request::get(format!("http://svc{path}"))
            .body(Full::default())
            .unwrap();
        let r = send_h2(p.outbound(), req).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(r.header("x-version"), Some("HTTP/1.1"));
        assert!(r.saw("host", "svc"), "{}", r.body);
    }
    // One connection found out (its preface got HTTP/1's error), one carried all three.
    assert_eq!(up.requests(), 3);
    assert_eq!(up.connections(), 2);
    // An upstream that speaks HTTP/2 keeps it.
    let both = echo_speaking("both", Speaks::Both).await;
    let p2 = proxy(&route_to(both.addr, "auto")).await;
    let req = Request::get("http://svc/").body(Full::default()).unwrap();
    let r = send_h2(p2.outbound(), req).await;
    assert_eq!(r.header("x-version"), Some("HTTP/2.0"));
}

#[tokio::test]
async fn configured_http2_to_an_http1_only_upstream_is_a_clear_502() {
    let up = echo_speaking("h1", Speaks::Http1).await;
    let p = proxy(&route_to(up.addr, "http2")).await;
    let r = get(p.outbound(), "svc", "/").await;
    assert_eq!(r.status, 502, "{}", r.body);
}

#[tokio::test]
async fn an_http1_grpc_caller_of_an_http2_only_server_gets_its_trailers() {
    let trailers = {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("fine"));
        t
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let t = trailers.clone();
    let up = serve_speaking(
        listener,
        std::sync::Arc::new(move |req: http::Request<hyper::body::Incoming>| {
            let t = t.clone();
            Box::pin(async move {
                assert_eq!(req.version(), http::Version::HTTP_2);
                let body = TestBody::with_trailers(vec![grpc_frame(b"pong")], t);
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(body)
                    .unwrap()
            })
        }),
        Speaks::Http2,
    );
    let p = proxy(&route_to(up.addr, "auto")).await;
    // Hand-made gRPC over HTTP/1.1, as curl or a test script would send it.
    let mut s = tokio::net::TcpStream::connect(p.outbound()).await.unwrap();
    let frame = grpc_frame(b"ping");
    let head = format!(
        "POST /pkg.Svc/Call HTTP/1.1\r\nhost: svc\r\ncontent-type: application/grpc\r\nte: trailers\r\ncontent-length: {}\r\n\r\n",
        frame.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&frame).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    // Read until the chunked body's end (its trailers then a blank line).
    while !String::from_utf8_lossy(&out).contains("grpc-message: fine\r\n\r\n") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the response ends before the deadline: {:?}",
                    String::from_utf8_lossy(&out)
                )
            })
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("grpc-status: 0\r\n"), "{text}");
}

#[tokio::test]
async fn every_caller_protocol_reaches_every_upstream_protocol_with_the_default_config() {
    for speaks in [Speaks::Http1, Speaks::Http2, Speaks::Both] {
        let up = echo_speaking("u", speaks).await;
        // The default: no `protocol` anywhere.
        let p = proxy(&format!(
            "{}inbound:\n  listen: 127.0.0.1:0\n  app: \"{}\"\n",
            svc_config(&[up.addr], &[], &[]),
            up.addr
        ))
        .await;
        for listener in [p.outbound(), p.inbound()] {
            for (caller, path) in [
                ("h1", "/get"),
                ("h2c", "/get"),
                ("h1", "/post"),
                ("h2c", "/post"),
            ] {
                let builder = Request::builder().uri(format!("http://svc{path}"));
                let req = if path == "/post" {
                    builder.method("POST").body(Full::from("payload")).unwrap()
                } else {
                    builder.body(Full::default()).unwrap()
                };
                let r = match caller {
                    "h1" => {
                        send(&h1_client(), {
                            let (mut parts, body) = req.into_parts();
                            parts.uri = format!("http://{listener}{path}").parse().unwrap();
                            parts
                                .headers
                                .insert("host", HeaderValue::from_static("svc"));
                            Request::from_parts(parts, body)
                        })
                        .await
                    }
                    _ => send_h2(listener, req).await,
                };
                assert_eq!(
                    r.status, 200,
                    "{caller} caller, {speaks:?} upstream, {path} via {listener}: {}",
                    r.body
                );
                let want = match speaks {
                    Speaks::Http1 => "HTTP/1.1",
                    Speaks::Http2 => "HTTP/2.0",
                    Speaks::Both if caller == "h1" => "HTTP/1.1",
                    Speaks::Both => "HTTP/2.0",
                };
                assert_eq!(
                    r.header("x-version"),
                    Some(want),
                    "{caller} → {speaks:?} {path}"
                );
            }
        }
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_parked_and_serves_on_even_an_upgrade() {
    let (up, ws) = (echo("u").await, ws_echo().await);
    let p = proxy(&format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: svc }}, backends: [{{ service: s }}] }}\n    - {{ name: w, match: {{ host: ws }}, backends: [{{ service: w }}] }}\nservices:\n  s: {{ endpoints: [\"{}\"] }}\n  w: {{ endpoints: [\"{}\"] }}\n",
        up.addr, ws.addr
    ))
    .await;
    let parked = "remora_connections_parked{direction=\"outbound\"}";
    let stream = tokio::net::TcpStream::connect(p.outbound()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let get = |host: &str| {
        Request::get("/x")
            .header("host", host)
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    for round in 0..2 {
        let resp = sender.send_request(get("svc")).await.unwrap();
        assert_eq!(resp.status(), 200, "round {round}");
        assert!(
            resp.headers().get("connection").is_none(),
            "kept alive: {:?}",
            resp.headers()
        );
        resp.into_body().collect().await.unwrap();
        // Quiet with nothing in flight: parked, and counted so.
        wait_until(|| async { p.metric(parked).await == Some(1.0) }).await;
    }
    // The same connection, parked, now upgrades: the socket goes to the tunnel.
    let resp = sender.send_request(upgrade_request("ws")).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(p.metric(parked).await, Some(0.0));
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    for msg in [&b"after parking"[..], b"and again"] {
        echo_through(&mut io, msg).await;
    }
    assert_eq!(up.requests(), 2);
}

#[tokio::test]
async fn a_long_request_is_not_parked_and_keeps_its_connection() {
    let up = slow("slow", Duration::from_millis(1500)).await;
    let p = proxy(&route_to(up.addr, "auto")).await;
    let stream = tokio::net::TcpStream::connect(p.outbound()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = Request::get("/")
            .header("host", "svc")
            .body(Full::<Bytes>::default());
        let resp = sender.send_request(req.unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers().get("connection").is_none(),
            "a request quiet for longer than the parking delay keeps the connection alive"
        );
        resp.into_body().collect().await.unwrap();
    }
}
