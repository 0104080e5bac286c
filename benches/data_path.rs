//! Per-request costs on the data path: route matching over a realistic table, endpoint
//! selection for each load balancer, and recording a request's metrics.
//!
//! `cargo bench --bench data_path`

use std::{hint::black_box, time::Duration};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use remora::{metrics::Direction, routing::RequestView, runtime::Snapshot};

/// A config with `n` host routes (each with a path prefix and a header condition) in front of
/// the route the benchmark request takes, plus services with 10 endpoints per balancer.
fn config(n: usize) -> String {
    let mut y = String::from(
        "version: 1\nadmin: { listen: 127.0.0.1:0 }\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n",
    );
    for i in 0..n {
        y.push_str(&format!(
            "    - name: r{i}\n      match: {{ host: svc{i}.shop.svc, path: {{ prefix: /api/v{i} }}, headers: {{ x-tenant: {{ exact: t{i} }} }} }}\n      backends: [{{ service: lr }}]\n"
        ));
    }
    y.push_str("    - name: target\n      match: { host: \"*.orders.svc\", path: { prefix: /orders }, method: [GET] }\n      backends: [{ service: lr, weight: 90 }, { service: rr, weight: 10 }]\n");
    y.push_str("services:\n");
    let eps: Vec<String> = (0..10).map(|i| format!("\"10.0.0.{i}:8080\"")).collect();
    let eps = eps.join(", ");
    for (name, lb) in [
        ("lr", "least_request"),
        ("rr", "round_robin"),
        ("rand", "random"),
        ("ring", "{ ring_hash: { header: x-user } }"),
    ] {
        y.push_str(&format!(
            "  {name}: {{ endpoints: [{eps}], load_balancer: {lb} }}\n"
        ));
    }
    y
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shared = remora::runtime::Shared::new();
    let snapshot = rt.block_on(async {
        let compiled = remora::config::parse("bench.yaml", &config(50)).unwrap();
        Snapshot::build(compiled, &shared, None)
    });
    let table = &snapshot.outbound.as_ref().unwrap().table;
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("t-none"));
    headers.insert("x-user", HeaderValue::from_static("user-1234"));
    headers.insert("user-agent", HeaderValue::from_static("bench"));
    let get = Method::GET;

    c.bench_function("route_match/51st_of_51_routes", |b| {
        let view = RequestView {
            method: &get,
            host: Some("a.orders.svc"),
            path: "/orders/42",
            query: Some("x=1"),
            headers: &headers,
        };
        b.iter(|| black_box(table.find(black_box(&view)).map(|r| &r.spec.name)))
    });
    c.bench_function("route_match/first_route", |b| {
        let mut h = headers.clone();
        h.insert("x-tenant", HeaderValue::from_static("t0"));
        let view = RequestView {
            method: &get,
            host: Some("svc0.shop.svc"),
            path: "/api/v0/items",
            query: None,
            headers: &h,
        };
        b.iter(|| black_box(table.find(black_box(&view)).map(|r| &r.spec.name)))
    });
    c.bench_function("route_match/no_match_51_routes", |b| {
        let view = RequestView {
            method: &get,
            host: Some("unknown.example"),
            path: "/",
            query: None,
            headers: &headers,
        };
        b.iter(|| black_box(table.find(black_box(&view)).is_some()))
    });

    let target = table.routes.last().unwrap();
    c.bench_function("split/pick_weighted_backend", |b| {
        b.iter(|| black_box(target.pick_target().map(|t| t.cumulative)))
    });
    for name in ["lr", "rr", "rand", "ring"] {
        let svc = snapshot.services[name].clone();
        c.bench_function(&format!("endpoint_pick/{name}_10_endpoints"), |b| {
            b.iter(|| black_box(svc.pick(black_box(&headers)).map(|e| e.addr())))
        });
    }

    let m = shared.metrics.request(Direction::Outbound, "target", "lr");
    c.bench_function("metrics/record_request", |b| {
        b.iter(|| {
            m.record(
                black_box(StatusCode::OK),
                black_box(Duration::from_micros(250)),
            )
        })
    });
}

criterion_group!(data_path, benches);
criterion_main!(data_path);
