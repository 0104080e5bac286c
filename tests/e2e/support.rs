//! Test helpers: upstreams on 127.0.0.1:0 with scripted behaviour, an in-process Remora built
//! from YAML text, and HTTP/1.1 and HTTP/2 clients.

#![allow(dead_code)]

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

// === upstreams ===

/// A handler for a test upstream.
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxFuture<Response<TestBody>> + Send + Sync>;
/// A boxed future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A running test upstream; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Requests received.
    pub requests: Arc<AtomicUsize>,
    /// Connections that have ended.
    pub closed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Which protocols a test upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// HTTP/1.1 and HTTP/2 (prior knowledge), with upgrades.
    Both,
    /// HTTP/1.1 only, as most apps: an HTTP/2 preface gets hyper's HTTP/1 error.
    Http1,
    /// HTTP/2 only, as a gRPC server.
    Http2,
}

/// Starts an upstream (HTTP/1.1 and HTTP/2, with upgrades) running `handler` on `listener`.
pub fn serve_upstream(listener: TcpListener, handler: Handler) -> Upstream {
    serve_speaking(listener, handler, Speaks::Both)
}

/// An upstream that answers with the echo handler and speaks only `speaks`.
pub async fn echo_speaking(name: &'static str, speaks: Speaks) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_speaking(
        listener,
        Arc::new(move |req| Box::pin(async move { echo_response(name, &req) })),
        speaks,
    )
}

/// Starts an upstream running `handler` on `listener`, speaking `speaks`.
pub fn serve_speaking(listener: TcpListener, handler: Handler, speaks: Speaks) -> Upstream {
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (c, r, d) = (connections.clone(), requests.clone(), closed.clone());
    let task = tokio::spawn(async move {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder = match speaks {
            Speaks::Both => builder,
            Speaks::Http1 => builder.http1_only(),
            Speaks::Http2 => builder.http2_only(),
        };
        let builder = Arc::new(builder);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let (h, r, d, builder) = (handler.clone(), r.clone(), d.clone(), builder.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let fut = h(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                // hyper-util honours `http1_only`/`http2_only` only without upgrades.
                let _ = match speaks {
                    Speaks::Both => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                            .await
                    }
                    _ => builder.serve_connection(TokioIo::new(stream), svc).await,
                };
                d.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Upstream {
        addr,
        connections,
        requests,
        closed,
        task,
    }
}

/// An upstream answering with `handler`.
pub async fn upstream_fn<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_upstream(listener, Arc::new(move |req| Box::pin(handler(req))))
}

/// An upstream that answers 200 with `x-upstream: NAME`, `x-path`, `x-version`, and a body
/// listing the request headers it received, one `name: value` per line.
pub async fn echo(name: &'static str) -> Upstream {
    upstream_fn(move |req| async move { echo_response(name, &req) }).await
}

/// The echo upstream's answer.
pub fn echo_response(name: &str, req: &Request<Incoming>) -> Response<TestBody> {
    let mut body = String::new();
    for (k, v) in req.headers() {
        body.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
    }
    Response::builder()
        .header("x-upstream", name)
        .header(
            "x-path",
            req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
        )
        .header("x-version", format!("{:?}", req.version()))
        .header("x-method", req.method().as_str())
        .body(TestBody::text(body))
        .unwrap()
}

/// An upstream that answers with these statuses in turn (the last one repeats).
pub async fn status_seq(seq: &[u16]) -> Upstream {
    let seq = Arc::new(Mutex::new(seq.iter().copied().collect::<VecDeque<u16>>()));
    upstream_fn(move |_req| {
        let seq = seq.clone();
        async move {
            let code = {
                let mut s = seq.lock().unwrap();
                if s.len() > 1 {
                    s.pop_front().unwrap()
                } else {
                    *s.front().unwrap()
                }
            };
            Response::builder()
                .status(code)
                .body(TestBody::empty())
                .unwrap()
        }
    })
    .await
}

/// An upstream that waits `delay` before answering 200.
pub async fn slow(name: &'static str, delay: Duration) -> Upstream {
    upstream_fn(move |req| async move {
        tokio::time::sleep(delay).await;
        echo_response(name, &req)
    })
    .await
}

/// An upstream that streams the request body back, followed by `trailers` when given.
pub async fn body_echo(trailers: Option<HeaderMap>) -> Upstream {
    upstream_fn(move |req| {
        let trailers = trailers.clone();
        async move {
            let ct = req.headers().get("content-type").cloned();
            let mut resp = Response::new(TestBody::Echo {
                inner: req.into_body(),
                trailers,
            });
            if let Some(ct) = ct {
                resp.headers_mut().insert("content-type", ct);
            }
            resp
        }
    })
    .await
}

/// An upstream that accepts WebSocket upgrades and echoes every byte back.
pub async fn ws_echo() -> Upstream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    upstream_fn(|mut req| async move {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = TokioIo::new(on.await.unwrap());
            let mut buf = [0u8; 64];
            loop {
                let n = io.read(&mut buf).await.unwrap_or(0);
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(TestBody::empty())
            .unwrap()
    })
    .await
}

/// A WebSocket upgrade request for `host` (the RFC 6455 example key).
pub fn upgrade_request(host: &str) -> Request<Full<Bytes>> {
    Request::get("/chat")
        .header("host", host)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(Full::<Bytes>::default())
        .unwrap()
}

/// Opens a WebSocket upgrade to `host` through `addr`; returns the 101 response's headers
/// and the upgraded connection.
pub async fn open_upgrade(
    addr: SocketAddr,
    host: &str,
) -> (HeaderMap, TokioIo<hyper::upgrade::Upgraded>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(upgrade_request(host)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 101);
    let headers = resp.headers().clone();
    let io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    (headers, io)
}

/// Writes `msg` and expects it echoed back.
pub async fn echo_through<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: &mut T,
    msg: &[u8],
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(DEADLINE, io.read_exact(&mut buf))
        .await
        .expect("echo before the deadline")
        .unwrap();
    assert_eq!(buf, msg);
}

/// A raw upstream that reads each request and closes the connection without answering.
pub async fn resetting() -> (SocketAddr, JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
        }
    });
    (addr, task)
}

/// A local address with nothing listening on it.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

// === bodies ===

/// A body for tests: fixed, from a channel, or echoing another body then adding trailers.
pub enum TestBody {
    Frames(VecDeque<Frame<Bytes>>),
    Channel(mpsc::Receiver<Frame<Bytes>>),
    Echo {
        inner: Incoming,
        trailers: Option<HeaderMap>,
    },
}

impl TestBody {
    pub fn empty() -> Self {
        TestBody::Frames(VecDeque::new())
    }
    pub fn text(s: impl Into<Bytes>) -> Self {
        TestBody::Frames(VecDeque::from([Frame::data(s.into())]))
    }
    pub fn with_trailers(data: Vec<Bytes>, trailers: HeaderMap) -> Self {
        let mut frames: VecDeque<_> = data.into_iter().map(Frame::data).collect();
        frames.push_back(Frame::trailers(trailers));
        TestBody::Frames(frames)
    }
    /// A body fed through a channel, for streaming tests.
    pub fn channel() -> (mpsc::Sender<Frame<Bytes>>, Self) {
        let (tx, rx) = mpsc::channel(4);
        (tx, TestBody::Channel(rx))
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            TestBody::Frames(f) => Poll::Ready(f.pop_front().map(Ok)),
            TestBody::Channel(rx) => rx.poll_recv(cx).map(|f| f.map(Ok)),
            TestBody::Echo { inner, trailers } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(None) => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
                other => other,
            },
        }
    }
}

// === the proxy ===

/// An in-process Remora; stops (gracefully) when dropped or `shutdown` is called.
pub struct Proxy {
    pub admin: SocketAddr,
    pub outbound: Option<SocketAddr>,
    pub inbound: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn outbound(&self) -> SocketAddr {
        self.outbound.expect("outbound listener configured")
    }
    pub fn inbound(&self) -> SocketAddr {
        self.inbound.expect("inbound listener configured")
    }

    /// Starts the graceful stop and returns the task that finishes when it is done.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.take().expect("running")
    }

    /// Stops and waits.
    pub async fn shutdown(mut self) {
        let task = self.begin_shutdown();
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("proxy stops")
            .unwrap();
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        get(self.admin, "admin", "/metrics").await.body
    }

    /// The value of one sample line in `/metrics`, e.g.
    /// `remora_requests_total{code="200",direction="outbound",route="r",service="s"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines().find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A config with one route `r` for host `svc` to service `s` at `endpoints`; `route` and
/// `service` add settings to each, one `key: value` per entry (empty entries are skipped).
pub fn svc_config(endpoints: &[SocketAddr], route: &[&str], service: &[&str]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    let mut y = String::from(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: { host: svc }\n      backends: [{ service: s }]\n",
    );
    for line in route.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        y.push_str(&format!("      {line}\n"));
    }
    y.push_str(&format!(
        "services:\n  s:\n    endpoints: [{}]\n",
        eps.join(", ")
    ));
    for line in service.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        y.push_str(&format!("    {line}\n"));
    }
    y
}

/// Completes test YAML: `version: 1` and an admin listener on port 0 are added when missing;
/// data listeners must say `listen: 127.0.0.1:0`.
pub fn complete(yaml: &str) -> String {
    let mut text = String::new();
    if !yaml.contains("version:") {
        text.push_str("version: 1\n");
    }
    if !yaml.contains("admin:") {
        text.push_str("admin: { listen: 127.0.0.1:0 }\n");
    }
    text.push_str(yaml);
    text
}

/// Starts Remora with this control file text (see `complete`), not reloadable.
pub async fn proxy(yaml: &str) -> Proxy {
    start(&complete(yaml), None).await
}

/// Starts Remora from the control file at `path`, reloadable as in production.
pub async fn proxy_file(path: &std::path::Path) -> Proxy {
    let text = std::fs::read_to_string(path).unwrap();
    let source = remora::app::ConfigSource {
        path: path.to_owned(),
        text: text.clone().into_bytes(),
    };
    start(&text, Some(source)).await
}

async fn start(text: &str, source: Option<remora::app::ConfigSource>) -> Proxy {
    // Named after its file, if any, so relative paths in it are found as in production.
    let name = source
        .as_ref()
        .map_or_else(|| "test.yaml".to_owned(), |s| s.path.display().to_string());
    let compiled = match remora::config::parse(&name, text) {
        Ok(c) => c,
        Err(e) => panic!("test config is invalid:\n{e}\n---\n{text}"),
    };
    let listeners = remora::app::Listeners::bind(&compiled).await.unwrap();
    let addrs = listeners.addrs();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(remora::app::run(compiled, listeners, source, async move {
        let _ = rx.await;
    }));
    let p = Proxy {
        admin: addrs.admin,
        outbound: addrs.outbound,
        inbound: addrs.inbound,
        stop: Some(tx),
        task: Some(task),
    };
    wait_until(|| async { get(p.admin, "admin", "/ready").await.status == 200 }).await;
    p
}

/// The report for control file text that must be refused (named `f.yaml`), one line per
/// problem.
pub fn config_error(text: &str) -> String {
    match remora::config::parse("f.yaml", text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// Polls `cond` until it holds, failing the test after `DEADLINE`.
pub async fn wait_until<F, Fut>(cond: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met before the deadline"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === clients ===

/// A response read to its end.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Whether the echo upstream saw request header `name` with `value`.
    pub fn saw(&self, name: &str, value: &str) -> bool {
        self.body.lines().any(|l| l == format!("{name}: {value}"))
    }
    /// Whether the echo upstream saw request header `name` at all.
    pub fn saw_header(&self, name: &str) -> bool {
        self.body
            .lines()
            .any(|l| l.starts_with(&format!("{name}: ")))
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn h1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `req` with `client` and reads the whole response.
pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Resp {
    let resp = tokio::time::timeout(DEADLINE, client.request(req))
        .await
        .expect("response before the deadline")
        .expect("request succeeds at the HTTP level");
    read(resp).await
}

/// Reads a response to its end, trailers included.
pub async fn read(resp: http::Response<Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    let collected = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("body before the deadline")
        .expect("body reads");
    let trailers = collected.trailers().cloned();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        trailers,
    }
}

/// Sends `req` over a fresh HTTP/2 (prior knowledge) connection to `addr`; the request URI's
/// authority becomes `:authority`, so it can name a host other than `addr`.
pub async fn send_h2(addr: SocketAddr, req: Request<Full<Bytes>>) -> Resp {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .expect("response before the deadline")
        .expect("request succeeds at the HTTP level");
    read(resp).await
}

/// `GET http://addr{path}` with `Host: host` over HTTP/1.1.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Resp {
    get_with(addr, host, path, &[]).await
}

/// Like `get`, with extra headers.
pub async fn get_with(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(format!("http://{addr}{path}")).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&h1_client(), b.body(Full::default()).unwrap()).await
}

/// Sends raw bytes on a fresh connection and returns everything read until the peer closes
/// or the deadline passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// === a real Prometheus ===

/// A process killed (and reaped) when dropped.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prometheus scraping `targets` every second, storing in `dir`, with `flags` added; the
/// process and its web address.
pub fn start_prometheus(
    dir: &std::path::Path,
    targets: &[SocketAddr],
    flags: &[&str],
) -> (Kill, SocketAddr) {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s }}\nscrape_configs:\n  - job_name: remora\n    static_configs: [{{ targets: [{}] }}]\n",
            list.join(", ")
        ),
    )
    .unwrap();
    // Prometheus takes a port, not a socket: a free one, found by binding port 0.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let web = SocketAddr::from(([127, 0, 0, 1], port));
    let child = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .args(flags)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (tests/install-deps.sh installs it)");
    (Kill(child), web)
}
