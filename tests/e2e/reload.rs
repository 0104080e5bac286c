//! Live reloads through the real listeners: every trigger, under load, with a broken file in
//! the middle; state kept for unchanged services; refused changes; an upgraded connection
//! surviving a reload.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

/// A control file in its own temporary folder.
struct ConfigFile {
    dir: PathBuf,
    generation: usize,
}

impl ConfigFile {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("remora-reload-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir, generation: 0 }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("remora.yaml")
    }

    /// Truncates and rewrites the file in place, as many editors do.
    fn write_in_place(&self, yaml: &str) {
        std::fs::write(self.path(), complete(yaml)).unwrap();
    }

    /// Writes a temporary file and renames it over the control file.
    fn rename_over(&mut self, yaml: &str) {
        self.generation += 1;
        let tmp = self.dir.join(format!(".remora.yaml.{}", self.generation));
        std::fs::write(&tmp, complete(yaml)).unwrap();
        std::fs::rename(tmp, self.path()).unwrap();
    }

    /// Lays the file out as a Kubernetes ConfigMap volume does: `remora.yaml` →
    /// `..data/remora.yaml`, `..data` → `..<generation>`.
    fn configmap(&mut self, yaml: &str) {
        self.swap_configmap(yaml);
        let _ = std::fs::remove_file(self.path());
        std::os::unix::fs::symlink("..data/remora.yaml", self.path()).unwrap();
    }

    /// Updates the ConfigMap the way the kubelet does: a new folder, then `..data` swapped to it
    /// by renaming a new symlink over it.
    fn swap_configmap(&mut self, yaml: &str) {
        self.generation += 1;
        let gen_dir = format!("..gen{}", self.generation);
        std::fs::create_dir_all(self.dir.join(&gen_dir)).unwrap();
        std::fs::write(self.dir.join(&gen_dir).join("remora.yaml"), complete(yaml)).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&gen_dir, &tmp).unwrap();
        std::fs::rename(tmp, self.dir.join("..data")).unwrap();
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A config file of `yaml` (written by rename) and a proxy started from it.
async fn started(name: &str, yaml: &str) -> (ConfigFile, Proxy) {
    let mut cfg = ConfigFile::new(name);
    cfg.rename_over(yaml);
    let p = proxy_file(&cfg.path()).await;
    (cfg, p)
}

fn routes_to(service: &str, a: &Upstream, b: &Upstream, extra_route: &str) -> String {
    format!(
        r#"
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: main
      match: {{ host: svc }}
      backends: [{{ service: {service} }}]
{extra_route}
services:
  a: {{ endpoints: ["{}"] }}
  b: {{ endpoints: ["{}"] }}
"#,
        a.addr, b.addr
    )
}

async fn post_reload(admin: std::net::SocketAddr) -> Resp {
    let req = Request::post(format!("http://{admin}/reload"))
        .body(Full::<Bytes>::default())
        .unwrap();
    send(&h1_client(), req).await
}

async fn upstream_of(p: &Proxy) -> String {
    get(p.outbound(), "svc", "/")
        .await
        .header("x-upstream")
        .unwrap_or("")
        .to_owned()
}

/// Waits until requests reach `name`.
async fn until_served_by(p: &Proxy, name: &str) {
    wait_until(|| async { upstream_of(p).await == name }).await;
}

async fn reload_count(p: &Proxy, result: &str) -> f64 {
    let sample = format!(r#"remora_config_reloads_total{{result="{result}"}}"#);
    p.metric(&sample).await.unwrap_or(0.0)
}

/// Counts answers per upstream and anything that was not a 200.
#[derive(Default)]
struct Tally {
    ok_a: AtomicUsize,
    ok_b: AtomicUsize,
    failed: AtomicUsize,
}

impl Tally {
    fn record(&self, status: u16, upstream: Option<&str>) {
        match (status, upstream) {
            (200, Some("a")) => self.ok_a.fetch_add(1, Ordering::Relaxed),
            (200, Some("b")) => self.ok_b.fetch_add(1, Ordering::Relaxed),
            _ => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Sends requests on one keep-alive connection until `stop` (at most `cap` of them).
async fn load_loop(
    out: std::net::SocketAddr,
    http2: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    cap: usize,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let stream = tokio::net::TcpStream::connect(out).await.unwrap();
    let io = TokioIo::new(stream);
    let mut h1 = None;
    let mut h2 = None;
    if http2 {
        let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(c);
        h2 = Some(s);
    } else {
        let (s, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(c);
        h1 = Some(s);
    }
    for _ in 0..cap {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let req = Request::get("http://svc/")
            .body(Full::<Bytes>::default())
            .unwrap();
        let resp = match (&mut h1, &mut h2) {
            (Some(s), _) => {
                s.ready().await.expect("keep-alive connection stays open");
                s.send_request(req).await
            }
            (_, Some(s)) => s.send_request(req).await,
            _ => unreachable!(),
        };
        match resp {
            Ok(r) => {
                let (parts, body) = r.into_parts();
                let _ = http_body_util::BodyExt::collect(body).await;
                tally.record(
                    parts.status.as_u16(),
                    parts
                        .headers
                        .get("x-upstream")
                        .and_then(|v| v.to_str().ok()),
                );
            }
            Err(_) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_nothing() {
    let (a, b) = (echo("a").await, echo("b").await);
    let mut cfg = ConfigFile::new("load");
    cfg.configmap(&routes_to("a", &a, &b, ""));
    let p = proxy_file(&cfg.path()).await;
    let out = p.outbound();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let loads: Vec<_> = [false, false, true]
        .into_iter()
        .map(|h2| tokio::spawn(load_loop(out, h2, stop.clone(), tally.clone(), 200_000)))
        .collect();

    // 1. ConfigMap symlink swap.
    cfg.swap_configmap(&routes_to("b", &a, &b, ""));
    until_served_by(&p, "b").await;
    // 2. A broken file: refused, counted, and the running config keeps serving.
    cfg.swap_configmap("outbound: { listen: 127.0.0.1:0, routes: [ { name: x, backends: [ { service: nope } ] } ] }\n");
    wait_until(|| async { reload_count(&p, "failure").await >= 1.0 }).await;
    assert_eq!(upstream_of(&p).await, "b");
    // 3. POST /reload after a fix.
    cfg.swap_configmap(&routes_to("a", &a, &b, ""));
    let r = post_reload(p.admin).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(upstream_of(&p).await, "a");

    // The same through a plain file: rename-over, then an in-place write.
    let mut plain = ConfigFile::new("load-plain");
    plain.rename_over(&routes_to("a", &a, &b, ""));
    let p2 = proxy_file(&plain.path()).await;
    plain.rename_over(&routes_to("b", &a, &b, ""));
    until_served_by(&p2, "b").await;
    plain.write_in_place(&routes_to("a", &a, &b, ""));
    until_served_by(&p2, "a").await;
    // The reload is counted just after it is put in force: wait for the count, then check
    // that the in-place write was read once, not also half-written.
    wait_until(|| async { reload_count(&p2, "success").await >= 2.0 }).await;
    assert_eq!(reload_count(&p2, "success").await, 2.0);

    stop.store(true, Ordering::Relaxed);
    for l in loads {
        tokio::time::timeout(DEADLINE, l).await.unwrap().unwrap();
    }
    let (ok_a, ok_b, failed) = (
        tally.ok_a.load(Ordering::Relaxed),
        tally.ok_b.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    assert_eq!(
        failed, 0,
        "requests failed during reloads ({ok_a} from a, {ok_b} from b)"
    );
    assert!(
        ok_a > 0 && ok_b > 0,
        "traffic followed the reloads: {ok_a} from a, {ok_b} from b"
    );
    assert!(reload_count(&p, "success").await >= 2.0);
    assert_eq!(reload_count(&p, "failure").await, 1.0);
}

#[tokio::test]
async fn a_broken_file_changes_nothing_and_says_why() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (mut cfg, p) = started("broken", &routes_to("a", &a, &b, "")).await;
    let before = get(p.admin, "a", "/config").await.body;
    let last_ok = "remora_config_last_reload_successful";
    assert_eq!(p.metric(last_ok).await, Some(1.0), "loaded at start");

    cfg.rename_over("outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      backends: [{ service: missing }]\n");
    let r = post_reload(p.admin).await;
    assert_eq!(r.status, 400);
    assert!(
        r.body
            .contains(":7:29: outbound.routes[0].backends[0].service: unknown service \"missing\""),
        "{}",
        r.body
    );
    let status = get(p.admin, "a", "/reload").await;
    assert_eq!(status.status, 500);
    assert!(
        status.body.contains("refused") && status.body.contains("unknown service"),
        "{}",
        status.body
    );
    assert_eq!(
        get(p.admin, "a", "/config").await.body,
        before,
        "/config unchanged"
    );
    assert_eq!(get(p.admin, "a", "/ready").await.status, 200);
    assert_eq!(upstream_of(&p).await, "a");
    assert_eq!(reload_count(&p, "failure").await, 1.0);
    assert_eq!(p.metric(last_ok).await, Some(0.0), "the last reload failed");

    cfg.rename_over(&routes_to("b", &a, &b, ""));
    assert_eq!(post_reload(p.admin).await.status, 200);
    assert_eq!(
        p.metric(last_ok).await,
        Some(1.0),
        "the last reload succeeded"
    );
}

#[tokio::test]
async fn reload_reports_what_changed_and_keeps_unchanged_services() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (mut cfg, p) = started("state", &routes_to("a", &a, &b, "")).await;
    assert_eq!(upstream_of(&p).await, "a");
    assert_eq!(a.connections(), 1);

    // A new route; service a is untouched, so its pooled connection is kept.
    let extra = "    - name: extra\n      match: { host: other }\n      direct_response: { status: 200, body: hi }\n";
    cfg.rename_over(&routes_to("a", &a, &b, extra));
    let r = post_reload(p.admin).await;
    assert_eq!(r.body, "reloaded: routes added: extra\n");
    assert_eq!(get(p.outbound(), "other", "/").await.body, "hi");
    assert_eq!(upstream_of(&p).await, "a");
    assert_eq!(a.connections(), 1, "the unchanged service kept its pool");

    // Service a changes: it starts over with fresh state.
    let changed = routes_to("a", &a, &b, extra).replace(
        &format!("a: {{ endpoints: [\"{}\"] }}", a.addr),
        &format!("a: {{ endpoints: [\"{}\"], connect_timeout: 2s }}", a.addr),
    );
    cfg.rename_over(&changed);
    let r = post_reload(p.admin).await;
    assert_eq!(r.body, "reloaded: services changed: a\n");
    assert_eq!(upstream_of(&p).await, "a");
    assert_eq!(a.connections(), 2, "a changed service gets fresh pools");

    cfg.rename_over(&routes_to("a", &a, &b, ""));
    assert_eq!(
        post_reload(p.admin).await.body,
        "reloaded: routes removed: extra; services changed: a\n"
    );
    assert_eq!(
        get(p.outbound(), "other", "/").await.status,
        502,
        "unmatched requests pass through again"
    );
}

#[tokio::test]
async fn changes_that_need_a_restart_are_refused() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (mut cfg, p) = started("restart", &routes_to("a", &a, &b, "")).await;
    cfg.rename_over(&format!(
        "log: {{ level: debug }}\n{}",
        routes_to("b", &a, &b, "")
    ));
    let r = post_reload(p.admin).await;
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("need a restart") && r.body.contains("log.level"),
        "{}",
        r.body
    );
    assert_eq!(
        upstream_of(&p).await,
        "a",
        "nothing from the refused file applies"
    );
}

#[tokio::test]
async fn an_upgraded_connection_survives_a_reload() {
    let (ws, b) = (ws_echo().await, echo("b").await);
    let (mut cfg, p) = started("ws", &routes_to("a", &ws, &b, "")).await;
    let (_, mut io) = open_upgrade(p.outbound(), "svc").await;
    echo_through(&mut io, b"before").await;

    // Route svc elsewhere and drop the service the socket went through.
    cfg.rename_over(&routes_to("b", &b, &b, ""));
    assert_eq!(post_reload(p.admin).await.status, 200);
    assert_eq!(upstream_of(&p).await, "b");
    echo_through(&mut io, b"still here").await;
}

#[tokio::test]
async fn proxies_started_from_text_cannot_reload() {
    let p = proxy("outbound: { listen: 127.0.0.1:0 }\n").await;
    assert_eq!(post_reload(p.admin).await.status, 409);
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_listener_moves_to_a_new_address_without_dropping_open_connections() {
    use hyper_util::rt::TokioIo;
    let (a, b) = (echo("a").await, echo("b").await);
    let (mut cfg, p) = started("move", &routes_to("a", &a, &b, "")).await;
    let old = p.outbound();

    // A keep-alive connection opened on the old listener.
    let stream = tokio::net::TcpStream::connect(old).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = || {
        Request::get("http://svc/")
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    assert_eq!(sender.send_request(req()).await.unwrap().status(), 200);

    let port = free_port();
    let moved = routes_to("a", &a, &b, "")
        .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"));
    cfg.rename_over(&moved);
    let r = post_reload(p.admin).await;
    assert_eq!(
        r.body,
        format!("reloaded: changed: outbound listener on 127.0.0.1:{port}\n")
    );

    let new: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get(new, "svc", "/").await.header("x-upstream"), Some("a"));
    // The open connection still works; the old address takes no new ones.
    sender.ready().await.unwrap();
    assert_eq!(sender.send_request(req()).await.unwrap().status(), 200);
    wait_until(|| async { tokio::net::TcpStream::connect(old).await.is_err() }).await;

    // An address that cannot be bound refuses the reload and changes nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let blocked = routes_to("b", &a, &b, "").replace(
        "listen: 127.0.0.1:0",
        &format!("listen: {}", taken.local_addr().unwrap()),
    );
    cfg.rename_over(&blocked);
    let r = post_reload(p.admin).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("cannot listen on"), "{}", r.body);
    assert_eq!(
        get(new, "svc", "/").await.header("x-upstream"),
        Some("a"),
        "still the old config"
    );
}

#[tokio::test]
async fn new_limits_apply_to_new_connections() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (mut cfg, p) = started("limits", &routes_to("a", &a, &b, "")).await;
    let big = "x".repeat(12_000);
    assert_eq!(
        get_with(p.outbound(), "svc", "/", &[("x-big", &big)])
            .await
            .status,
        200
    );

    cfg.rename_over(&format!(
        "limits: {{ max_header_bytes: 8192 }}\n{}",
        routes_to("a", &a, &b, "")
    ));
    let r = post_reload(p.admin).await;
    assert_eq!(r.body, "reloaded: changed: outbound limits\n");
    let req = format!("GET / HTTP/1.1\r\nhost: svc\r\nx-big: {big}\r\n\r\n");
    let out = raw(p.outbound(), req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(get(p.outbound(), "svc", "/").await.status, 200);
}

#[tokio::test]
async fn a_reload_can_add_the_inbound_listener() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (mut cfg, p) = started("add-inbound", &routes_to("a", &a, &b, "")).await;
    let port = free_port();
    cfg.rename_over(&format!(
        "inbound: {{ listen: \"127.0.0.1:{port}\", app: \"{}\" }}\n{}",
        b.addr,
        routes_to("a", &a, &b, "")
    ));
    let r = post_reload(p.admin).await;
    assert!(
        r.body
            .contains(&format!("inbound listener on 127.0.0.1:{port}")),
        "{}",
        r.body
    );
    let inbound: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        get(inbound, "app", "/").await.header("x-upstream"),
        Some("b")
    );
}

#[tokio::test]
async fn a_rate_limit_keeps_its_state_across_reloads_that_do_not_change_it() {
    let (a, b) = (echo("a").await, echo("b").await);
    let limited = "    - name: limited\n      match: { host: lim }\n      direct_response: { status: 200 }\n      rate_limit: { requests_per_second: 1, burst: 2 }\n";
    let (mut cfg, p) = started("limiter", &routes_to("a", &a, &b, limited)).await;
    for _ in 0..2 {
        assert_eq!(get(p.outbound(), "lim", "/").await.status, 200);
    }
    assert_eq!(get(p.outbound(), "lim", "/").await.status, 429);

    // Another route changes: the bucket stays empty.
    cfg.rename_over(&routes_to("b", &a, &b, limited));
    assert_eq!(post_reload(p.admin).await.status, 200);
    assert_eq!(
        get(p.outbound(), "lim", "/").await.status,
        429,
        "state kept"
    );

    // The limit itself changes: a fresh bucket.
    cfg.rename_over(&routes_to(
        "b",
        &a,
        &b,
        &limited.replace("burst: 2", "burst: 5"),
    ));
    assert_eq!(post_reload(p.admin).await.status, 200);
    assert_eq!(
        get(p.outbound(), "lim", "/").await.status,
        200,
        "new limit, new bucket"
    );
}

#[tokio::test]
async fn an_ejected_endpoint_stays_ejected_across_a_reload_that_leaves_its_service() {
    let good = echo("good").await;
    let bad = status_seq(&[500]).await;
    let other = echo("other").await;
    let config = |extra: &str| {
        format!(
            r#"
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: main
      match: {{ host: svc }}
      backends: [{{ service: s }}]
{extra}
services:
  s:
    endpoints: ["{}", "{}"]
    load_balancer: round_robin
    outlier_detection: {{ consecutive_failures: 2, base_ejection: 1m, max_ejected_percent: 50 }}
  other: {{ endpoints: ["{}"] }}
"#,
            good.addr, bad.addr, other.addr
        )
    };
    let (mut cfg, p) = started("ejected", &config("")).await;
    for _ in 0..10 {
        get(p.outbound(), "svc", "/").await;
    }
    assert_eq!(bad.requests(), 2, "ejected");

    let extra =
        "    - name: more\n      match: { host: more }\n      backends: [{ service: other }]\n";
    cfg.rename_over(&config(extra));
    assert_eq!(
        post_reload(p.admin).await.body,
        "reloaded: routes added: more\n"
    );
    for _ in 0..10 {
        assert_eq!(get(p.outbound(), "svc", "/").await.status, 200);
    }
    assert_eq!(bad.requests(), 2, "still ejected after the reload");
}

/// `POST /reload?dry_run=true` says what a reload of the file would change, field by field,
/// and applies nothing: here the file also changes the log level, which needs a restart, so
/// the poller's own reload is refused too and the running config stays put.
#[tokio::test]
async fn a_dry_run_reload_shows_the_changes_and_applies_nothing() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (mut cfg, p) = started("dry-run", &routes_to("a", &a, &b, "")).await;
    let dry_run = |admin: std::net::SocketAddr| async move {
        let req = Request::post(format!("http://{admin}/reload?dry_run=true"))
            .body(Full::<Bytes>::default())
            .unwrap();
        send(&h1_client(), req).await
    };
    let r = dry_run(p.admin).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "a reload would apply:\nno changes\n");

    let extra =
        "    - name: extra\n      match: { host: extra }\n      direct_response: { status: 204 }\n";
    let changed =
        routes_to("b", &a, &b, extra).replace("outbound:", "log: { level: debug }\noutbound:");
    cfg.rename_over(&changed);
    let r = dry_run(p.admin).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body
            .starts_with("a reload would be refused: changes need a restart: log"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("log: changed\n  level: info -> debug\n"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("route main: changed\n  backends[0].service: a -> b\n"),
        "{}",
        r.body
    );
    assert!(r.body.contains("route extra: added\n"), "{}", r.body);
    // Nothing was applied.
    assert_eq!(upstream_of(&p).await, "a");

    cfg.rename_over("outbound: { listen: nonsense }\n");
    let r = dry_run(p.admin).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("outbound.listen: invalid socket address"),
        "{}",
        r.body
    );
    assert_eq!(upstream_of(&p).await, "a");
}
