//! Mutual TLS through the real listeners: two Remora instances (A's outbound calling B's
//! inbound), certificates made at test time, strict / permissive / disabled, authorization,
//! every certificate failure on both sides, rotation under a live connection, HTTP/2 by ALPN,
//! and a non-Rust client (openssl s_client).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use remora::tls::certs::{Ca, Validity};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, RootCertStore,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::*;

const DOMAIN: &str = "spiffe://test.local/ns/shop/sa";

/// A `spiffe://` URI that is not a valid SPIFFE ID (trust domains are lowercase).
const BAD_ID: &str = "spiffe://Test.Local/ns/shop/sa/api";

fn id(name: &str) -> String {
    format!("{DOMAIN}/{name}")
}

/// A CA and the workload files it issued, in a temporary folder.
struct Pki {
    dir: PathBuf,
    ca: Ca,
}

/// A workload's certificate and key files.
#[derive(Clone)]
struct Workload {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("remora-mtls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new(&format!("test CA {name}"), Validity::days(30)).unwrap();
        std::fs::write(dir.join("ca.crt"), &ca.pem.cert_pem).unwrap();
        Self { dir, ca }
    }

    fn anchors(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Issues a certificate for `spiffe_id` (none: no URI SAN), written as `stem.crt/.key`.
    fn issue_with(&self, stem: &str, spiffe_id: Option<&str>, validity: Validity) -> Workload {
        let issued = self.ca.issue(spiffe_id, validity).unwrap();
        let w = Workload {
            cert: self.dir.join(format!("{stem}.crt")),
            key: self.dir.join(format!("{stem}.key")),
        };
        // Written beside and renamed over, so a watcher never reads half a file.
        for (path, text) in [(&w.key, &issued.key_pem), (&w.cert, &issued.cert_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        w
    }

    /// A valid certificate for `{DOMAIN}/{name}`.
    fn issue(&self, name: &str) -> Workload {
        self.issue_with(name, Some(&id(name)), Validity::days(10))
    }

    /// The `identity:` section for `w`, trusting this CA.
    fn identity(&self, w: &Workload) -> String {
        format!(
            "identity: {{ trust_anchors: {:?}, certificate: {:?}, private_key: {:?} }}\n",
            self.anchors(),
            w.cert,
            w.key
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// B: an inbound listener (`inbound` adds settings, e.g. `tls: strict`) in front of `app`.
async fn sidecar_b(pki: &Pki, server: &Workload, app: SocketAddr, inbound: &str) -> Proxy {
    proxy(&format!(
        "{}inbound:\n  listen: 127.0.0.1:0\n  app: \"{app}\"\n{}",
        pki.identity(server),
        indent(inbound)
    ))
    .await
}

/// A: an outbound listener with service `b` at `b_addr`, called over mTLS expecting
/// `expect`; `service` adds settings to the service.
async fn sidecar_a(
    pki: &Pki,
    client: &Workload,
    b_addr: SocketAddr,
    expect: &str,
    service: &str,
) -> Proxy {
    let mut yaml = pki.identity(client);
    yaml.push_str(&svc_config(
        &[b_addr],
        &[],
        &[&format!("tls: {{ identity: \"{expect}\" }}"), service],
    ));
    proxy(&yaml).await
}

fn indent(lines: &str) -> String {
    lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("  {l}\n"))
        .collect()
}

/// A rustls client config presenting `client` (if any), trusting `anchors` and expecting the
/// server to be `server_id`, offering `alpn`.
fn client_config(
    anchors: &Path,
    client: Option<&Workload>,
    server_id: &str,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(anchors).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = remora::tls::verify::ServerIdentityVerifier::new(
        Arc::new(roots),
        remora::tls::SpiffeId::parse(server_id).unwrap(),
    );
    let builder = ClientConfig::builder_with_provider(remora::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match client {
        Some(w) => {
            let chain = CertificateDer::pem_file_iter(&w.cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(&w.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    tokio::time::timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("handshake ends before the deadline")
}

/// An HTTP/1.1 connection over `stream` that can carry several requests.
async fn h1_over(
    stream: TlsStream<TcpStream>,
) -> hyper::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends `GET path` on `sender`; `Err` when the connection fails.
async fn h1_get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    let mut b = Request::get(path).header("host", "b");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(
        DEADLINE,
        sender.send_request(b.body(Full::default()).unwrap()),
    )
    .await
    .expect("answer before the deadline")
    .map_err(|e| e.to_string())?;
    Ok(read(resp).await)
}

/// One `GET path` over a new mTLS connection to `addr`; `Err` when TLS or HTTP fails.
async fn tls_get(addr: SocketAddr, config: Arc<ClientConfig>, path: &str) -> Result<Resp, String> {
    let stream = tls_connect(addr, config).await.map_err(|e| e.to_string())?;
    let mut sender = h1_over(stream).await.map_err(|e| e.to_string())?;
    h1_get(&mut sender, path, &[]).await
}

/// Valid for nine days, ending yesterday.
fn expired() -> Validity {
    let now = now();
    Validity::between(now - 10 * DAY, now - DAY)
}

/// Valid for nine days, starting tomorrow.
fn not_yet_valid() -> Validity {
    let now = now();
    Validity::between(now + DAY, now + 10 * DAY)
}

const DAY: i64 = 86_400;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn handshakes(direction: &str, result: &str) -> String {
    format!("remora_tls_handshakes_total{{direction=\"{direction}\",result=\"{result}\"}}")
}

async fn count(p: &Proxy, sample: &str) -> f64 {
    p.metric(sample).await.unwrap_or(0.0)
}

#[tokio::test]
async fn a_calls_b_over_mtls_and_the_app_sees_the_callers_identity() {
    let pki = Pki::new("basic");
    let (web, api) = (pki.issue("web"), pki.issue("api"));
    let app = echo("app").await;
    let b = sidecar_b(&pki, &api, app.addr, "tls: strict").await;
    let a = sidecar_a(&pki, &web, b.inbound(), &id("api"), "").await;

    // The caller's own claim is replaced by the verified identity.
    for _ in 0..3 {
        let r = get_with(
            a.outbound(),
            "svc",
            "/x",
            &[("x-remora-client-id", "spiffe://evil/forged")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.saw("x-remora-client-id", &id("web")), "{}", r.body);
        assert!(!r.body.contains("forged"), "{}", r.body);
    }
    // Pooled: three requests, one handshake on each side.
    assert_eq!(count(&a, &handshakes("outbound", "success")).await, 1.0);
    assert_eq!(count(&b, &handshakes("inbound", "success")).await, 1.0);
    assert_eq!(app.connections(), 1);
    let expiry = count(&b, "remora_tls_certificate_expiry_timestamp_seconds").await;
    assert!(expiry > 1.7e9, "expiry metric is a Unix time: {expiry}");
}

#[tokio::test]
async fn strict_refuses_plaintext_permissive_accepts_both_disabled_only_plaintext() {
    let pki = Pki::new("modes");
    let (web, api) = (pki.issue("web"), pki.issue("api"));
    let app = echo("app").await;
    let mtls = client_config(&pki.anchors(), Some(&web), &id("api"), &[b"http/1.1"]);

    let strict = sidecar_b(&pki, &api, app.addr, "tls: strict").await;
    // Plaintext callers get a clear refusal (HTTP/1.1 and HTTP/2 alike); the app sees nothing.
    let plain = get(strict.inbound(), "b", "/").await;
    assert_eq!(plain.status, 400, "{}", plain.body);
    assert_eq!(plain.header("x-remora-error"), Some("mtls-required"));
    assert!(plain.body.contains("only mutual TLS"), "{}", plain.body);
    let h2 = send_h2(
        strict.inbound(),
        Request::get("http://b/").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(h2.header("x-remora-error"), Some("mtls-required"));
    assert_eq!(app.requests(), 0);
    // One per plaintext connection (the HTTP/1.1 and the HTTP/2 one).
    assert_eq!(
        count(&strict, &handshakes("inbound", "plaintext-refused")).await,
        2.0
    );
    let r = tls_get(strict.inbound(), mtls.clone(), "/").await.unwrap();
    assert!(r.saw("x-remora-client-id", &id("web")), "{}", r.body);

    let permissive = sidecar_b(&pki, &api, app.addr, "tls: permissive").await;
    let plain = get_with(
        permissive.inbound(),
        "b",
        "/",
        &[("x-remora-client-id", &id("admin"))],
    )
    .await;
    assert_eq!(plain.status, 200);
    assert!(
        !plain.saw_header("x-remora-client-id"),
        "plaintext callers have no identity: {}",
        plain.body
    );
    let r = tls_get(permissive.inbound(), mtls.clone(), "/")
        .await
        .unwrap();
    assert!(r.saw("x-remora-client-id", &id("web")), "{}", r.body);

    let disabled = sidecar_b(&pki, &api, app.addr, "tls: disabled").await;
    assert_eq!(get(disabled.inbound(), "b", "/").await.status, 200);
    assert!(tls_get(disabled.inbound(), mtls, "/").await.is_err());
}

#[tokio::test]
async fn authorization_rules_allow_by_identity_path_and_method() {
    let pki = Pki::new("authz");
    let (web, intruder, api) = (pki.issue("web"), pki.issue("intruder"), pki.issue("api"));
    let app = echo("app").await;
    let rules = format!(
        "tls: permissive\nauthorize:\n  - name: web-api\n    from: [\"{}\"]\n    paths: [/api/*]\n    methods: [GET]\n  - name: ops\n    from: [\"spiffe://test.local/ns/ops/*\"]\n  - name: health\n    unauthenticated: true\n    paths: [/healthz]\n",
        id("web")
    );
    let b = sidecar_b(&pki, &api, app.addr, &rules).await;
    let web_cfg = client_config(&pki.anchors(), Some(&web), &id("api"), &[]);
    let intruder_cfg = client_config(&pki.anchors(), Some(&intruder), &id("api"), &[]);

    let ok = tls_get(b.inbound(), web_cfg.clone(), "/api/items")
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    for (cfg, path) in [
        (&web_cfg, "/admin"),
        (&web_cfg, "/apix"),
        (&intruder_cfg, "/api/items"),
    ] {
        let r = tls_get(b.inbound(), cfg.clone(), path).await.unwrap();
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert_eq!(r.header("x-remora-error"), Some("unauthorized"));
    }
    // Methods count too.
    let stream = tls_connect(b.inbound(), web_cfg.clone()).await.unwrap();
    let mut sender = h1_over(stream).await.unwrap();
    let post = sender
        .send_request(
            Request::post("/api/items")
                .header("host", "b")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(post.status(), 403);
    // Plaintext callers match only the rule open to unauthenticated callers; so does anyone.
    assert_eq!(get(b.inbound(), "b", "/healthz").await.status, 200);
    assert_eq!(get(b.inbound(), "b", "/api/items").await.status, 403);
    let r = tls_get(b.inbound(), intruder_cfg, "/healthz")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(app.requests(), 3, "denied requests never reach the app");

    assert_eq!(
        count(&b, "remora_authz_denied_total{rule=\"default-deny\"}").await,
        5.0
    );
    assert_eq!(
        count(&b, "remora_authz_allowed_total{rule=\"web-api\"}").await,
        1.0
    );
    assert_eq!(
        count(&b, "remora_authz_allowed_total{rule=\"health\"}").await,
        2.0
    );
    let forbidden =
        "remora_requests_total{code=\"403\",direction=\"inbound\",route=\"\",service=\"app\"}";
    assert_eq!(count(&b, forbidden).await, 5.0);
}

#[tokio::test]
async fn server_certificate_failures_fail_the_request_with_their_reason() {
    let pki = Pki::new("server-fail");
    let other = Pki::new("server-fail-other");
    let web = pki.issue("web");
    let app = echo("app").await;
    let cases = [
        (
            "expired",
            pki.issue_with("api-expired", Some(&id("api")), expired()),
            &pki,
            "expired",
        ),
        (
            "future",
            pki.issue_with("api-future", Some(&id("api")), not_yet_valid()),
            &pki,
            "not-yet-valid",
        ),
        ("other-ca", other.issue("api"), &other, "unknown-ca"),
        (
            "no-san",
            pki.issue_with("api-nosan", None, Validity::days(10)),
            &pki,
            "missing-spiffe-id",
        ),
        (
            "bad-id",
            pki.issue_with("api-badid", Some(BAD_ID), Validity::days(10)),
            &pki,
            "invalid-spiffe-id",
        ),
    ];
    for (name, cert, issuer, reason) in cases {
        // Remora refuses to load such a certificate, so a plain rustls server presents it.
        let server = bad_server(&cert, issuer).await;
        let a = sidecar_a(&pki, &web, server, &id("api"), "").await;
        let r = get(a.outbound(), "svc", "/").await;
        assert_eq!(r.status, 502, "{name}: {}", r.body);
        assert_eq!(
            r.header("x-remora-error"),
            Some("upstream-connect-failure"),
            "{name}"
        );
        assert_eq!(
            count(&a, &handshakes("outbound", reason)).await,
            1.0,
            "{name}: {}",
            a.metrics().await
        );
    }

    // A valid server with the wrong identity.
    let inventory = pki.issue("inventory");
    let b = sidecar_b(&pki, &inventory, app.addr, "tls: strict").await;
    let a = sidecar_a(&pki, &web, b.inbound(), &id("api"), "").await;
    let r = get(a.outbound(), "svc", "/").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.header("x-remora-error"), Some("peer-identity-mismatch"));
    assert!(r.body.contains(&id("inventory")), "{}", r.body);
    assert_eq!(
        count(&a, &handshakes("outbound", "peer-identity-mismatch")).await,
        1.0
    );
    assert_eq!(app.requests(), 0);
}

/// A TLS server presenting `w` (whatever is wrong with it), trusting `pki`'s CA for clients,
/// answering every request with 200. Stands in for a peer Remora would refuse to load.
async fn bad_server(w: &Workload, pki: &Pki) -> SocketAddr {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&w.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&w.key).unwrap();
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.anchors()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        remora::tls::provider(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(remora::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from("ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn caller_certificate_failures_are_refused_counted_and_others_still_served() {
    let pki = Pki::new("caller-fail");
    let other = Pki::new("caller-fail-other");
    let api = pki.issue("api");
    let app = echo("app").await;
    let b = sidecar_b(&pki, &api, app.addr, "tls: strict").await;
    let cases = [
        (
            Some(pki.issue_with("web-expired", Some(&id("web")), expired())),
            "expired",
        ),
        (
            Some(pki.issue_with("web-future", Some(&id("web")), not_yet_valid())),
            "not-yet-valid",
        ),
        (Some(other.issue("web")), "unknown-ca"),
        (
            Some(pki.issue_with("web-nosan", None, Validity::days(10))),
            "missing-spiffe-id",
        ),
        (
            Some(pki.issue_with("web-badid", Some(BAD_ID), Validity::days(10))),
            "invalid-spiffe-id",
        ),
        (None, "no-client-certificate"),
    ];
    for (cert, reason) in cases {
        let cfg = client_config(&pki.anchors(), cert.as_ref(), &id("api"), &[]);
        let r = tls_get(b.inbound(), cfg, "/").await;
        assert!(r.is_err(), "{reason}: refused, got {r:?}");
        assert_eq!(
            count(&b, &handshakes("inbound", reason)).await,
            1.0,
            "{reason}: {}",
            b.metrics().await
        );
    }
    let good = client_config(&pki.anchors(), Some(&pki.issue("web")), &id("api"), &[]);
    assert_eq!(tls_get(b.inbound(), good, "/").await.unwrap().status, 200);
    assert_eq!(app.requests(), 1);
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn_both_ways() {
    let pki = Pki::new("alpn");
    let (web, api) = (pki.issue("web"), pki.issue("api"));
    let app = echo("app").await;
    let b = sidecar_b(&pki, &api, app.addr, "tls: strict\nprotocol: http1").await;

    // A client offering h2 gets h2 from B's inbound.
    let cfg = client_config(
        &pki.anchors(),
        Some(&web),
        &id("api"),
        &[b"h2", b"http/1.1"],
    );
    let stream = tls_connect(b.inbound(), cfg).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("https://b/h2")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let r = read(resp).await;
    assert!(r.saw("x-remora-client-id", &id("web")), "{}", r.body);

    // A's http2 service multiplexes over one mTLS connection negotiated as h2.
    let a = sidecar_a(&pki, &web, b.inbound(), &id("api"), "protocol: http2").await;
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let addr = a.outbound();
            tokio::spawn(async move { get(addr, "svc", &format!("/{i}")).await })
        })
        .collect();
    for h in handles {
        let r = h.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.saw("x-remora-client-id", &id("web")), "{}", r.body);
    }
    assert_eq!(count(&a, &handshakes("outbound", "success")).await, 1.0);
}

#[tokio::test]
async fn rotation_takes_new_files_keeps_live_connections_and_refuses_a_bad_set() {
    let pki = Pki::new("rotate");
    let (web, api) = (pki.issue("web"), pki.issue("api"));
    let app = echo("app").await;
    let b = sidecar_b(&pki, &api, app.addr, "tls: strict").await;
    let cfg = client_config(&pki.anchors(), Some(&web), &id("api"), &[]);
    let server_expiry = |s: &TlsStream<TcpStream>| {
        let leaf = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        remora::tls::verify::validity(&leaf).unwrap().1
    };

    let live = tls_connect(b.inbound(), cfg.clone()).await.unwrap();
    let first = server_expiry(&live);
    let mut live = h1_over(live).await.unwrap();
    assert_eq!(h1_get(&mut live, "/1", &[]).await.unwrap().status, 200);

    // New files (same identity, another validity) are in force for new handshakes within
    // seconds; the open connection goes on.
    let rotated = pki.issue_with("api", Some(&id("api")), Validity::days(20));
    let second =
        remora::tls::verify::validity(&CertificateDer::from_pem_file(&rotated.cert).unwrap())
            .unwrap()
            .1;
    assert_ne!(first, second);
    wait_until(|| async {
        b.metric("remora_tls_certificate_expiry_timestamp_seconds")
            .await
            == Some(second as f64)
    })
    .await;
    assert_eq!(
        count(&b, "remora_tls_identity_reloads_total{result=\"success\"}").await,
        1.0
    );
    let fresh = tls_connect(b.inbound(), cfg.clone()).await.unwrap();
    assert_eq!(server_expiry(&fresh), second);
    assert_eq!(h1_get(&mut live, "/2", &[]).await.unwrap().status, 200);

    // A certificate whose key is not the key file's is refused; the identity in force stays.
    let stray = pki.issue_with("stray", Some(&id("api")), Validity::days(30));
    std::fs::copy(&stray.cert, &api.cert).unwrap();
    wait_until(|| async {
        b.metric("remora_tls_identity_reloads_total{result=\"rejected\"}")
            .await
            == Some(1.0)
    })
    .await;
    let after = tls_connect(b.inbound(), cfg.clone()).await.unwrap();
    assert_eq!(server_expiry(&after), second);
    assert_eq!(tls_get(b.inbound(), cfg, "/3").await.unwrap().status, 200);
    assert_eq!(h1_get(&mut live, "/4", &[]).await.unwrap().status, 200);
}

#[tokio::test]
async fn outbound_identity_rotation_applies_to_new_connections() {
    let pki = Pki::new("rotate-out");
    let (web, api) = (pki.issue("web"), pki.issue("api"));
    let app = echo("app").await;
    let b = sidecar_b(&pki, &api, app.addr, "tls: strict").await;
    let a = sidecar_a(&pki, &web, b.inbound(), &id("api"), "idle_timeout: 300ms").await;
    let r = get(a.outbound(), "svc", "/").await;
    assert!(r.saw("x-remora-client-id", &id("web")), "{}", r.body);

    // A's files now hold another identity; once the idle connection is gone, B sees it.
    let renamed = pki.issue_with("web-v2", Some(&id("web-v2")), Validity::days(10));
    std::fs::copy(&renamed.key, &web.key).unwrap();
    std::fs::copy(&renamed.cert, &web.cert).unwrap();
    wait_until(|| async {
        a.metric("remora_tls_identity_reloads_total{result=\"success\"}")
            .await
            == Some(1.0)
    })
    .await;
    wait_until(|| async {
        get(a.outbound(), "svc", "/")
            .await
            .saw("x-remora-client-id", &id("web-v2"))
    })
    .await;
}

#[tokio::test]
async fn openssl_s_client_with_a_client_certificate_interoperates() {
    let pki = Pki::new("openssl");
    let (web, api) = (pki.issue("web"), pki.issue("api"));
    let app = echo("app").await;
    let b = sidecar_b(&pki, &api, app.addr, "tls: strict").await;
    let addr = b.inbound();
    let anchors = pki.anchors();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("openssl")
            .args(["s_client", "-quiet", "-verify_return_error", "-connect"])
            .arg(addr.to_string())
            .arg("-cert")
            .arg(&web.cert)
            .arg("-key")
            .arg(&web.key)
            .arg("-CAfile")
            .arg(&anchors)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl is installed (.ci/run installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET /openssl HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("HTTP/1.1 200"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("x-remora-client-id: {}", id("web"))),
        "{stdout}"
    );
}

#[test]
fn tls_config_problems_name_the_field_and_the_file() {
    let pki = Pki::new("config");
    let other = Pki::new("config-other");
    let (web, api, stranger) = (pki.issue("web"), pki.issue("api"), other.issue("web"));
    let identity = |anchors: &Path, cert: &Path, key: &Path| {
        format!("version: 1\nidentity:\n  trust_anchors: {anchors:?}\n  certificate: {cert:?}\n  private_key: {key:?}\ninbound: {{ listen: 127.0.0.1:0 }}\n")
    };

    let missing = pki.dir.join("missing.crt");
    let e = config_error(&identity(&pki.anchors(), &missing, &web.key));
    assert!(
        e.starts_with(&format!(
            "f.yaml:4:16: identity.certificate: {}: cannot read",
            missing.display()
        )),
        "{e}"
    );

    let e = config_error(&identity(&pki.anchors(), &web.cert, &api.key));
    assert!(
        e.starts_with(&format!(
            "f.yaml:5:16: identity.private_key: {}: does not match the certificate",
            api.key.display()
        )),
        "{e}"
    );

    let e = config_error(&identity(&pki.anchors(), &stranger.cert, &stranger.key));
    assert!(
        e.contains("identity.certificate:") && e.contains("does not chain to the trust anchors"),
        "{e}"
    );

    let e = config_error(&identity(&web.cert, &web.cert, &web.key));
    assert!(
        e.contains("identity.certificate:") && e.contains("does not chain"),
        "{e}"
    );

    let text = r#"version: 1
inbound:
  listen: 127.0.0.1:0
  tls: strict
  authorize:
    - from: [frontend]
    - name: empty
    - from: ["spiffe://d/ns*"]
      paths: [api]
      methods: ["GE T"]
outbound: { listen: 127.0.0.1:0 }
services:
  s:
    endpoints: ["127.0.0.1:1"]
    tls: { identity: "spiffe://d/ns/*" }
  t:
    endpoints: ["127.0.0.1:1"]
    tls: { identity: "spiffe://shop.local/ns//a" }
"#;
    let e = config_error(text);
    let expect = [
        "f.yaml:4:8: inbound.tls: needs the `identity` section",
        "f.yaml:6:14: inbound.authorize[0].from[0]: \"frontend\" is not a SPIFFE ID",
        "f.yaml:7:7: inbound.authorize[1]: matches no caller",
        "f.yaml:8:14: inbound.authorize[2].from[0]: \"spiffe://d/ns*\": a wildcard is allowed only as a whole last segment",
        "f.yaml:9:15: inbound.authorize[2].paths[0]: \"api\" must start with \"/\"",
        "f.yaml:10:17: inbound.authorize[2].methods[0]: invalid method \"GE T\"",
        "f.yaml:15:10: services.s.tls: needs the `identity` section",
        "f.yaml:15:22: services.s.tls.identity: must be one exact SPIFFE ID",
        "f.yaml:18:10: services.t.tls: needs the `identity` section",
        "f.yaml:18:22: services.t.tls.identity: \"spiffe://shop.local/ns//a\": the path has an empty segment",
    ];
    let lines: Vec<&str> = e.lines().collect();
    for x in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(x)),
            "missing {x:?} in:\n{e}"
        );
    }
    assert_eq!(lines.len(), expect.len(), "{e}");

    let disabled =
        "version: 1\ninbound:\n  listen: 127.0.0.1:0\n  authorize:\n    - from: [\"*\"]\n";
    let e = config_error(disabled);
    assert!(e.contains("inbound.authorize[0].from: callers never have an identity while inbound.tls is disabled"), "{e}");
}

#[test]
fn remora_certs_makes_files_that_remora_check_accepts() {
    use std::process::Command;
    let dir = std::env::temp_dir().join(format!("remora-certs-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = env!("CARGO_BIN_EXE_remora");
    let out = Command::new(bin)
        .args(["certs", "--out"])
        .arg(dir.join("certs"))
        .args([&id("web"), &id("api")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "ca.crt", "ca.key", "web.crt", "web.key", "api.crt", "api.key",
    ] {
        assert!(dir.join("certs").join(f).exists(), "{f}");
    }
    // A second run reuses the CA: the new workload chains to the same anchors.
    let again = Command::new(bin)
        .args(["certs", "--out"])
        .arg(dir.join("certs"))
        .arg(id("db"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("CA reused"));

    // Relative paths are taken from the control file's folder.
    let config = dir.join("remora.yaml");
    let yaml = "version: 1\nidentity: { trust_anchors: certs/ca.crt, certificate: certs/db.crt, private_key: certs/db.key }\ninbound: { listen: 127.0.0.1:0, tls: strict }\n";
    std::fs::write(&config, yaml).unwrap();
    let check = Command::new(bin)
        .arg("check")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    std::fs::write(dir.join("certs/db.key"), "not a key").unwrap();
    let check = Command::new(bin)
        .arg("check")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("identity.private_key:") && stderr.contains("certs/db.key"),
        "{stderr}"
    );

    let bad = Command::new(bin)
        .args(["certs", "--out"])
        .arg(&dir)
        .arg("web")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `remora certs` per the SPIFFE spec: IDs it forbids are refused, two IDs never share a
/// file, a file holding another ID is not overwritten, the CA's broken part is named, and
/// ECDSA workload keys are for signatures only.
#[test]
fn remora_certs_follows_the_spiffe_spec_and_never_overwrites_another_identity() {
    use std::process::Command;
    let dir = std::env::temp_dir().join(format!("remora-certs-spec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = env!("CARGO_BIN_EXE_remora");
    let certs = |ids: &[&str]| {
        let out = Command::new(bin)
            .args(["certs", "--out"])
            .arg(&dir)
            .args(ids)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    for (bad, why) in [
        ("spiffe://A.local/ns/x", "trust domain"),
        ("spiffe://a.local/", "empty segment"),
        ("spiffe://a.local/../etc", "\"..\" segment"),
        ("spiffe://a.local/ns/./x", "\".\" segment"),
    ] {
        let (code, text) = certs(&[bad]);
        assert_eq!(code, Some(64), "{bad}: {text}");
        assert!(text.contains(why), "{bad}: {text}");
    }
    assert!(!dir.exists(), "nothing is written for a refused ID");

    // Two IDs with the same last segment, and one whose name would be the CA's.
    let (code, text) = certs(&[
        "spiffe://a.local/ns/x/sa/web",
        "spiffe://a.local/ns/y/sa/web",
        "spiffe://a.local/ca",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let held = |file: &str| {
        let pem = std::fs::read(dir.join(file)).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        remora::tls::verify::spiffe_id(&der).unwrap().to_string()
    };
    use rustls::pki_types::pem::PemObject;
    assert_eq!(held("ns-x-sa-web.crt"), "spiffe://a.local/ns/x/sa/web");
    assert_eq!(held("ns-y-sa-web.crt"), "spiffe://a.local/ns/y/sa/web");
    assert_eq!(held("a.local-ca.crt"), "spiffe://a.local/ca");
    assert!(!dir.join("web.crt").exists());

    // A later run that would reuse a name holding another ID stops; the same ID renews.
    let (code, text) = certs(&["spiffe://a.local/ns/z/sa/api"]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = certs(&["spiffe://a.local/ns/w/sa/api"]);
    assert_eq!(code, Some(64), "{text}");
    assert!(
        text.contains(
            "api.crt: holds spiffe://a.local/ns/z/sa/api, not spiffe://a.local/ns/w/sa/api"
        ),
        "{text}"
    );
    assert_eq!(held("api.crt"), "spiffe://a.local/ns/z/sa/api");
    let (code, text) = certs(&["spiffe://a.local/ns/z/sa/api"]);
    assert_eq!(code, Some(0), "{text}");

    // ECDSA: digitalSignature only.
    let pem = std::fs::read(dir.join("api.crt")).unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(
        usage.digital_signature() && !usage.key_encipherment(),
        "{usage:?}"
    );

    // The CA's broken part is the one named.
    let ca_key = std::fs::read(dir.join("ca.key")).unwrap();
    std::fs::write(dir.join("ca.key"), "garbage").unwrap();
    let (code, text) = certs(&["spiffe://a.local/ns/z/sa/db"]);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("ca.key: not a usable private key"), "{text}");
    std::fs::write(dir.join("ca.key"), &ca_key).unwrap();
    std::fs::write(dir.join("ca.crt"), "garbage").unwrap();
    let (code, text) = certs(&["spiffe://a.local/ns/z/sa/db"]);
    assert!(
        code == Some(64) && text.contains("ca.crt: not a usable CA certificate"),
        "{text}"
    );
    std::fs::remove_file(dir.join("ca.crt")).unwrap();
    let (code, text) = certs(&["spiffe://a.local/ns/z/sa/db"]);
    assert!(
        code == Some(64) && text.contains("ca.crt: missing, but"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's two-sidecar demo, on free ports: certificates made as README says, the shipped
/// files loaded from a copy of config/mtls/ next to them, and a request through both.
#[tokio::test]
async fn the_shipped_mtls_demo_works() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mtls");
    let dir = std::env::temp_dir().join(format!("remora-mtls-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ids = [
        "spiffe://demo.local/ns/shop/sa/web",
        "spiffe://demo.local/ns/shop/sa/api",
    ];
    remora::tls::certs::write_dev_certs(&dir.join("certs"), &ids.map(String::from), 1).unwrap();
    let copy = |name: &str, replace: &[(&str, String)]| {
        let mut text = std::fs::read_to_string(shipped.join(name)).unwrap();
        for (from, to) in replace {
            assert!(text.contains(from), "{name} has {from}");
            text = text.replace(from, to);
        }
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        remora::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        path
    };
    // Free ports instead of the fixed ones, and an echo app instead of the admin listener.
    let app = echo("app").await;
    let api_file = copy(
        "api.yaml",
        &[
            ("127.0.0.1:16091 }", "127.0.0.1:0 }".into()),
            ("listen: 127.0.0.1:16006", "listen: 127.0.0.1:0".into()),
            ("app: 127.0.0.1:16091", format!("app: \"{}\"", app.addr)),
        ],
    );
    let api = proxy_file(&api_file).await;
    let web_file = copy(
        "web.yaml",
        &[
            ("127.0.0.1:16090 }", "127.0.0.1:0 }".into()),
            ("listen: 127.0.0.1:16001", "listen: 127.0.0.1:0".into()),
            (
                "endpoints: [127.0.0.1:16006]",
                format!("endpoints: [\"{}\"]", api.inbound()),
            ),
        ],
    );
    let web = proxy_file(&web_file).await;
    let explained = std::process::Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(["explain", "-c"])
        .arg(&web_file)
        .args(["GET", "http://api/live"])
        .output()
        .unwrap();
    let explained = String::from_utf8_lossy(&explained.stdout);
    assert!(
        explained.contains(&format!("mTLS: the peer must be {}", ids[1])),
        "{explained}"
    );
    let ok = get(web.outbound(), "api", "/live").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.saw("x-remora-client-id", ids[0]), "{}", ok.body);
    let denied = get(web.outbound(), "api", "/metrics").await;
    assert_eq!(denied.status, 403);
    let plain = get(api.inbound(), "api", "/live").await;
    assert_eq!(plain.header("x-remora-error"), Some("mtls-required"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_sidecar_whose_certificate_the_server_refuses_gets_502() {
    let pki = Pki::new("refused");
    let other = Pki::new("refused-other");
    let api = pki.issue("api");
    let app = echo("app").await;
    let b = sidecar_b(&pki, &api, app.addr, "tls: strict").await;
    // A trusts both CAs (so it accepts B) but holds a certificate only the other CA issued.
    let bundle = pki.dir.join("both.crt");
    std::fs::write(
        &bundle,
        format!("{}{}", pki.ca.pem.cert_pem, other.ca.pem.cert_pem),
    )
    .unwrap();
    let stranger = other.issue("web");
    let mut yaml = format!(
        "identity: {{ trust_anchors: {bundle:?}, certificate: {:?}, private_key: {:?} }}\n",
        stranger.cert, stranger.key
    );
    yaml.push_str(&svc_config(
        &[b.inbound()],
        &[],
        &[&format!("tls: {{ identity: \"{}\" }}", id("api"))],
    ));
    let a = proxy(&yaml).await;
    let r = get(a.outbound(), "svc", "/").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.header("x-remora-error"), Some("upstream-reset"));
    assert_eq!(count(&b, &handshakes("inbound", "unknown-ca")).await, 1.0);
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn a_reload_changes_the_tls_mode_and_rules_for_new_connections() {
    let pki = Pki::new("reload");
    let (web, api) = (pki.issue("web"), pki.issue("api"));
    let app = echo("app").await;
    let config = pki.dir.join("b.yaml");
    let yaml = |extra: &str| {
        complete(&format!(
            "{}inbound:\n  listen: 127.0.0.1:0\n  app: \"{}\"\n{}",
            pki.identity(&api),
            app.addr,
            indent(extra)
        ))
    };
    std::fs::write(&config, yaml("tls: permissive")).unwrap();
    let b = proxy_file(&config).await;
    let mtls = client_config(&pki.anchors(), Some(&web), &id("api"), &[]);
    assert_eq!(get(b.inbound(), "b", "/").await.status, 200);

    let strict = format!(
        "tls: strict\nauthorize:\n  - from: [\"{}\"]\n    paths: [/only]\n",
        id("web")
    );
    std::fs::write(&config, yaml(&strict)).unwrap();
    let reload = Request::post(format!("http://{}/reload", b.admin))
        .body(Full::<Bytes>::default())
        .unwrap();
    let r = send(&h1_client(), reload).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("inbound"), "{}", r.body);
    let plain = get(b.inbound(), "b", "/").await;
    assert_eq!(plain.status, 400);
    assert_eq!(plain.header("x-remora-error"), Some("mtls-required"));
    assert_eq!(
        tls_get(b.inbound(), mtls.clone(), "/only")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        tls_get(b.inbound(), mtls, "/other").await.unwrap().status,
        403
    );
}

/// The real binary logs a distinct line for each certificate failure, with its reason.
#[tokio::test]
async fn the_binary_logs_each_handshake_failure_with_its_reason() {
    use std::io::BufRead;
    let pki = Pki::new("logs");
    let other = Pki::new("logs-other");
    let api = pki.issue("api");
    let app = echo("app").await;
    let config = pki.dir.join("b.yaml");
    std::fs::write(
        &config,
        complete(&format!(
            "log: {{ level: info, format: json }}\n{}inbound:\n  listen: 127.0.0.1:0\n  app: \"{}\"\n  tls: strict\n",
            pki.identity(&api),
            app.addr
        )),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(["run", "--workers", "1", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        lines
            .recv_timeout(DEADLINE)
            .expect("a log line before the deadline")
    };
    let inbound: SocketAddr = loop {
        let line = next();
        if line.contains("listener bound") && line.contains("\"direction\":\"inbound\"") {
            break line
                .split("\"addr\":\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
    };
    let cases = [
        (
            pki.issue_with("web-expired", Some(&id("web")), expired()),
            "expired",
            "the peer's certificate has expired",
        ),
        (
            pki.issue_with("web-future", Some(&id("web")), not_yet_valid()),
            "not-yet-valid",
            "the peer's certificate is not valid yet",
        ),
        (
            other.issue("web"),
            "unknown-ca",
            "the peer's certificate is not issued by a trusted CA",
        ),
        (
            pki.issue_with("web-nosan", None, Validity::days(1)),
            "missing-spiffe-id",
            "the peer's certificate has no SPIFFE ID (URI SAN)",
        ),
    ];
    for (cert, reason, message) in cases {
        let cfg = client_config(&pki.anchors(), Some(&cert), &id("api"), &[]);
        assert!(tls_get(inbound, cfg, "/").await.is_err(), "{reason}");
        let line = loop {
            let line = next();
            if line.contains("TLS handshake failed") {
                break line;
            }
        };
        assert!(
            line.contains(&format!("\"reason\":\"{reason}\"")),
            "{reason}: {line}"
        );
        assert!(line.contains(message), "{reason}: {line}");
        assert!(line.contains("\"level\":\"WARN\""), "{line}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn tls_callers_of_either_alpn_reach_apps_of_any_protocol_with_the_default_config() {
    // curl's default over TLS is ALPN h2; most apps speak HTTP/1.1 only, gRPC ones HTTP/2.
    let pki = Pki::new("alpn-matrix");
    let (web, api) = (pki.issue("web"), pki.issue("api"));
    for speaks in [Speaks::Http1, Speaks::Http2, Speaks::Both] {
        let app = echo_speaking("app", speaks).await;
        let b = sidecar_b(&pki, &api, app.addr, "tls: strict").await;
        for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
            for (method, path, body) in [("GET", "/get", ""), ("POST", "/post", "payload")] {
                let cfg = client_config(&pki.anchors(), Some(&web), &id("api"), &[alpn]);
                let stream = tls_connect(b.inbound(), cfg).await.unwrap();
                assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
                let io = TokioIo::new(stream);
                let builder = Request::builder().method(method).header("host", "b");
                let resp = if alpn == b"h2" {
                    let (mut sender, conn) =
                        hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                            .await
                            .unwrap();
                    tokio::spawn(conn);
                    let req = builder
                        .uri(format!("https://b{path}"))
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    read(sender.send_request(req).await.unwrap()).await
                } else {
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake(io).await.unwrap();
                    tokio::spawn(conn);
                    let req = builder
                        .uri(path)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    read(sender.send_request(req).await.unwrap()).await
                };
                let what = format!("{} → {speaks:?} {path}", String::from_utf8_lossy(alpn));
                assert_eq!(resp.status, 200, "{what}: {}", resp.body);
                assert!(
                    resp.saw("x-remora-client-id", &id("web")),
                    "{what}: {}",
                    resp.body
                );
            }
        }
        assert_eq!(app.requests(), 4, "{speaks:?}");
    }
}

#[tokio::test]
async fn http1_between_sidecars_shares_one_http2_connection_and_is_restored_for_the_app() {
    let pki = Pki::new("orig-proto");
    let (web, api) = (pki.issue("web"), pki.issue("api"));
    let app = echo_speaking("app", Speaks::Http1).await;
    let b = sidecar_b(&pki, &api, app.addr, "tls: strict").await;
    let a = sidecar_a(&pki, &web, b.inbound(), &id("api"), "").await;
    // Ten HTTP/1.1 callers, each on its own connection, some at once.
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let addr = a.outbound();
            tokio::spawn(async move {
                let client = h1_client();
                let req = Request::get(format!("http://{addr}/{i}"))
                    .header("host", "svc")
                    .header("connection", "close")
                    .body(Full::default())
                    .unwrap();
                send(&client, req).await
            })
        })
        .collect();
    for c in calls {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.header("x-version"),
            Some("HTTP/1.1"),
            "the app got HTTP/1.1"
        );
        assert!(!r.saw_header("x-remora-orig-proto"), "{}", r.body);
        assert!(r.saw("x-remora-client-id", &id("web")), "{}", r.body);
    }
    assert_eq!(app.requests(), 10);
    // One mTLS connection (one handshake each side) carried all ten.
    assert_eq!(count(&a, &handshakes("outbound", "success")).await, 1.0);
    assert_eq!(count(&b, &handshakes("inbound", "success")).await, 1.0);
}

#[tokio::test]
async fn a_forged_orig_proto_from_a_plaintext_caller_is_dropped() {
    let app = echo_speaking("app", Speaks::Both).await;
    let p = proxy(&format!(
        "inbound:\n  listen: 127.0.0.1:0\n  app: \"{}\"\n",
        app.addr
    ))
    .await;
    let req = Request::get("http://b/x")
        .header("x-remora-orig-proto", "HTTP/1.1")
        .body(Full::default())
        .unwrap();
    let r = send_h2(p.inbound(), req).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-version"),
        Some("HTTP/2.0"),
        "not honoured without mTLS"
    );
    assert!(!r.saw_header("x-remora-orig-proto"), "{}", r.body);
}

#[tokio::test]
async fn another_sidecars_opaque_tcp_over_mtls_reaches_the_app_when_authorized() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new("tcp-over-mtls");
    let (web, api, ops) = (pki.issue("web"), pki.issue("api"), pki.issue("ops"));
    let app = crate::tcp::tcp_app(b"").await;
    let b = sidecar_b(
        &pki,
        &api,
        app,
        &format!(
            "tls: strict\nauthorize:\n  - from: [\"{}\"]\n  - from: [\"{}\"]\n    paths: [/api/*]\n",
            id("web"),
            id("ops")
        ),
    )
    .await;
    let call = |who: Workload| {
        let (anchors, inbound) = (pki.anchors(), b.inbound());
        async move {
            let cfg = client_config(&anchors, Some(&who), &id("api"), &[b"remora-tcp/1"]);
            let mut s = tls_connect(inbound, cfg).await.unwrap();
            assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"remora-tcp/1"[..]));
            s.write_all(b"\x00opaque bytes").await.unwrap();
            s.flush().await.unwrap();
            let mut got = vec![0u8; 13];
            let read = tokio::time::timeout(DEADLINE, s.read_exact(&mut got)).await;
            matches!(read, Ok(Ok(_))).then_some(got)
        }
    };
    // web is allowed by an identity-only rule: its bytes reach the app and come back.
    assert_eq!(call(web).await.as_deref(), Some(&b"\x00opaque bytes"[..]));
    // ops is allowed only for HTTP paths, which say nothing about a byte stream.
    assert_eq!(call(ops).await, None);
    let conns = "remora_tcp_connections_total{direction=\"inbound\",route=\"\",service=\"app\"}";
    assert_eq!(count(&b, conns).await, 2.0);
    let denied = "remora_proxy_errors_total{direction=\"inbound\",reason=\"unauthorized\",route=\"\",service=\"app\"}";
    assert_eq!(count(&b, denied).await, 1.0);
}

#[tokio::test]
async fn a_caller_can_neither_erase_nor_alias_its_verified_identity() {
    let pki = Pki::new("identity-last");
    let (web, api) = (pki.issue("web"), pki.issue("api"));
    let app = echo("app").await;
    let b = sidecar_b(&pki, &api, app.addr, "tls: strict").await;
    let cfg = client_config(&pki.anchors(), Some(&web), &id("api"), &[b"http/1.1"]);
    let stream = tls_connect(b.inbound(), cfg).await.unwrap();
    let mut sender = h1_over(stream).await.unwrap();
    let forged = [
        // Listing the identity header as hop-by-hop used to remove the real one.
        ("connection", "keep-alive, x-remora-client-id"),
        ("x-remora-client-id", "spiffe://evil/forged"),
        // What CGI and WSGI apps read as the same header.
        ("x_remora_client_id", "spiffe://evil/forged"),
        ("x_forwarded_for", "kept: not ours"),
    ];
    let r = h1_get(&mut sender, "/who", &forged).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.saw("x-remora-client-id", &id("web")), "{}", r.body);
    assert!(!r.body.contains("spiffe://evil"), "{}", r.body);
    assert!(!r.saw_header("x_remora_client_id"), "{}", r.body);
    assert!(
        r.saw_header("x_forwarded_for"),
        "only aliases of ours go: {}",
        r.body
    );
}

#[tokio::test]
async fn an_idle_mtls_keep_alive_connection_is_parked_and_serves_on() {
    let pki = Pki::new("parked");
    let (web, api) = (pki.issue("web"), pki.issue("api"));
    let app = echo("app").await;
    let b = sidecar_b(&pki, &api, app.addr, "tls: strict").await;
    let config = client_config(&pki.anchors(), Some(&web), &id("api"), &[b"http/1.1"]);
    let stream = tls_connect(b.inbound(), config).await.unwrap();
    let mut sender = h1_over(stream).await.unwrap();
    let parked = "remora_connections_parked{direction=\"inbound\"}";
    for round in 0..3 {
        let r = h1_get(&mut sender, "/x", &[]).await.unwrap();
        assert_eq!(r.status, 200, "round {round}: {}", r.body);
        assert!(r.saw("x-remora-client-id", &id("web")), "{}", r.body);
        wait_until(|| async { b.metric(parked).await == Some(1.0) }).await;
    }
    // One TLS session throughout: parking kept the connection and its TLS state.
    assert_eq!(count(&b, &handshakes("inbound", "success")).await, 1.0);
}
