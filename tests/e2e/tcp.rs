//! Protocol detection and opaque TCP through the real listeners in explicit mode (no
//! redirect, so no original destination): inbound, non-HTTP bytes go to `inbound.app`
//! byte for byte; outbound, a non-HTTP client names no destination and is refused.
//! Transparent mode, with real iptables rules, is in `transparent.rs`.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::support::*;

/// A TCP app: sends `banner` (if any) on accept, then echoes every byte until the caller
/// half-closes, then writes `bye` and closes.
pub async fn tcp_app(banner: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = s.write_all(banner).await;
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(b"bye").await;
            });
        }
    });
    addr
}

fn inbound_to(app: SocketAddr, extra: &str) -> String {
    format!(
        "limits: {{ detect_timeout: 200ms }}\ninbound:\n  listen: 127.0.0.1:0\n  app: \"{app}\"\n{extra}"
    )
}

async fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .expect("bytes arrive before the deadline")
        .unwrap();
    buf
}

#[tokio::test]
async fn a_client_first_protocol_reaches_the_app_byte_for_byte_with_half_close() {
    let app = tcp_app(b"").await;
    let p = proxy(&inbound_to(app, "")).await;
    let mut s = TcpStream::connect(p.inbound()).await.unwrap();
    // RESP, as redis-cli sends it: not HTTP from the first byte.
    s.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut s, 14).await, b"*1\r\n$4\r\nPING\r\n");
    // The caller's half-close reaches the app, whose last words come back.
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, b"bye");
    drop(s);
    let opaque = "remora_protocol_detections_total{direction=\"inbound\",protocol=\"opaque\"}";
    wait_until(|| async { p.metric(opaque).await == Some(1.0) }).await;
    let conns = "remora_tcp_connections_total{direction=\"inbound\",route=\"\",service=\"app\"}";
    assert_eq!(p.metric(conns).await, Some(1.0));
    let sent =
        "remora_tcp_bytes_total{direction=\"inbound\",flow=\"sent\",route=\"\",service=\"app\"}";
    let received =
        "remora_tcp_bytes_total{direction=\"inbound\",flow=\"received\",route=\"\",service=\"app\"}";
    wait_until(|| async {
        p.metric(sent).await == Some(14.0) && p.metric(received).await == Some(17.0)
    })
    .await;
    let open = "remora_tcp_connections_open{direction=\"inbound\"}";
    wait_until(|| async { p.metric(open).await == Some(0.0) }).await;
}

#[tokio::test]
async fn a_server_first_protocol_speaks_once_detection_times_out() {
    let app = tcp_app(b"220 ready\r\n").await;
    let p = proxy(&inbound_to(app, "")).await;
    let mut s = TcpStream::connect(p.inbound()).await.unwrap();
    // The caller says nothing until the server greets it, as SMTP, NATS and MySQL do.
    assert_eq!(read_exactly(&mut s, 11).await, b"220 ready\r\n");
    s.write_all(b"EHLO me\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut s, 9).await, b"EHLO me\r\n");
    let timeout = "remora_protocol_detections_total{direction=\"inbound\",protocol=\"timeout\"}";
    assert_eq!(p.metric(timeout).await, Some(1.0));
}

#[tokio::test]
async fn opaque_ports_skip_detection() {
    let app = tcp_app(b"220 ready\r\n").await;
    // Explicit mode has no original destination: the port is the listener's own.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let p = proxy(&format!(
        "limits: {{ detect_timeout: 1h }}\ninbound:\n  listen: 127.0.0.1:{port}\n  app: \"{app}\"\n  opaque_ports: [{port}]\n"
    ))
    .await;
    let mut s = TcpStream::connect(p.inbound()).await.unwrap();
    // With an hour's detection timeout, only skipping detection lets the greeting through.
    assert_eq!(read_exactly(&mut s, 11).await, b"220 ready\r\n");
    for protocol in ["http1", "http2", "tls", "opaque", "timeout"] {
        let sample = format!(
            "remora_protocol_detections_total{{direction=\"inbound\",protocol=\"{protocol}\"}}"
        );
        assert_eq!(p.metric(&sample).await, Some(0.0), "{protocol}");
    }
    let conns = "remora_tcp_connections_total{direction=\"inbound\",route=\"\",service=\"app\"}";
    assert_eq!(p.metric(conns).await, Some(1.0));
}

#[tokio::test]
async fn http_split_across_packets_is_still_http() {
    let app = echo("app").await;
    let p = proxy(&inbound_to(app.addr, "")).await;
    let mut s = TcpStream::connect(p.inbound()).await.unwrap();
    s.write_all(b"GE").await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    s.write_all(b"T /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let http1 = "remora_protocol_detections_total{direction=\"inbound\",protocol=\"http1\"}";
    assert_eq!(p.metric(http1).await, Some(1.0));
    // HTTP/2 prior knowledge is told apart from HTTP/1 by its preface.
    let r = send_h2(
        p.inbound(),
        http::Request::get("http://a/h2")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let http2 = "remora_protocol_detections_total{direction=\"inbound\",protocol=\"http2\"}";
    assert_eq!(p.metric(http2).await, Some(1.0));
}

#[tokio::test]
async fn a_connection_closed_before_any_byte_is_not_proxied() {
    let app = tcp_app(b"").await;
    let p = proxy(&inbound_to(app, "")).await;
    drop(TcpStream::connect(p.inbound()).await.unwrap());
    // A later connection is served; the empty one left no trace.
    let mut s = TcpStream::connect(p.inbound()).await.unwrap();
    s.write_all(b"\x00\x01").await.unwrap();
    assert_eq!(read_exactly(&mut s, 2).await, b"\x00\x01");
    let conns = "remora_tcp_connections_total{direction=\"inbound\",route=\"\",service=\"app\"}";
    assert_eq!(p.metric(conns).await, Some(1.0));
}

#[tokio::test]
async fn an_idle_tcp_connection_is_closed_after_the_idle_timeout() {
    let app = tcp_app(b"").await;
    let p = proxy(&format!(
        "limits: {{ detect_timeout: 200ms, tcp_idle_timeout: 300ms }}\ninbound:\n  listen: 127.0.0.1:0\n  app: \"{app}\"\n"
    ))
    .await;
    let mut s = TcpStream::connect(p.inbound()).await.unwrap();
    s.write_all(b"\x00hi").await.unwrap();
    assert_eq!(read_exactly(&mut s, 3).await, b"\x00hi");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .expect("closed before the deadline");
    assert_eq!(rest, b"", "the app never said bye: Remora closed it");
}

#[tokio::test]
async fn a_non_http_client_of_the_explicit_outbound_listener_is_refused_and_counted() {
    let p = proxy(
        "limits: { detect_timeout: 200ms }\noutbound: { listen: 127.0.0.1:0, unmatched: reject }\n",
    )
    .await;
    let out = raw(p.outbound(), b"*1\r\n$4\r\nPING\r\n").await;
    assert_eq!(out, "");
    let failed = "remora_proxy_errors_total{direction=\"outbound\",reason=\"no-destination\",route=\"\",service=\"\"}";
    wait_until(|| async { p.metric(failed).await == Some(1.0) }).await;
    // HTTP on the same listener is unaffected.
    let r = get(p.outbound(), "nowhere", "/").await;
    assert_eq!(r.status, 404, "{}", r.body);
}

#[tokio::test]
async fn a_dead_app_is_a_counted_connect_failure() {
    let dead = dead_addr().await;
    let p = proxy(&inbound_to(dead, "")).await;
    let out = raw(p.inbound(), b"\x00\x01\x02").await;
    assert_eq!(out, "");
    let failed = "remora_proxy_errors_total{direction=\"inbound\",reason=\"connect-failure\",route=\"\",service=\"app\"}";
    wait_until(|| async { p.metric(failed).await == Some(1.0) }).await;
}

#[tokio::test]
async fn tcp_route_config_errors_have_their_place() {
    let e = config_error(
        r#"version: 1
outbound:
  listen: 127.0.0.1:0
  tcp_routes:
    - { name: a, match: {}, service: nats }
    - { name: a, match: { port: 0, destination: 10.0.0.1/8 }, service: ghost }
services:
  nats: { endpoints: ["127.0.0.1:4222"] }
"#,
    );
    for want in [
        "f.yaml:5:25: outbound.tcp_routes[0].match: needs `port`, `destination`, or both",
        "outbound.tcp_routes[1].name: duplicate TCP route name \"a\"",
        "outbound.tcp_routes[1].match.port: must be 1 to 65535",
        "outbound.tcp_routes[1].match.destination: \"10.0.0.1/8\" has host bits set",
        "outbound.tcp_routes[1].service: unknown service \"ghost\"",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[tokio::test]
async fn a_silent_connection_to_a_silent_app_is_closed() {
    let app = tcp_app(b"").await;
    let p = proxy(&format!(
        "limits: {{ detect_timeout: 200ms, header_read_timeout: 300ms, tcp_idle_timeout: 1h }}\ninbound:\n  listen: 127.0.0.1:0\n  app: \"{app}\"\n"
    ))
    .await;
    // Neither side says a word: closed after header_read_timeout, not the hour.
    let mut s = TcpStream::connect(p.inbound()).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .expect("closed before the deadline");
    assert_eq!(rest, b"");
    let open = "remora_tcp_connections_open{direction=\"inbound\"}";
    wait_until(|| async { p.metric(open).await == Some(0.0) }).await;
}

#[tokio::test]
async fn a_client_too_slow_to_finish_its_first_request_line_is_closed_not_proxied() {
    let app = tcp_app(b"").await;
    let p = proxy(&inbound_to(app, "")).await;
    // A slowloris: the start of a request line, then nothing (as a dripped preface would).
    let mut s = TcpStream::connect(p.inbound()).await.unwrap();
    s.write_all(b"GET /index").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .expect("closed before the deadline");
    assert_eq!(rest, b"");
    let timeout = "remora_protocol_detections_total{direction=\"inbound\",protocol=\"timeout\"}";
    assert_eq!(p.metric(timeout).await, Some(1.0));
    let conns = "remora_tcp_connections_total{direction=\"inbound\",route=\"\",service=\"app\"}";
    assert_eq!(p.metric(conns).await, Some(0.0), "never proxied to the app");
}

#[tokio::test]
async fn a_flood_of_silent_connections_cannot_keep_a_real_client_out() {
    let up = echo("app").await;
    let p = proxy(&format!(
        "limits: {{ max_connections: 20, detect_timeout: 1h }}\ninbound:\n  listen: 127.0.0.1:0\n  app: \"{}\"\n",
        up.addr
    ))
    .await;
    // Twice the listener's cap, all silent, and detection would wait an hour for them.
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(p.inbound()).await.unwrap());
    }
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        get(p.inbound(), "app", "/"),
    )
    .await
    .expect("a real client is served while the flood holds on");
    assert_eq!(
        r.status,
        200,
        "x-remora-error {:?}: {}; the app saw {} connections",
        r.header("x-remora-error"),
        r.body,
        up.connections()
    );
    drop(silent);
}
