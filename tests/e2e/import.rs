//! `remora import` as users run it: Gateway API routes in, a control file out that
//! `remora check` accepts and that `remora explain` shows routing as the Gateway API says
//! (the most specific match first, weights, filters, redirects, gRPC methods).

use std::{path::Path, process::Command};

use serde_json::Value;

fn remora(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The fixture imported into a file of its own.
fn imported() -> std::path::PathBuf {
    let (code, out, err) = remora(&["import", "-f", "tests/e2e/fixtures/gateway.yaml"]);
    assert_eq!(code, 0, "{err}");
    // What Remora does more coarsely is said, not hidden.
    assert!(
        err.contains("note: HTTPRoute shop/inventory spec.parentRefs[0].port"),
        "{err}"
    );
    assert!(out.contains("# note: GRPCRoute shop/payments"), "{out}");
    let path = std::env::temp_dir().join(format!("remora-import-{}.yaml", std::process::id()));
    std::fs::write(&path, out).unwrap();
    path
}

fn explain(file: &Path, method: &str, url: &str, headers: &[&str]) -> Value {
    let mut args = vec![
        "explain",
        "--json",
        "--config",
        file.to_str().unwrap(),
        method,
        url,
    ];
    for h in headers {
        args.extend(["-H", h]);
    }
    let (code, out, err) = remora(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out).unwrap()["outcome"].clone()
}

#[test]
fn imported_routes_check_and_route_as_the_gateway_api_says() {
    let file = imported();
    let (code, _, err) = remora(&["check", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    // The header match is more specific than the plain prefix, whichever rule came first,
    // under every name callers use for the Service.
    for host in [
        "inventory",
        "inventory.shop",
        "inventory.shop.svc.cluster.local",
    ] {
        let canary = explain(
            &file,
            "GET",
            &format!("http://{host}/api/items"),
            &["x-canary: true"],
        );
        assert_eq!(
            canary["action"]["backends"][0]["service"], "inventory-v2-80",
            "{canary}"
        );
        let plain = explain(&file, "GET", &format!("http://{host}/api/items"), &[]);
        let backends = &plain["action"]["backends"];
        assert_eq!(
            (
                &backends[0]["service"],
                &backends[0]["weight"],
                &backends[1]["weight"]
            ),
            (&"inventory-80".into(), &90.into(), &10.into()),
            "{plain}"
        );
        // A headless Service is called at its pods' target port.
        assert_eq!(
            backends[0]["discovery"],
            serde_json::json!({"type": "dns", "host": "inventory.shop.svc.cluster.local", "port": 8080, "refresh": "5s"})
        );
        assert_eq!(plain["rewritten_path"], "/v1/api/items", "{plain}");
        assert_eq!(plain["timeout"], "1500ms", "{plain}");
        assert_eq!(
            plain["mirror"],
            serde_json::json!({"percent": 5.0, "service": "inventory-v2-80"}),
            "{plain}"
        );
        assert_eq!(
            plain["request_headers"],
            serde_json::json!([
                {"op": "remove", "name": "x-debug"},
                {"op": "set", "name": "x-env", "value": "prod"}
            ])
        );
    }
    let redirect = explain(&file, "GET", "http://inventory/old", &[]);
    assert_eq!(redirect["action"]["type"], "redirect");
    assert_eq!(
        redirect["action"]["location"],
        "https://docs.example.com/new"
    );
    assert_eq!(redirect["action"]["status"], 301);
    let grpc = explain(
        &file,
        "POST",
        "http://payments.shop/pay.v1.Payments/Charge",
        &[],
    );
    assert_eq!(grpc["action"]["backends"][0]["protocol"], "http2", "{grpc}");
    // Another Service's traffic is nobody's route: passed through.
    let other = explain(&file, "GET", "http://billing/api", &[]);
    assert_ne!(other["kind"], "route", "{other}");
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_field_that_cannot_be_mapped_is_an_error_with_its_path() {
    let route = |rule: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{ name: r, namespace: shop }}\nspec:\n  parentRefs: [{{ kind: Service, name: s }}]\n  rules:\n{rule}")
    };
    for (rule, want) in [
        (
            "    - filters: [{ type: ExtensionRef, extensionRef: { group: x, kind: y, name: z } }]\n      backendRefs: [{ name: s, port: 80 }]\n",
            "document 1 (HTTPRoute shop/r): spec.rules[0].filters[0].type: ExtensionRef filters cannot be imported",
        ),
        (
            "    - backendRefs: [{ name: s, port: 80 }]\n      sessionPersistence: { type: Cookie }\n",
            "spec.rules[0].sessionPersistence: sessionPersistence has no counterpart",
        ),
        (
            "    - matches: [{ path: { type: PathPrefix, value: /a } }]\n      filters: [{ type: URLRewrite, urlRewrite: { path: { type: ReplaceFullPath, replaceFullPath: /b } } }]\n      backendRefs: [{ name: s, port: 80 }]\n",
            "ReplaceFullPath on a prefix match cannot be imported",
        ),
        (
            "    - filters: [{ type: URLRewrite, urlRewrite: { hostname: other } }]\n      backendRefs: [{ name: s, port: 80 }]\n",
            "spec.rules[0].filters[0].urlRewrite.hostname: hostname has no counterpart",
        ),
        (
            "    - filters: [{ type: RequestRedirect, requestRedirect: { scheme: https } }]\n",
            "requestRedirect.hostname: a redirect that keeps the request's host cannot be imported",
        ),
        (
            "    - backendRefs: [{ kind: ServiceImport, group: multicluster.x-k8s.io, name: s, port: 80 }]\n",
            "spec.rules[0].backendRefs[0].kind: a backend of kind ServiceImport cannot be imported",
        ),
        (
            "    - backendRefs: [{ name: s }]\n",
            "spec.rules[0].backendRefs[0].port: Service shop/s: give the port",
        ),
    ] {
        let path = std::env::temp_dir().join(format!("remora-import-bad-{}.yaml", std::process::id()));
        std::fs::write(&path, route(rule)).unwrap();
        let (code, out, err) = remora(&["import", path.to_str().unwrap()]);
        assert_eq!((code, out.as_str()), (64, ""), "{rule}");
        assert!(err.contains(want), "{rule}\nwant {want}\ngot {err}");
        let _ = std::fs::remove_file(path);
    }
    let (code, _, err) = remora(&["import", "-f", "deploy/app.yaml"]);
    assert_eq!(code, 64);
    assert!(err.contains("no HTTPRoute or GRPCRoute"), "{err}");
}
