//! Config validation: every problem at once, each with line, column and field path; and every
//! shipped file in config/ loads.

use crate::support::config_error;

/// Asserts that `lines` are exactly one per `expect`ed prefix.
fn exactly(lines: &[String], expect: &[&str]) {
    for e in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(e)),
            "missing {e:?} in:\n{}",
            lines.join("\n")
        );
    }
    assert_eq!(lines.len(), expect.len(), "{}", lines.join("\n"));
}

fn errors(text: &str) -> Vec<String> {
    config_error(text).lines().map(str::to_owned).collect()
}

#[test]
fn every_problem_is_reported_with_its_place() {
    let text = r#"version: 1
admin: { listen: "nonsense" }
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: a
      match: { host: shop, path: { regex: "(" } }
      backends: [{ service: invntory }]
    - name: a
      match: { host: "a.*.b" }
      backends: [{ service: inventory, weight: 0 }]
    - name: c
      backends: [{ service: inventory, wieght: 5 }]
    - name: d
      timeout: 2x
      direct_response: { status: 200 }
    - name: e
      redirect: { status: 200, location: "/x" }
services:
  inventory:
    endpoints: ["10.0.0.1:8080", "bad-addr"]
  other:
    dns: "no-port"
"#;
    let errs = errors(text);
    let expect = [
        "f.yaml:2:18: admin.listen: invalid socket address \"nonsense\"",
        "f.yaml:7:43: outbound.routes[0].match.path.regex: invalid regex \"(\"",
        "f.yaml:8:29: outbound.routes[0].backends[0].service: unknown service \"invntory\" (did you mean \"inventory\"?)",
        "f.yaml:9:13: outbound.routes[1].name: duplicate route name \"a\"",
        "f.yaml:10:22: outbound.routes[1].match.host: invalid host pattern \"a.*.b\"",
        "f.yaml:11:17: outbound.routes[1].backends: total weight is 0",
        "f.yaml:13:40: outbound.routes[2].backends[0].wieght: unknown field `wieght`",
        "f.yaml:15:16: outbound.routes[3].timeout: invalid duration \"2x\"",
        "f.yaml:18:27: outbound.routes[4].redirect.status: redirect status must be",
        "f.yaml:21:34: services.inventory.endpoints[1]: invalid socket address \"bad-addr\"",
        "f.yaml:23:10: services.other.dns: invalid dns target \"no-port\"",
    ];
    exactly(&errs, &expect);
}

#[test]
fn syntax_and_type_errors_have_positions() {
    let errs = errors("version: 1\noutbound:\n  listen: [oops\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("f.yaml:"), "{}", errs[0]);
    let errs = errors("version: 1\nlimits:\n  max_connections: lots\n");
    assert!(
        errs.iter().any(|e| e
            == "f.yaml:3:20: limits.max_connections: expected a whole number, 0 or more, found the string \"lots\""),
        "{errs:?}"
    );
    let errs = errors("version: 2\noutbound: {}\n");
    assert!(
        errs[0].starts_with("f.yaml:1:10: version: unsupported version 2"),
        "{errs:?}"
    );
    let errs = errors("version: 1\nunknown_section: {}\n");
    assert!(
        errs.iter()
            .any(|e| e.contains("unknown field `unknown_section`")),
        "{errs:?}"
    );
    let errs = errors("version: 1\n");
    assert!(errs[0].contains("nothing to serve"), "{errs:?}");
}

#[test]
fn every_field_of_a_part_is_checked_in_the_files_own_words() {
    let text = r#"version: 1
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: r
      matc: { host: shop }
      backends: [{ service: web, wieght: 2 }]
services:
  web:
    load_balancer: leastrequest
    connect_timeout: 1
    idle_timeout: -5s
    endpoints: ["127.0.0.1:1"]
"#;
    let errs = errors(text);
    let expect = [
        "f.yaml:6:7: outbound.routes[0].matc: unknown field `matc` (did you mean `match`?)",
        "f.yaml:7:34: outbound.routes[0].backends[0].wieght: unknown field `wieght` (did you mean `weight`?)",
        "f.yaml:10:20: services.web.load_balancer: unknown load balancer \"leastrequest\": use least_request, round_robin, random or { ring_hash: { header: NAME } }",
        "f.yaml:11:22: services.web.connect_timeout: invalid duration 1: missing unit (ms, s, m or h)",
        "f.yaml:12:19: services.web.idle_timeout: invalid duration \"-5s\"",
    ];
    exactly(&errs, &expect);

    // No Rust type names: the file's own terms.
    let errs = errors("version: \"1\"\noutbound: { listen: 127.0.0.1:0 }\n");
    assert_eq!(
        errs,
        ["f.yaml:1:10: version: expected a whole number, 0 or more, found the string \"1\""]
    );
    let errs = errors("- version: 1\n");
    assert_eq!(
        errs,
        ["f.yaml:1:1: expected a mapping of fields, found a list"]
    );
    let errs = errors("version: 1\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: { [a]: b }\n      direct_response: { status: 200 }\n");
    assert_eq!(
        errs,
        ["f.yaml:6:16: outbound.routes[0].match.?: a key must be a plain name"]
    );
}

#[test]
fn a_wrong_value_does_not_hide_the_semantic_problems_beside_it() {
    let text = r#"version: 1
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: r
      timeout: 2x
      match: { path: { regex: "(" } }
      backends: [{ service: invntory }]
    - name: s
      backends: [{ service: [x] }]
services:
  inventory:
    connect_timeout: soon
    endpoints: ["10.0.0.1:8080", "bad-addr"]
"#;
    let errs = errors(text);
    let expect = [
        "f.yaml:6:16: outbound.routes[0].timeout: invalid duration \"2x\"",
        "f.yaml:7:31: outbound.routes[0].match.path.regex: invalid regex \"(\"",
        "f.yaml:8:29: outbound.routes[0].backends[0].service: unknown service \"invntory\" (did you mean \"inventory\"?)",
        "f.yaml:10:29: outbound.routes[1].backends[0].service: expected a string, found a list",
        "f.yaml:13:22: services.inventory.connect_timeout: invalid duration \"soon\"",
        "f.yaml:14:34: services.inventory.endpoints[1]: invalid socket address \"bad-addr\"",
    ];
    // Not "route s needs backends": its backend's problem is the one to fix.
    exactly(&errs, &expect);
}

#[test]
fn durations_and_listener_conflicts() {
    for ok in ["250ms", "2s", "1m", "1.5s"] {
        let text = format!("version: 1\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      timeout: {ok}\n      direct_response: {{ status: 200 }}\n");
        assert!(remora::config::parse("f", &text).is_ok(), "{ok}");
    }
    let errs = errors(
        "version: 1\nadmin: { listen: 127.0.0.1:7000 }\noutbound: { listen: 127.0.0.1:7000 }\n",
    );
    assert!(
        errs[0].contains("outbound.listen: address 127.0.0.1:7000 is already used by admin.listen"),
        "{errs:?}"
    );
}

#[test]
fn every_shipped_config_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Route test cases are run by tests/e2e/explain.rs.
        if name.ends_with(".routes-test.yaml") {
            continue;
        }
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            if let Err(e) = remora::config::load(&path) {
                panic!("{e}");
            }
            n += 1;
        }
    }
    assert!(n >= 1, "config/ ships at least the demo");
}

#[test]
fn deploy_manifest_embeds_a_valid_config() {
    use serde::Deserialize;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/app.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    // The identity files the pod mounts, made here for the check.
    let dir = std::env::temp_dir().join(format!("remora-deploy-{}", std::process::id()));
    remora::tls::certs::write_dev_certs(
        &dir,
        &["spiffe://cluster.local/ns/shop/sa/orders".to_owned()],
        1,
    )
    .unwrap();
    let mut found = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        if v["kind"] == "ConfigMap" {
            let cfg = v["data"]["remora.yaml"]
                .as_str()
                .expect("remora.yaml key")
                .replace(
                    "/etc/remora-tls/ca.crt",
                    &dir.join("ca.crt").display().to_string(),
                )
                .replace(
                    "/etc/remora-tls/tls.crt",
                    &dir.join("orders.crt").display().to_string(),
                )
                .replace(
                    "/etc/remora-tls/tls.key",
                    &dir.join("orders.key").display().to_string(),
                );
            if let Err(e) = remora::config::parse("deploy/app.yaml#remora.yaml", &cfg) {
                panic!("{e}");
            }
            found += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found, 1);
}

#[test]
fn a_log_level_that_is_no_level_is_an_error() {
    // tracing would take `warning` for a target and turn every other line off.
    let errs = errors("version: 1\nlog: { level: warning }\noutbound: { listen: 127.0.0.1:0 }\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("f.yaml:2:15: log.level: unknown log level \"warning\""),
        "{errs:?}"
    );
    assert!(errs[0].contains("did you mean \"warn\""), "{errs:?}");
    assert!(config_error_free(
        "version: 1\nlog: { level: \"warn,remora=debug\" }\noutbound: { listen: 127.0.0.1:0 }\n"
    ));
}

fn config_error_free(text: &str) -> bool {
    remora::config::parse("f.yaml", text).is_ok()
}

#[test]
fn config_bombs_are_refused_before_the_parser_sees_them() {
    let deep_flow = format!(
        "version: 1\nx: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let e = config_error(&deep_flow);
    assert!(
        e.starts_with("f.yaml:2:68: brackets nested more than 64 deep"),
        "{e}"
    );

    let deep_block = format!("version: 1\nx:\n{}a: 1\n", "- ".repeat(200));
    let e = config_error(&deep_block);
    assert!(
        e.starts_with("f.yaml:3:1: nested more than 256 columns deep"),
        "{e}"
    );

    let huge = format!("version: 1\n# {}\n", "x".repeat(5 * 1024 * 1024));
    let e = config_error(&huge);
    assert!(e.contains("bytes; at most 4194304 are allowed"), "{e}");
}

#[test]
fn identity_files_must_be_small_regular_files() {
    let dir = std::env::temp_dir().join(format!("remora-bounded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.crt");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let big = dir.join("big.pem");
    std::fs::write(&big, vec![b'a'; 2 * 1024 * 1024]).unwrap();
    for (path, why) in [
        ("/dev/zero".to_owned(), "not a regular file"),
        (fifo.display().to_string(), "not a regular file"),
        (big.display().to_string(), "more than the 1048576 allowed"),
    ] {
        let text = format!(
            "version: 1\nidentity: {{ trust_anchors: \"{path}\", certificate: \"{path}\", private_key: \"{path}\" }}\noutbound: {{ listen: 127.0.0.1:0 }}\n"
        );
        let e = config_error(&text);
        assert!(
            e.contains("identity.trust_anchors") && e.contains(why),
            "{path}: {e}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Valid but surely wrong: each warning at its place, printed by `check` (exit 0), made an
/// error by `--strict`, and given with positions by `--format json`.
#[test]
fn warnings_for_configs_that_are_valid_but_surely_wrong() {
    let text = r#"version: 1
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: api
      match: { host: "*.shop.test", path: { prefix: /api } }
      backends: [{ service: web }]
    - name: api-v2
      match: { host: orders.shop.test, path: { prefix: /api/v2 }, method: [GET] }
      backends: [{ service: web }]
    - name: slow-retry
      match: { host: other }
      timeout: 1s
      backends: [{ service: web }]
      retry: { attempts: 3, per_try_timeout: 2s }
    - name: everything
      backends: [{ service: web }]
    - name: after-all
      match: { host: late }
      backends: [{ service: web }]
inbound:
  listen: 127.0.0.1:0
  app: 127.0.0.1:1
  authorize:
    - { unauthenticated: true, paths: [/api/*] }
    - { unauthenticated: true, paths: [/api/v1], methods: [GET] }
services:
  web: { endpoints: ["127.0.0.1:1"] }
  forgotten: { endpoints: ["127.0.0.1:2"] }
"#;
    let compiled = remora::config::parse("f.yaml", text).expect("valid");
    let got: Vec<String> = compiled
        .warnings
        .iter()
        .map(|w| w.warning_in("f.yaml"))
        .collect();
    let expect = [
        "f.yaml:8:7: warning: outbound.routes[1]: route \"api-v2\" can never match: route \"api\" (outbound.routes[0]) comes first",
        "f.yaml:15:46: warning: outbound.routes[2].retry.per_try_timeout: per_try_timeout (2s) is not shorter than the route's timeout (1s)",
        "f.yaml:18:7: warning: outbound.routes[4]: route \"after-all\" can never match: route \"everything\" (outbound.routes[3])",
        "f.yaml:26:7: warning: inbound.authorize[1]: rule",
        "f.yaml:29:14: warning: services.forgotten: service \"forgotten\" is not used",
    ];
    exactly(&got, &expect);

    let dir = std::env::temp_dir().join(format!("remora-warnings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("w.yaml");
    std::fs::write(&file, text).unwrap();
    let check = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_remora"))
            .arg("check")
            .arg(&file)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = check(&[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.ends_with("w.yaml: ok\n"), "{out}");
    assert_eq!(err.matches(": warning: ").count(), 5, "{err}");
    let (code, _, err) = check(&["--strict"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("5 warnings, and --strict makes them errors"),
        "{err}"
    );

    let (code, out, _) = check(&["--format", "json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["errors"], serde_json::json!([]));
    assert_eq!(v["warnings"].as_array().unwrap().len(), 5);
    assert_eq!(
        v["warnings"][4],
        serde_json::json!({"line": 29, "column": 14, "path": "services.forgotten",
            "message": "service \"forgotten\" is not used: no route, mirror or TCP route names it"})
    );
    let (code, out, _) = check(&["--format", "json", "--strict"]);
    assert_eq!(code, Some(64));
    assert!(out.contains("\"valid\":false"), "{out}");

    // Errors, in JSON too.
    std::fs::write(
        &file,
        "version: 1\nlimits: { max_connections: lots }\noutbound: { listen: 127.0.0.1:0 }\n",
    )
    .unwrap();
    let (code, out, _) = check(&["--format", "json"]);
    assert_eq!(code, Some(64));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"][0]["line"], 2);
    assert_eq!(v["errors"][0]["column"], 28);
    assert_eq!(v["errors"][0]["path"], "limits.max_connections");
    let _ = std::fs::remove_dir_all(&dir);
}
