//! `remora explain`, the admin `/debug/route`, and `remora test`.

use std::process::Command;

use crate::support::*;

const CONFIG: &str = r#"
outbound:
  listen: 127.0.0.1:0
  unmatched: reject
  routes:
    - name: canary
      match: { host: inventory, headers: { x-canary: { exact: "true" } } }
      backends: [{ service: v2 }]
    - name: inventory
      match: { host: inventory, path: { prefix: /api }, method: [GET] }
      backends: [{ service: v1, weight: 90 }, { service: v2, weight: 10 }]
      rewrite: { prefix: /v2/api }
      timeout: 2s
      request_headers: { set: { x-env: prod } }
    - name: docs
      match: { host: "*.docs.test" }
      redirect: { status: 301, location: "https://docs.example.com/" }
    - name: never-tested
      match: { host: lonely }
      direct_response: { status: 204 }
services:
  v1: { endpoints: ["10.0.0.5:8080", "10.0.0.6:8080"], load_balancer: round_robin }
  v2: { dns: "inventory-v2.shop.svc:8080", protocol: http2 }
"#;

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("remora-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn remora(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn explain_says_which_route_and_why_the_others_did_not() {
    let cfg = write("explain.yaml", &complete(CONFIG));
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = remora(&[
        "explain",
        "--config",
        cfg,
        "GET",
        "http://inventory/api/items?page=2",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let expected = [
        "GET /api/items?page=2 (host inventory)",
        "  route canary: no, header x-canary is not = \"true\"",
        "  route inventory: MATCH",
        "    timeout 2s",
        "    rewritten to /v2/api/items?page=2",
        "    request headers: set x-env: prod",
        "    backend v1 weight 90 (90.0%): auto, round_robin, connect timeout 1s, static",
        "      circuit breaker: at most 1024 requests, 1024 connections, 1024 pending",
        "      endpoints: 10.0.0.5:8080, 10.0.0.6:8080",
        "    backend v2 weight 10 (10.0%): http2, least_request, connect timeout 1s, dns inventory-v2.shop.svc:8080 every 5s",
        "      circuit breaker: at most 1024 requests, 1024 connections, 1024 pending",
        "      endpoints: resolved at run time",
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), expected, "{out}");

    let (_, out, _) = remora(&[
        "explain",
        "-c",
        cfg,
        "POST",
        "/api",
        "-H",
        "host: inventory",
    ]);
    assert!(
        out.contains("route inventory: no, method POST is not one of GET"),
        "{out}"
    );
    assert!(out.contains("no route matches: answered 404"), "{out}");

    let (code, out, _) = remora(&["explain", "-c", cfg, "GET", "http://a.docs.test/", "--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outcome"]["kind"], "route");
    assert_eq!(v["outcome"]["route"], "docs");
    assert_eq!(v["outcome"]["action"]["type"], "redirect");
    assert_eq!(v["outcome"]["action"]["status"], 301);
    assert_eq!(v["skipped"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["skipped"][1]["reason"],
        "host \"a.docs.test\" is not inventory"
    );

    let (code, _, err) = remora(&["explain", "-c", cfg, "GET", "/no-host"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("names no host"), "{err}");
}

#[tokio::test]
async fn debug_route_explains_on_the_live_config() {
    let p = proxy(CONFIG).await;
    let url =
        "/debug/route?method=GET&url=http%3A%2F%2Finventory%2Fapi%2Fx&header=x-canary%3A+true";
    let r = get(p.admin, "admin", url).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("route canary: MATCH"), "{}", r.body);
    let r = get(p.admin, "admin", &format!("{url}&format=json")).await;
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["outcome"]["route"], "canary");
    assert_eq!(get(p.admin, "admin", "/debug/route").await.status, 400);
    assert_eq!(
        get(p.admin, "admin", "/debug/route?url=%2Fx").await.status,
        400,
        "no host"
    );
}

#[test]
fn route_tests_pass_fail_and_report_uncovered_routes() {
    let cfg = write("routes.yaml", &complete(CONFIG));
    let passing = write(
        "pass.routes-test.yaml",
        r#"cases:
  - name: canary
    request: { url: http://inventory/api/x, headers: { x-canary: "true" } }
    expect: { route: canary, backend: v2, path: /api/x }
  - request: { url: http://inventory/api/items?a=1 }
    expect: { route: inventory, backend: v2, path: /v2/api/items?a=1 }
  - request: { url: http://b.docs.test/ }
    expect: { route: docs, status: 301, location: "https://docs.example.com/" }
  - request: { method: DELETE, url: http://inventory/api }
    expect: { status: 404 }
"#,
    );
    let (code, out, err) = remora(&["test", cfg.to_str().unwrap(), passing.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("4 passed, 0 failed"), "{out}");
    assert!(
        out.contains("routes no case covered: never-tested"),
        "{out}"
    );

    let failing = write(
        "fail.routes-test.yaml",
        r#"cases:
  - name: wrong route
    request: { url: http://inventory/api/x }
    expect: { route: canary }
  - name: forwarded has no own status
    request: { url: http://inventory/api/x }
    expect: { status: 200 }
  - name: backend not in split
    request: { url: http://inventory/api/x, headers: { x-canary: "true" } }
    expect: { backend: v1 }
"#,
    );
    let (code, out, _) = remora(&["test", cfg.to_str().unwrap(), failing.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL  wrong route: expected route canary, got route inventory"),
        "{out}"
    );
    assert!(
        out.contains(
            "FAIL  forwarded has no own status: expected status 200, but the request is forwarded"
        ),
        "{out}"
    );
    assert!(
        out.contains("FAIL  backend not in split: expected backend v1, route sends to v2 (100%)"),
        "{out}"
    );
    assert!(out.contains("0 passed, 3 failed"), "{out}");

    let bad = write(
        "bad.routes-test.yaml",
        "cases:\n  - request: { url: http://x/ }\n    expect: { rout: a }\n",
    );
    let (code, _, err) = remora(&["test", cfg.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(code, Some(64));
    // The position once, then the problem in the file's words.
    assert!(
        err.trim_end().ends_with(
            "bad.routes-test.yaml:3:15: cases[0].expect.rout: unknown field `rout` (did you mean `route`?)"
        ),
        "{err}"
    );
    assert!(!err.contains(" at line "), "{err}");

    // Cases that cannot fail are not passes.
    let empty = write(
        "empty.routes-test.yaml",
        "cases: []
",
    );
    let (code, _, err) = remora(&["test", cfg.to_str().unwrap(), empty.to_str().unwrap()]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("the case file has no cases"), "{err}");
    let vacuous = write(
        "vacuous.routes-test.yaml",
        r#"cases:
  - name: nothing
    request: { url: http://inventory/api/x }
    expect: {}
  - name: typo
    request: { url: http://inventory/api/x }
    expect: { route: inventroy }
  - name: no such service
    request: { url: http://inventory/api/x }
    expect: { backend: v9 }
"#,
    );
    let (code, out, _) = remora(&["test", cfg.to_str().unwrap(), vacuous.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  nothing: expects nothing"), "{out}");
    assert!(
        out.contains(
            "FAIL  typo: the config has no route named \"inventroy\" (did you mean \"inventory\"?)"
        ),
        "{out}"
    );
    assert!(
        out.contains("FAIL  no such service: the config has no service named \"v9\""),
        "{out}"
    );

    // --min-coverage: 3 of the 4 routes are covered by the passing cases.
    let run = |min: &str| {
        remora(&[
            "test",
            cfg.to_str().unwrap(),
            passing.to_str().unwrap(),
            "--min-coverage",
            min,
        ])
    };
    let (code, out, _) = run("75");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("route coverage 75.0% (3 of 4 routes)"),
        "{out}"
    );
    let (code, out, _) = run("80");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("below the required 80%"), "{out}");
}

#[test]
fn shipped_route_tests_pass_against_the_demo() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".routes-test.yaml") {
            let config = dir.join(format!("{stem}.yaml"));
            let (code, out, err) =
                remora(&["test", config.to_str().unwrap(), path.to_str().unwrap()]);
            assert_eq!(code, Some(0), "{name}: {out}{err}");
            assert!(
                !out.contains("routes no case covered"),
                "{name} covers every route: {out}"
            );
            n += 1;
        }
    }
    assert!(n >= 1);
}

/// A reader that goes away (`remora explain ... | head`) ends the output quietly: no panic,
/// exit 0.
#[test]
fn a_closed_stdout_ends_the_output_without_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args([
            "explain",
            "--config",
            "config/demo.yaml",
            "GET",
            "http://demo/api/live",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(writer)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

/// `--json` gives every policy as fields, and every duration exactly as it would be written
/// back into the file (`0.3ms` does not become `0s`).
#[test]
fn explain_json_gives_policies_as_fields_with_exact_durations() {
    let text = r#"
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: r
      timeout: 1.5ms
      backends: [{ service: s }]
      retry: { attempts: 3, per_try_timeout: 0.3ms, on: [5xx, { retriable-status: [409] }] }
      rate_limit: { requests_per_second: 200, burst: 50 }
      fault: { delay: { percent: 1, duration: 100ms } }
      cache: { max_size: 8MiB }
services:
  s:
    endpoints: ["10.0.0.5:8080"]
    connect_timeout: 0.25ms
    circuit_breaker: { max_requests: 7 }
    load_balancer: { ring_hash: { header: x-user } }
    outlier_detection: { consecutive_failures: 2, base_ejection: 1.5s, max_ejected_percent: 50 }
"#;
    let cfg = write("json-policies.yaml", &complete(text));
    let (code, out, err) = remora(&[
        "explain",
        "-c",
        cfg.to_str().unwrap(),
        "GET",
        "http://any/",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let m = &v["outcome"];
    assert_eq!(m["timeout"], "1.5ms");
    assert_eq!(
        m["retry"],
        serde_json::json!({
            "attempts": 3, "per_try_timeout": "0.3ms", "on": ["5xx", "409"],
            "backoff_base": "25ms", "backoff_max": "250ms", "non_idempotent": false
        })
    );
    assert_eq!(
        m["rate_limit"],
        serde_json::json!({"requests_per_second": 200, "burst": 50})
    );
    assert_eq!(m["fault"]["delay"]["duration"], "100ms");
    assert_eq!(
        m["cache"],
        serde_json::json!({"max_size": "8MiB", "max_object_size": "1MiB"})
    );
    let b = &m["action"]["backends"][0];
    assert_eq!(b["connect_timeout"], "0.25ms");
    assert_eq!(b["circuit_breaker"]["max_requests"], 7);
    assert_eq!(
        b["load_balancer"],
        serde_json::json!({"type": "ring_hash", "header": "x-user"})
    );
    assert_eq!(b["outlier_detection"]["base_ejection"], "1500ms");
    assert_eq!(b["discovery"], serde_json::json!({"type": "static"}));

    // The text form says the same, as exactly.
    let (_, out, _) = remora(&["explain", "-c", cfg.to_str().unwrap(), "GET", "http://any/"]);
    assert!(out.contains("timeout 1.5ms"), "{out}");
    assert!(out.contains("3 attempts of at most 0.3ms"), "{out}");
    assert!(out.contains("connect timeout 0.25ms"), "{out}");
    assert!(
        out.contains("cache: at most 8MiB, bodies up to 1MiB"),
        "{out}"
    );
}

/// `remora diff OLD NEW`: what a reload would change, semantically, and with `--cases` the
/// route test cases whose answer changes. Key order, quoting and a default written out are
/// no change.
#[test]
fn diff_shows_semantic_changes_and_the_cases_whose_answer_changes() {
    let old = write("diff-old.yaml", &complete(CONFIG));
    let same = CONFIG
        .replace(
            "services:\n  v1: { endpoints: [\"10.0.0.5:8080\", \"10.0.0.6:8080\"], load_balancer: round_robin }",
            "services:\n  v1:\n    load_balancer: \"round_robin\"\n    endpoints: [\"10.0.0.5:8080\", \"10.0.0.6:8080\"]\n    connect_timeout: 1s",
        );
    assert_ne!(same, CONFIG);
    let same = write("diff-same.yaml", &complete(&same));
    let (code, out, err) = remora(&["diff", old.to_str().unwrap(), same.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (Some(0), "no changes\n"), "{err}");

    let new = CONFIG
        .replace("backends: [{ service: v1, weight: 90 }, { service: v2, weight: 10 }]", "backends: [{ service: v1, weight: 50 }, { service: v2, weight: 50 }]")
        .replace("      timeout: 2s\n", "      timeout: 2.5s\n")
        .replace("    - name: never-tested\n      match: { host: lonely }\n      direct_response: { status: 204 }\n", "")
        .replace("    - name: canary\n", "    - name: first\n      match: { host: docs }\n      direct_response: { status: 200 }\n    - name: canary\n");
    let new = write("diff-new.yaml", &complete(&new));
    let cases = write(
        "diff.routes-test.yaml",
        "cases:\n  - name: api\n    request: { url: http://inventory/api/x }\n    expect: { route: inventory }\n  - name: docs\n    request: { url: http://docs/ }\n    expect: { status: 204 }\n  - name: canary\n    request: { url: http://inventory/x, headers: { x-canary: \"true\" } }\n    expect: { route: canary }\n",
    );
    let args = |json: bool| {
        let mut a = vec![
            "diff",
            old.to_str().unwrap(),
            new.to_str().unwrap(),
            "--cases",
            cases.to_str().unwrap(),
        ];
        if json {
            a.push("--json");
        }
        remora(&a)
    };
    let (code, out, err) = args(false);
    assert_eq!(code, Some(1), "{out}{err}");
    for want in [
        "route inventory: changed\n  backends[0].weight: 90 -> 50\n  backends[1].weight: 10 -> 50\n  timeout: 2s -> 2500ms\n",
        "route never-tested: removed\n",
        "route first: added\n",
        "cases whose answer changes:\n  api:",
        "  docs:\n    before: no route: 404\n    after:  route first: direct response 200\n",
        "  api:\n    before: route inventory: to v1 90%, v2 10% as /v2/api/x\n    after:  route inventory: to v1 50%, v2 50% as /v2/api/x\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(!out.contains("  canary:"), "{out}");

    let (code, out, _) = args(true);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let changes = v["changes"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c["kind"] == "route" && c["name"] == "first" && c["what"] == "added"),
        "{v}"
    );
    assert_eq!(v["cases"].as_array().unwrap().len(), 2, "{v}");

    // An invalid NEW is its problems, as check gives them.
    let broken = write(
        "diff-broken.yaml",
        "version: 1\noutbound: { listen: nope }\n",
    );
    let (code, _, err) = remora(&["diff", old.to_str().unwrap(), broken.to_str().unwrap()]);
    assert_eq!(code, Some(64));
    assert!(
        err.contains("diff-broken.yaml:2:21: outbound.listen: invalid socket address"),
        "{err}"
    );
}
