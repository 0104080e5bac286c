//! Route caching (RFC 9111) through the real outbound listener: hits answered without the
//! origin, `Age`, `no-store`, `Vary`, revalidation with a 304, HEAD from a stored GET,
//! invalidation by an unsafe method, `only-if-cached`, the object size limit, and metrics.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;

use crate::support::*;

/// An origin whose answers depend on the path; each body says how many requests it had.
async fn origin() -> (Upstream, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let up = upstream_fn(move |req| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let path = req.uri().path().to_owned();
            let b = Response::builder();
            let body = format!("n={n}");
            match path.as_str() {
                "/fresh" => b.header("cache-control", "max-age=60"),
                "/slow" => {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    b.header("cache-control", "max-age=60")
                }
                "/nostore" => b.header("cache-control", "no-store"),
                // A POST's answer that is the resource's new representation.
                "/doc" if req.method() == http::Method::POST => b
                    .header("cache-control", "max-age=60")
                    .header("content-location", "/doc"),
                "/swr" => b.header("cache-control", "max-age=0, stale-while-revalidate=60"),
                // Not kept alive: once the origin is gone, nothing reaches it.
                "/stale" => b
                    .header("cache-control", "max-age=0")
                    .header("connection", "close"),
                "/vary" => {
                    let lang = req
                        .headers()
                        .get("accept-language")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    return b
                        .header("cache-control", "max-age=60")
                        .header("vary", "Accept-Language")
                        .body(TestBody::text(format!("{lang} n={n}")))
                        .unwrap();
                }
                "/etag"
                    if req
                        .headers()
                        .get("if-none-match")
                        .is_some_and(|v| v == "\"v1\"") =>
                {
                    return b
                        .status(304)
                        .header("etag", "\"v1\"")
                        .header("cache-control", "max-age=0")
                        .header("x-fresh-header", "updated")
                        .body(TestBody::empty())
                        .unwrap();
                }
                "/etag" => b
                    .header("etag", "\"v1\"")
                    .header("cache-control", "max-age=0"),
                "/big" => {
                    return b
                        .header("cache-control", "max-age=60")
                        .body(TestBody::text("x".repeat(4096)))
                        .unwrap()
                }
                _ => b,
            }
            .body(TestBody::text(body))
            .unwrap()
        }
    })
    .await;
    (up, count)
}

fn with(
    method: &str,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", "svc");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Full::default()).unwrap()
}

#[tokio::test]
async fn a_caching_route_answers_from_the_store_as_rfc_9111_says() {
    let (up, count) = origin().await;
    let p = proxy(&svc_config(
        &[up.addr],
        &["cache: { max_size: 1MiB, max_object_size: 1KiB }"],
        &[],
    ))
    .await;
    let c = h1_client();
    let out = p.outbound();
    let go = |method: &'static str,
              path: &'static str,
              headers: &'static [(&'static str, &'static str)]| {
        let c = c.clone();
        async move { send(&c, with(method, out, path, headers)).await }
    };

    // A fresh response is stored; the next request is a hit, with its Age.
    let first = go("GET", "/fresh", &[]).await;
    assert_eq!((first.status.as_u16(), first.body.as_str()), (200, "n=1"));
    let hit = go("GET", "/fresh", &[]).await;
    assert_eq!(hit.body, "n=1", "answered from the cache");
    assert!(
        hit.header("age")
            .is_some_and(|a| a.parse::<u64>().unwrap() <= 1),
        "{:?}",
        hit.headers
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // HEAD from the stored GET.
    let head = go("HEAD", "/fresh", &[]).await;
    assert_eq!((head.status.as_u16(), head.body.as_str()), (200, ""));
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // The client's no-cache goes to the origin.
    assert_eq!(
        go("GET", "/fresh", &[("cache-control", "no-cache")])
            .await
            .body,
        "n=2"
    );

    // no-store is never stored.
    assert_eq!(go("GET", "/nostore", &[]).await.body, "n=3");
    assert_eq!(go("GET", "/nostore", &[]).await.body, "n=4");

    // Vary: one variant per Accept-Language.
    assert_eq!(
        go("GET", "/vary", &[("accept-language", "en")]).await.body,
        "en n=5"
    );
    assert_eq!(
        go("GET", "/vary", &[("accept-language", "de")]).await.body,
        "de n=6"
    );
    assert_eq!(
        go("GET", "/vary", &[("accept-language", "en")]).await.body,
        "en n=5"
    );

    // Revalidation: max-age=0 with an ETag; the origin's 304 refreshes the stored headers.
    assert_eq!(go("GET", "/etag", &[]).await.body, "n=7");
    let again = go("GET", "/etag", &[]).await;
    assert_eq!((again.status.as_u16(), again.body.as_str()), (200, "n=7"));
    assert_eq!(again.header("x-fresh-header"), Some("updated"));
    assert_eq!(count.load(Ordering::SeqCst), 8, "one conditional request");
    // A caller's own conditional request on a stale stored response: the cache revalidates
    // with its own validators, then answers the caller's condition from what it holds.
    let cond = go("GET", "/etag", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(cond.status.as_u16(), 304);
    let older = go("GET", "/etag", &[("if-none-match", "\"v0\"")]).await;
    assert_eq!((older.status.as_u16(), older.body.as_str()), (200, "n=7"));
    assert_eq!(count.load(Ordering::SeqCst), 10, "each one revalidated");

    // Larger than max_object_size: streamed through, not stored.
    assert_eq!(go("GET", "/big", &[]).await.body.len(), 4096);
    let before = count.load(Ordering::SeqCst);
    go("GET", "/big", &[]).await;
    assert_eq!(count.load(Ordering::SeqCst), before + 1);

    // An unsafe method invalidates what it names.
    assert_eq!(go("GET", "/fresh", &[]).await.body, "n=2");
    let n = count.load(Ordering::SeqCst);
    go("POST", "/fresh", &[]).await;
    assert_eq!(go("GET", "/fresh", &[]).await.body, format!("n={}", n + 2));

    // only-if-cached: what is stored, or 504 without asking the origin.
    let n = count.load(Ordering::SeqCst);
    assert_eq!(
        go("GET", "/never", &[("cache-control", "only-if-cached")])
            .await
            .status
            .as_u16(),
        504
    );
    assert_eq!(count.load(Ordering::SeqCst), n);

    let m = |result: &str| format!(r#"remora_cache_requests_total{{result="{result}",route="r"}}"#);
    assert!(p.metric(&m("hit")).await.unwrap() >= 3.0);
    assert!(p.metric(&m("miss")).await.unwrap() >= 8.0);
    assert_eq!(p.metric(&m("revalidated")).await, Some(3.0));
    assert_eq!(p.metric(&m("uncacheable")).await, Some(1.0));
    assert!(p.metric(r#"remora_cache_bytes{route="r"}"#).await.unwrap() > 0.0);
}

/// Byte ranges (curl's `-r`, a resumed download) are cut from a stored whole response; a
/// range past its end is a 416. Language tags in a selecting header are compared without
/// case. A POST's response that names itself with `Content-Location` answers later GETs.
#[tokio::test]
async fn ranges_language_case_and_post_representations_come_from_the_store() {
    let (up, count) = origin().await;
    let p = proxy(&svc_config(&[up.addr], &["cache: {}"], &[])).await;
    let c = h1_client();
    let out = p.outbound();
    assert_eq!(send(&c, with("GET", out, "/fresh", &[])).await.body, "n=1");
    let curl = |range: &'static str| {
        tokio::task::spawn_blocking(move || {
            let url = format!("http://{out}/fresh");
            let o = std::process::Command::new("curl")
                .args(["-sS", "--max-time", "5", "-H", "host: svc", "-r", range])
                .args(["-w", " %{http_code}", &url])
                .output()
                .expect("curl runs");
            String::from_utf8(o.stdout).unwrap()
        })
    };
    assert_eq!(curl("0-0").await.unwrap(), "n 206");
    assert_eq!(curl("-1").await.unwrap(), "1 206");
    assert_eq!(curl("1-").await.unwrap(), "=1 206");
    let part = send(&c, with("GET", out, "/fresh", &[("range", "bytes=1-1")])).await;
    assert_eq!(
        (part.status.as_u16(), part.body.as_str()),
        (206, "="),
        "{:?}",
        part.headers
    );
    assert_eq!(part.header("content-range"), Some("bytes 1-1/3"));
    let past = send(&c, with("GET", out, "/fresh", &[("range", "bytes=7-")])).await;
    assert_eq!(past.status.as_u16(), 416);
    assert_eq!(past.header("content-range"), Some("bytes */3"));
    // An If-Range for another version: the whole (stored) response.
    let other = [("range", "bytes=0-0"), ("if-range", "\"other\"")];
    let whole = send(&c, with("GET", out, "/fresh", &other)).await;
    assert_eq!((whole.status.as_u16(), whole.body.as_str()), (200, "n=1"));
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "every range from the store"
    );

    let lang = |l: &'static str| with("GET", out, "/vary", &[("accept-language", l)]);
    assert_eq!(send(&c, lang("en-GB, de")).await.body, "en-GB, de n=2");
    assert_eq!(send(&c, lang("EN-gb,DE")).await.body, "en-GB, de n=2");

    let posted = send(&c, with("POST", out, "/doc", &[])).await;
    assert_eq!(posted.body, "n=3");
    let doc = send(&c, with("GET", out, "/doc", &[])).await;
    assert_eq!(doc.body, "n=3", "the POST's answer, stored");
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

/// Concurrent misses for one key make one upstream request; `POST /cache/purge` drops
/// stored responses by route and path prefix (loopback only).
#[tokio::test]
async fn concurrent_misses_are_collapsed_and_purges_drop_what_they_name() {
    let (up, count) = origin().await;
    let p = proxy(&svc_config(&[up.addr], &["cache: {}"], &[])).await;
    let c = h1_client();
    let out = p.outbound();
    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { send(&c, with("GET", out, "/slow", &[])).await })
        })
        .collect();
    for w in waiting {
        let r = w.await.unwrap();
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "n=1"));
    }
    assert_eq!(count.load(Ordering::SeqCst), 1, "eight misses, one fetch");
    let coalesced = p
        .metric(r#"remora_cache_requests_total{result="coalesced",route="r"}"#)
        .await;
    assert_eq!(coalesced, Some(7.0));

    assert_eq!(send(&c, with("GET", out, "/fresh", &[])).await.body, "n=2");
    let purge = |query: &'static str| {
        let c = c.clone();
        let admin = p.admin;
        async move {
            let req = Request::post(format!("http://{admin}/cache/purge{query}"))
                .body(Full::default())
                .unwrap();
            send(&c, req).await
        }
    };
    let r = purge("?route=r&prefix=/fresh").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "r: 1 purged\n"));
    assert_eq!(send(&c, with("GET", out, "/fresh", &[])).await.body, "n=3");
    assert_eq!(
        send(&c, with("GET", out, "/slow", &[])).await.body,
        "n=1",
        "not under /fresh"
    );
    assert_eq!(purge("").await.body, "r: 2 purged\n");
    assert_eq!(purge("?route=nope").await.status.as_u16(), 404);
    assert_eq!(purge("?colour=red").await.status.as_u16(), 400);
}

/// `stale-while-revalidate` answers at once with the stale response and refreshes it in the
/// background; an unreachable origin is answered with a stale response the origin did not
/// forbid (a disconnected cache, RFC 9111, 4.2.4).
#[tokio::test]
async fn stale_responses_while_revalidating_and_while_the_origin_is_down() {
    let (up, count) = origin().await;
    let p = proxy(&svc_config(&[up.addr], &["cache: {}"], &[])).await;
    let c = h1_client();
    let out = p.outbound();
    assert_eq!(send(&c, with("GET", out, "/swr", &[])).await.body, "n=1");
    // Stale at once (max-age=0) but within stale-while-revalidate: answered from the store.
    assert_eq!(send(&c, with("GET", out, "/swr", &[])).await.body, "n=1");
    // ... while the refresh reached the origin and replaced it.
    wait_until(|| async { count.load(Ordering::SeqCst) >= 2 }).await;
    wait_until(|| {
        let c = c.clone();
        async move { send(&c, with("GET", out, "/swr", &[])).await.body != "n=1" }
    })
    .await;

    // The origin goes away: the stored (stale) response answers.
    let stored = send(&c, with("GET", out, "/stale", &[])).await.body;
    drop(up);
    wait_until(|| {
        let c = c.clone();
        let stored = stored.clone();
        async move {
            let r = send(&c, with("GET", out, "/stale", &[])).await;
            r.status == 200 && r.body == stored
        }
    })
    .await;
    // ... but not to a client that asked for no-cache.
    let r = send(
        &c,
        with("GET", out, "/stale", &[("cache-control", "no-cache")]),
    )
    .await;
    assert_eq!(
        r.header("x-remora-error"),
        Some("upstream-connect-failure"),
        "{:?}",
        r.headers
    );
}

/// The HTTP caching test suite behind cache-tests.fyi (`http-cache-tests` 0.4.5, installed
/// by tests/install-deps.sh), run against a caching route: its own origin server behind
/// Remora, its client in front. README reports these counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_caching_test_suite_passes_what_readme_says() {
    use std::process::{Command, Stdio};
    let suite = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/http-cache-tests/node_modules/http-cache-tests");
    assert!(
        suite.join("cli.mjs").exists(),
        "{} is missing: run tests/install-deps.sh",
        suite.display()
    );
    let dir = std::env::temp_dir().join(format!("remora-cache-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let npm_env = |c: &mut Command| {
        c.current_dir(&suite)
            .env("npm_config_protocol", "http")
            .env("npm_config_port", port.to_string())
            .env("npm_config_pidfile", dir.join("server.pid"))
            .env("npm_config_id", "")
            .env("npm_package_config_id", "");
    };
    let mut server = Command::new("node");
    npm_env(&mut server);
    let server = Kill(
        server
            .arg("server/server.mjs")
            .stdout(Stdio::null())
            .spawn()
            .expect("node runs the suite's origin server"),
    );
    let origin: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(|| async move { tokio::net::TcpStream::connect(origin).await.is_ok() }).await;
    // Every request, whatever its host, to the suite's origin.
    let p = proxy(&format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: cached\n      backends: [{{ service: origin }}]\n      cache: {{ max_size: 64MiB, max_object_size: 1MiB }}\nservices:\n  origin: {{ endpoints: [\"{origin}\"] }}\n"
    ))
    .await;
    let mut client = Command::new("node");
    npm_env(&mut client);
    let results = tokio::task::spawn_blocking(move || {
        client
            .args(["--no-warnings", "cli.mjs"])
            .env("npm_config_base", format!("http://{}", p.outbound()))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    drop(server);
    assert!(
        results.status.success(),
        "{}",
        String::from_utf8_lossy(&results.stderr)
    );
    let results_file = dir.join("results.json");
    std::fs::write(&results_file, &results.stdout).unwrap();
    let count = dir.join("count.mjs");
    std::fs::write(&count, COUNT.replace("SUITE", &suite.display().to_string())).unwrap();
    let counted = Command::new("node")
        .arg(&count)
        .arg(&results_file)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&counted.stdout).into_owned();
    let counts: serde_json::Value = serde_json::from_str(report.lines().next().unwrap()).unwrap();
    let (required, optimal) = (&counts["required"], &counts["optimal"]);
    // The issue's target is at most 5 required failures; the 4 `stale-close-*` tests count a
    // cache's own error response (as RFC 9111, 5.2.2.2 asks when stale use is forbidden) as
    // "from cache", and `age-parse-prefix` expects the opposite of its own title.
    assert!(required["fail"].as_u64().unwrap() <= 5, "{report}");
    assert!(required["pass"].as_u64().unwrap() >= 150, "{report}");
    assert!(optimal["pass"].as_u64().unwrap() >= 77, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Counts the suite's results by kind (required, optimal, check); browser-only tests aside.
const COUNT: &str = r#"
import fs from 'fs'
import index from 'SUITE/tests/index.mjs'
const results = JSON.parse(fs.readFileSync(process.argv[2]))
const counts = {}
const failed = []
for (const suite of index) {
  for (const test of suite.tests) {
    if (test.browser_only) continue
    const kind = test.kind || 'required'
    const r = results[test.id]
    const c = counts[kind] = counts[kind] || { pass: 0, fail: 0, setup: 0, not_run: 0 }
    if (r === undefined) c.not_run++
    else if (r === true) c.pass++
    else if (Array.isArray(r) && (r[0] === 'Setup' || r[0] === 'Retry')) c.setup++
    else { c.fail++; if (kind !== 'check') failed.push(`${kind} ${test.id}: ${r[1]}`) }
  }
}
console.log(JSON.stringify(counts))
for (const f of failed) console.log(f)
"#;
