//! Protocol detection on an accepted connection: a TLS ClientHello, an HTTP/1.x request line,
//! the HTTP/2 preface, or anything else (opaque TCP). It reads only until the first bytes
//! decide, into a bounded buffer, and gives up after a short timeout: a server-first protocol
//! (NATS, MySQL, SMTP) sends nothing until the server speaks, so its connection is treated as
//! opaque once the timeout passes. What was read is handed on in front of the stream
//! ([`Prefixed`]), so nothing the caller sent is lost.
//!
//! Written here rather than taken from a crate: it runs on every connection, decides from a
//! handful of bytes, and must never copy or wait more than it has to.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most a caller may send before detection decides: enough for any HTTP/1 request line
/// a server accepts (nginx's default header buffer is 8 KiB).
pub const MAX_PEEK: usize = 8 * 1024;

/// The longest method token taken for HTTP/1 (WebDAV's `VERSION-CONTROL` is 15).
const MAX_METHOD: usize = 24;

/// What a connection speaks, as detection decided (the `protocol` label of
/// `remora_protocol_detections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 preface (prior knowledge, h2c).
    Http2,
    /// A TLS handshake record.
    Tls,
    /// Bytes that are none of the above.
    Opaque,
    /// Nothing decided within the timeout (a server-first protocol, or a silent caller):
    /// proxied as opaque TCP.
    Timeout,
}

impl Detected {
    /// Every verdict, in the order of their discriminants.
    pub const ALL: [Detected; 5] = [
        Detected::Http1,
        Detected::Http2,
        Detected::Tls,
        Detected::Opaque,
        Detected::Timeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Tls => "tls",
            Detected::Opaque => "opaque",
            Detected::Timeout => "timeout",
        }
    }

    /// Whether the connection is served as HTTP.
    pub fn is_http(self) -> bool {
        matches!(self, Detected::Http1 | Detected::Http2)
    }
}

/// Reads from `io` until its first bytes say what it speaks, at most [`MAX_PEEK`] bytes and
/// for at most `timeout`. Returns the verdict and the bytes read, which belong in front of
/// the stream; `None` when the caller closed without sending anything (a TCP health probe:
/// nothing to serve). A caller that closes after sending some bytes is opaque with them.
pub async fn detect<IO>(io: &mut IO, timeout: Duration) -> io::Result<Option<(Detected, Bytes)>>
where
    IO: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(verdict) = decide(&buf) {
            return Ok(Some((verdict, buf.freeze())));
        }
        if buf.len() >= MAX_PEEK {
            return Ok(Some((Detected::Opaque, buf.freeze())));
        }
        buf.reserve(1024.min(MAX_PEEK - buf.len()));
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) if buf.is_empty() => return Ok(None),
            Ok(Ok(0)) => return Ok(Some((Detected::Opaque, buf.freeze()))),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(Some((Detected::Timeout, buf.freeze()))),
        }
    }
}

/// The verdict on the bytes so far, or `None` while more could change it.
pub fn decide(buf: &[u8]) -> Option<Detected> {
    let first = *buf.first()?;
    if first == 0x16 {
        // A handshake record: content type 22, then a 3.x record version.
        return buf.get(1).map(|&major| {
            if major == 3 {
                Detected::Tls
            } else {
                Detected::Opaque
            }
        });
    }
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return None;
    }
    if buf.starts_with(H2_PREFACE) {
        return Some(Detected::Http2);
    }
    http1(buf)
}

/// An HTTP/1 request line: `METHOD SP target SP HTTP/1.x CRLF`. Decided `Opaque` as soon as
/// the bytes cannot start one; `Http1` once the whole line is seen, or once a line too long
/// for the buffer has at least begun like one.
fn http1(buf: &[u8]) -> Option<Detected> {
    let method = buf.iter().take_while(|&&b| is_tchar(b)).count();
    if method > MAX_METHOD || method == 0 {
        return Some(Detected::Opaque);
    }
    let &after = buf.get(method)?;
    if after != b' ' {
        return Some(Detected::Opaque);
    }
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        // Long request targets are HTTP's business, not detection's.
        return (buf.len() >= MAX_PEEK).then_some(Detected::Http1);
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let rest = &line[method + 1..];
    let Some(space) = rest.iter().rposition(|&b| b == b' ') else {
        return Some(Detected::Opaque);
    };
    let (target, version) = (&rest[..space], &rest[space + 1..]);
    if (version == b"HTTP/1.1" || version == b"HTTP/1.0") && !target.is_empty() {
        Some(Detected::Http1)
    } else {
        Some(Detected::Opaque)
    }
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pin_project_lite::pin_project! {
    /// A stream with bytes already read from it put back in front.
    #[derive(Debug)]
    pub struct Prefixed<IO> {
        prefix: Bytes,
        #[pin]
        inner: IO,
    }
}

impl<IO> Prefixed<IO> {
    /// `inner`, read from `prefix` first.
    pub fn new(prefix: Bytes, inner: IO) -> Self {
        Self { prefix, inner }
    }

    /// The bytes not read yet, and the stream underneath.
    pub fn into_parts(self) -> (Bytes, IO) {
        (self.prefix, self.inner)
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncRead> AsyncRead for Prefixed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // An emptied `Bytes` still holds detection's whole buffer: let it go.
                *this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_protocol_is_told_from_its_first_bytes() {
        let cases: &[(&[u8], Option<Detected>)] = &[
            (b"", None),
            (b"\x16", None),
            (b"\x16\x03\x01\x02\x00", Some(Detected::Tls)),
            (b"\x16\x01", Some(Detected::Opaque)),
            (b"PRI * HTTP/2.0\r\n", None),
            (H2_PREFACE, Some(Detected::Http2)),
            (b"GET / HTTP/1.1\r\nHost: a\r\n", Some(Detected::Http1)),
            (b"POST /x HTTP/1.0\n", Some(Detected::Http1)),
            (b"CONNECT a.example:443 HTTP/1.1\r\n", Some(Detected::Http1)),
            (b"OPTIONS * HTTP/1.1\r\n", Some(Detected::Http1)),
            (b"GET", None),
            (b"GET /index", None),
            // Not HTTP as soon as that is certain.
            (b"*1\r\n$4\r\nPING\r\n", Some(Detected::Opaque)),
            (b"PING\r\n", Some(Detected::Opaque)),
            (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Some(Detected::Opaque)),
            (b"HELLO world\r\n", Some(Detected::Opaque)),
            (b"GET / HTTP/2.0\r\n", Some(Detected::Opaque)),
            (b"GET  HTTP/1.1\r\n", Some(Detected::Opaque)),
            (b"PRI * HTTP/1.1\r\n", Some(Detected::Http1)),
        ];
        for (bytes, want) in cases {
            assert_eq!(decide(bytes), *want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn a_request_line_longer_than_the_buffer_is_http() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_PEEK, b'a');
        assert_eq!(decide(&line), Some(Detected::Http1));
        assert_eq!(decide(&line[..MAX_PEEK - 1]), None);
    }

    #[tokio::test]
    async fn detection_reads_only_what_it_needs_and_hands_it_on() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let (verdict, prefix) = detect(&mut server, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(verdict, Detected::Http1);
        let mut replayed = Prefixed::new(prefix, server);
        drop(client);
        let mut all = Vec::new();
        replayed.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_caller_times_out_into_opaque() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (verdict, prefix) = detect(&mut server, Duration::from_millis(300))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((verdict, prefix.len()), (Detected::Timeout, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_preface_waits_then_times_out_with_its_bytes() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PRI * HT")
            .await
            .unwrap();
        let (verdict, prefix) = detect(&mut server, Duration::from_millis(300))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(verdict, Detected::Timeout);
        assert_eq!(&prefix[..], b"PRI * HT");
    }

    #[tokio::test]
    async fn a_caller_closing_first_is_opaque() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GE")
            .await
            .unwrap();
        drop(client);
        let (verdict, prefix) = detect(&mut server, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((verdict, &prefix[..]), (Detected::Opaque, &b"GE"[..]));
    }

    #[tokio::test]
    async fn a_caller_closing_at_once_is_nothing_to_serve() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert!(detect(&mut server, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none());
    }
}
