//! What an idle keep-alive connection costs the proxy in heap, through the real outbound
//! listener, HTTP/1.1 and h2c: a parked HTTP/1.1 connection and a settled HTTP/2 one must
//! have given their buffers back, and still serve. Its own test binary, so that no other
//! test allocates in the process while the heap is measured (jemalloc's `stats.allocated`,
//! which counts every thread's allocations).

// The e2e tests' harness (it allows its own dead code).
#[path = "e2e/support.rs"]
mod support;

use std::time::Duration;

use support::{echo, proxy, wait_until};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Idle connections held for each measurement.
const HELD: usize = 64;

/// The most heap one idle connection may keep. A parked HTTP/1.1 connection keeps about
/// 2 KiB and a settled h2c one about 6 KiB (13 KiB in a debug build, whose futures are
/// larger); one that kept its buffers keeps about 25 KiB (HTTP/1.1, hyper's) or 36 KiB
/// (h2c, h2's).
const MOST_PER_CONNECTION: usize = 20 * 1024;

/// The gauge that counts parked (HTTP/1.1) and settled (HTTP/2) connections.
const PARKED: &str = "remora_connections_parked{direction=\"outbound\"}";

#[tokio::test]
async fn idle_keep_alive_connections_give_their_buffers_back_and_serve_on() {
    let up = echo("u").await;
    let p = proxy(&format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: svc }}, backends: [{{ service: s }}] }}\nservices:\n  s: {{ endpoints: [\"{}\"] }}\n",
        up.addr
    ))
    .await;
    for h2 in [false, true] {
        let kind = if h2 { "h2c" } else { "HTTP/1.1" };
        // One connection first: the route's and the pool's state is made by its first request.
        let mut first = Client::open(p.outbound(), h2).await;
        first.exchange().await;
        wait_until(|| async { p.metric(PARKED).await == Some(1.0) }).await;

        let before = allocated();
        let mut held = Vec::with_capacity(HELD);
        for _ in 0..HELD {
            let mut c = Client::open(p.outbound(), h2).await;
            c.exchange().await;
            held.push(c);
        }
        let want = (HELD + 1) as f64;
        wait_until(|| async { p.metric(PARKED).await == Some(want) }).await;
        let per = allocated().saturating_sub(before) / HELD;
        assert!(
            per <= MOST_PER_CONNECTION,
            "an idle {kind} connection keeps {per} B of heap (at most {MOST_PER_CONNECTION})"
        );

        // Idle ones serve on: their buffers come back, and they settle or park again.
        for c in held.iter_mut().take(4) {
            c.exchange().await;
        }
        first.exchange().await;
        wait_until(|| async { p.metric(PARKED).await == Some(want) }).await;
        drop((first, held));
        wait_until(|| async { p.metric(PARKED).await == Some(0.0) }).await;
    }
    // Per kind: the first connection's two requests, one per held one, four again.
    assert_eq!(up.requests(), 2 * (2 + HELD + 4));
}

/// Heap bytes allocated in this process now.
fn allocated() -> usize {
    remora::memory::usage()
        .expect("jemalloc's figures")
        .allocated
}

/// A keep-alive client of its own (no library): HTTP/1.1, or h2c with prior knowledge.
struct Client {
    stream: TcpStream,
    h2: bool,
    /// The next HTTP/2 stream to open.
    next_stream: u32,
}

impl Client {
    async fn open(addr: std::net::SocketAddr, h2: bool) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if h2 {
            stream.write_all(PREFACE).await.unwrap();
            stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        }
        Self {
            stream,
            h2,
            next_stream: 1,
        }
    }

    /// Sends `GET /` for host `svc` and reads its whole response, which must be a 200.
    async fn exchange(&mut self) {
        let io = async {
            if self.h2 {
                self.exchange_h2().await
            } else {
                self.exchange_h1().await
            }
        };
        tokio::time::timeout(Duration::from_secs(10), io)
            .await
            .expect("a response within 10 s");
    }

    async fn exchange_h1(&mut self) {
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the response ended");
            got.extend_from_slice(&buf[..n]);
            let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() >= end + 4 + length {
                return;
            }
        }
    }

    async fn exchange_h2(&mut self) {
        let id = self.next_stream;
        self.next_stream += 2;
        // :method GET, :scheme http, :path /, then :authority svc as a literal with indexing.
        let block = [&[0x82, 0x86, 0x84, 0x41, 3][..], b"svc"].concat();
        let headers = frame(HEADERS, END_HEADERS | END_STREAM, id, &block);
        self.stream.write_all(&headers).await.unwrap();
        let mut buf = Vec::new();
        let mut status_seen = false;
        loop {
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                if kind == SETTINGS && flags & ACK == 0 {
                    self.stream
                        .write_all(&frame(SETTINGS, ACK, 0, &[]))
                        .await
                        .unwrap();
                }
                assert_ne!(kind, RST_STREAM, "stream {id} reset");
                assert_ne!(kind, GOAWAY, "connection went away");
                if stream != id {
                    continue;
                }
                if kind == HEADERS && !status_seen {
                    // The first header is `:status: 200`, static table index 8.
                    assert_eq!(payload.first(), Some(&0x88), "stream {id}: not a 200");
                    status_seen = true;
                }
                if (kind == HEADERS || kind == DATA) && flags & END_STREAM != 0 {
                    assert!(status_seen);
                    return;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before stream {id} ended");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}
