//! Transparent mode in network namespaces the tests make themselves: real `remora iptables`
//! rules, Remora running as uid 1337 beside apps that know nothing of it, and real peers
//! (curl, redis-server with redis-cli, nats-server with the nats-py client). Needs root;
//! CI runs as root, so these run there.

use std::path::Path;

use crate::netns::{self, fixture, link, remora, start_sidecar, workdir, Netns};

/// A namespace, or `None` (and the reason on stderr) when this is not root and so none can
/// be made. As root a failure to make one fails the test.
fn pod() -> Option<Netns> {
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: network namespaces and iptables need root");
        return None;
    }
    Some(Netns::new().expect("root can make a network namespace"))
}

/// A sidecar config for transparent mode on the standard ports.
fn sidecar(extra_outbound: &str, rest: &str) -> String {
    format!(
        "version: 1
admin: {{ listen: 127.0.0.1:15090 }}
log: {{ level: info, format: json, access_log: true }}
inbound:
  listen: 0.0.0.0:15006
  app: 127.0.0.1:8080
outbound:
  listen: 127.0.0.1:15001
{extra_outbound}
{rest}"
    )
}

fn start_app(ns: &mut Netns, dir: &Path, ports: &[&str]) {
    let mut args = vec!["python3", "-u"];
    let script = fixture("app.py");
    args.push(&script);
    args.extend_from_slice(ports);
    ns.spawn(&args, &dir.join(format!("{}-app.log", ns.name)));
    for p in ports {
        ns.wait_listening(p.parse().unwrap());
    }
}

fn remora_lines(save: &str) -> Vec<&str> {
    save.lines().filter(|l| l.contains("REMORA")).collect()
}

#[test]
fn iptables_rules_install_idempotently_on_both_backends_and_remove_cleanly() {
    for backend in ["nft", "legacy"] {
        let Some(ns) = pod() else { return };
        let save = |tool: &str| ns.ok(&[&format!("{tool}-{backend}-save"), "-t", "nat"]);
        let args = [
            remora(),
            "iptables",
            "--proxy-uid",
            "1337",
            "--backend",
            backend,
            "--skip-inbound-ports",
            "22",
            "--skip-outbound-cidrs",
            "10.96.0.0/12,fd00::/8",
        ];
        let dry = ns.ok(&[&args[..], &["--dry-run"]].concat());
        assert!(
            dry.contains("-A REMORA_OUTPUT -m owner --uid-owner 1337 -j RETURN"),
            "{dry}"
        );
        assert!(
            remora_lines(&save("iptables")).is_empty(),
            "--dry-run changed nothing"
        );

        ns.ok(&args);
        let once = save("iptables");
        let once6 = save("ip6tables");
        ns.ok(&args);
        assert_eq!(
            remora_lines(&save("iptables")),
            remora_lines(&once),
            "{backend}: a second run leaves the same rules"
        );
        assert_eq!(remora_lines(&save("ip6tables")), remora_lines(&once6));
        for want in [
            "-A PREROUTING -p tcp -j REMORA_INBOUND",
            "-A OUTPUT -p tcp -j REMORA_OUTPUT",
            "-A REMORA_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
            "-A REMORA_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
            "-A REMORA_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A REMORA_OUTPUT -d 127.0.0.0/8 -j RETURN",
            "-A REMORA_OUTPUT -d 10.96.0.0/12 -j RETURN",
            "-A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-A REMORA_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        ] {
            assert!(
                once.contains(want),
                "{backend}: missing {want:?} in\n{once}"
            );
        }
        assert!(
            once6.contains("-A REMORA_OUTPUT -d ::1/128 -j RETURN"),
            "{once6}"
        );
        assert!(
            once6.contains("-A REMORA_OUTPUT -d fd00::/8 -j RETURN"),
            "{once6}"
        );

        // Someone else's rule survives the removal.
        ns.ok(&[
            &format!("iptables-{backend}"),
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            "9",
            "-j",
            "RETURN",
        ]);
        ns.ok(&[
            remora(),
            "iptables",
            "--proxy-uid",
            "1337",
            "--backend",
            backend,
            "--remove",
        ]);
        let after = save("iptables");
        assert!(remora_lines(&after).is_empty(), "{backend}: {after}");
        assert!(remora_lines(&save("ip6tables")).is_empty());
        assert!(after.contains("--dport 9 -j RETURN"), "{after}");
        let again = ns.ok(&[
            remora(),
            "iptables",
            "--proxy-uid",
            "1337",
            "--backend",
            backend,
            "--remove",
        ]);
        assert!(again.contains("no Remora rules to remove"), "{again}");
    }
}

#[test]
fn outbound_http_goes_to_the_original_destination_not_the_host_header() {
    let (Some(mut client), Some(mut server)) = (pod(), pod()) else {
        return;
    };
    let dir = workdir("origdst");
    let (_, server_ip) = link(&client, &server);
    start_app(&mut server, &dir, &["8080"]);
    start_sidecar(&mut client, &dir, &sidecar("", ""));

    // The app (root, so redirected) names another host than the address it connects to.
    let url = format!("http://{server_ip}:8080/where");
    let body = client.ok(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-H",
        "Host: other.example",
        &url,
    ]);
    assert_eq!(
        body,
        "port=8080 host=other.example client-id=- path=/where\n"
    );
    let passthrough = "remora_requests_total{code=\"200\",direction=\"outbound\",route=\"\",service=\"passthrough\"}";
    assert_eq!(
        client.metric(passthrough),
        Some(1.0),
        "{}",
        client.metrics()
    );
    let http1 = "remora_protocol_detections_total{direction=\"outbound\",protocol=\"http1\"}";
    assert_eq!(client.metric(http1), Some(1.0));
}

#[test]
fn redis_goes_through_the_sidecar_to_its_original_destination_and_by_tcp_route() {
    let (Some(mut client), Some(mut server)) = (pod(), pod()) else {
        return;
    };
    let dir = workdir("redis");
    let (_, server_ip) = link(&client, &server);
    server.spawn(
        &[
            "redis-server",
            "--port",
            "6379",
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        &dir.join("redis.log"),
    );
    server.wait_listening(6379);
    // A ClusterIP-like address no host has: only the TCP route can take it anywhere.
    let routes = format!(
        "  tcp_routes:\n    - {{ name: redis, match: {{ port: 6379, destination: 10.96.0.0/12 }}, service: redis }}\nservices:\n  redis: {{ endpoints: [\"{server_ip}:6379\"] }}\n"
    );
    start_sidecar(&mut client, &dir, &sidecar(&routes, ""));

    assert_eq!(
        client
            .ok(&["redis-cli", "-h", &server_ip, "SET", "k", "direct"])
            .trim(),
        "OK"
    );
    assert_eq!(
        client
            .ok(&["redis-cli", "-h", &server_ip, "GET", "k"])
            .trim(),
        "direct"
    );
    assert_eq!(
        client
            .ok(&["redis-cli", "-h", "10.96.0.10", "GET", "k"])
            .trim(),
        "direct"
    );

    let unmatched = "remora_tcp_connections_total{direction=\"outbound\",route=\"\",service=\"\"}";
    let routed =
        "remora_tcp_connections_total{direction=\"outbound\",route=\"redis\",service=\"redis\"}";
    assert_eq!(client.metric(unmatched), Some(2.0), "{}", client.metrics());
    assert_eq!(client.metric(routed), Some(1.0));
    let opaque = "remora_protocol_detections_total{direction=\"outbound\",protocol=\"opaque\"}";
    assert_eq!(client.metric(opaque), Some(3.0));
    let sent = "remora_tcp_bytes_total{direction=\"outbound\",flow=\"sent\",route=\"redis\",service=\"redis\"}";
    assert!(client.metric(sent).unwrap_or(0.0) > 0.0);
}

#[test]
fn nats_server_first_works_with_and_without_opaque_ports() {
    let (Some(mut client), Some(mut server)) = (pod(), pod()) else {
        return;
    };
    let dir = workdir("nats");
    let (_, server_ip) = link(&client, &server);
    server.spawn(
        &["nats-server", "-a", "0.0.0.0", "-p", "4222"],
        &dir.join("nats.log"),
    );
    server.wait_listening(4222);
    let url = format!("nats://{server_ip}:4222");
    let check = fixture("nats_check.py");

    // Without opaque_ports: the client waits for the server's INFO, so detection times out
    // once (up to `limits.detect_timeout`) and the connection goes on as opaque TCP.
    start_sidecar(&mut client, &dir, &sidecar("", ""));
    assert_eq!(client.ok(&["python3", &check, &url]).trim(), "ok");
    let timeout = "remora_protocol_detections_total{direction=\"outbound\",protocol=\"timeout\"}";
    assert_eq!(client.metric(timeout), Some(1.0), "{}", client.metrics());

    // With the port opaque, no detection at all.
    let (Some(mut client), _server) = (pod(), server) else {
        return;
    };
    let (_, server_ip) = link(&client, &_server);
    let url = format!("nats://{server_ip}:4222");
    start_sidecar(&mut client, &dir, &sidecar("  opaque_ports: [4222]\n", ""));
    assert_eq!(client.ok(&["python3", &check, &url]).trim(), "ok");
    assert_eq!(client.metric(timeout), Some(0.0));
    let conns = "remora_tcp_connections_total{direction=\"outbound\",route=\"\",service=\"\"}";
    assert_eq!(client.metric(conns), Some(1.0));
}

#[test]
fn inbound_delivers_to_the_app_port_the_caller_meant() {
    let (Some(caller), Some(mut pod)) = (pod(), pod()) else {
        return;
    };
    let dir = workdir("ports");
    let (_, pod_ip) = link(&caller, &pod);
    start_app(&mut pod, &dir, &["8080", "9090"]);
    start_sidecar(&mut pod, &dir, &sidecar("", ""));
    for port in ["8080", "9090"] {
        let url = format!("http://{pod_ip}:{port}/p");
        let body = caller.ok(&["curl", "-sS", "--max-time", "5", &url]);
        assert_eq!(
            body,
            format!("port={port} host={pod_ip}:{port} client-id=- path=/p\n")
        );
    }
    let inbound =
        "remora_requests_total{code=\"200\",direction=\"inbound\",route=\"\",service=\"app\"}";
    assert_eq!(pod.metric(inbound), Some(2.0), "{}", pod.metrics());

    // The app calling its own pod IP goes through the outbound listener like any call;
    // loopback stays local.
    let own = format!("http://{pod_ip}:9090/self");
    assert!(pod
        .ok(&["curl", "-sS", "--max-time", "5", &own])
        .starts_with("port=9090"));
    let local = pod.ok(&["curl", "-sS", "--max-time", "5", "http://127.0.0.1:8080/lo"]);
    assert!(
        local.starts_with("port=8080 host=127.0.0.1:8080"),
        "{local}"
    );
    let passthrough = "remora_requests_total{code=\"200\",direction=\"outbound\",route=\"\",service=\"passthrough\"}";
    assert_eq!(pod.metric(passthrough), Some(1.0), "{}", pod.metrics());
}

#[test]
fn two_sidecars_talk_mtls_transparently() {
    let (Some(mut web), Some(mut api)) = (pod(), pod()) else {
        return;
    };
    let dir = workdir("mesh");
    let (_, api_ip) = link(&web, &api);
    let certs = dir.join("certs");
    netns::dev_certs(
        &certs,
        &[
            "spiffe://mesh.test/ns/shop/sa/web",
            "spiffe://mesh.test/ns/shop/sa/api",
        ],
    );
    let identity = |name: &str| {
        format!(
            "identity:\n  trust_anchors: {0}/ca.crt\n  certificate: {0}/{name}.crt\n  private_key: {0}/{name}.key\n",
            certs.display()
        )
    };
    start_app(&mut api, &dir, &["8080"]);
    // Redis on loopback only: nothing but the sidecar can reach it.
    api.spawn(
        &[
            "redis-server",
            "--port",
            "6379",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        &dir.join("redis.log"),
    );
    api.wait_listening(6379);
    let api_config = sidecar("", &identity("api")).replace(
        "  app: 127.0.0.1:8080\n",
        "  app: 127.0.0.1:8080\n  tls: strict\n",
    );
    start_sidecar(&mut api, &dir, &api_config);
    let routes = format!(
        "  routes:\n    - {{ name: api, match: {{ host: api.shop }}, backends: [{{ service: api }}] }}\n  tcp_routes:\n    - {{ name: redis, match: {{ port: 6379 }}, service: api-redis }}\nservices:\n  api:\n    endpoints: [\"{api_ip}:8080\"]\n    tls: {{ identity: spiffe://mesh.test/ns/shop/sa/api }}\n  api-redis:\n    endpoints: [\"{api_ip}:6379\"]\n    tls: {{ identity: spiffe://mesh.test/ns/shop/sa/api }}\n"
    );
    start_sidecar(&mut web, &dir, &sidecar(&routes, &identity("web")));

    let url = format!("http://{api_ip}:8080/orders");
    let body = web.ok(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-H",
        "Host: api.shop",
        &url,
    ]);
    assert_eq!(
        body,
        format!(
            "port=8080 host=api.shop client-id=spiffe://mesh.test/ns/shop/sa/web path=/orders\n"
        )
    );
    let ok = "remora_tls_handshakes_total{direction=\"inbound\",result=\"success\"}";
    assert_eq!(api.metric(ok), Some(1.0), "{}", api.metrics());

    // Opaque TCP crosses over mTLS too, to the port the app meant.
    assert_eq!(web.ok(&["redis-cli", "-h", &api_ip, "PING"]).trim(), "PONG");
    let routed = "remora_tcp_connections_total{direction=\"outbound\",route=\"redis\",service=\"api-redis\"}";
    assert_eq!(web.metric(routed), Some(1.0), "{}", web.metrics());
    let delivered =
        "remora_tcp_connections_total{direction=\"inbound\",route=\"\",service=\"app\"}";
    assert_eq!(api.metric(delivered), Some(1.0), "{}", api.metrics());
    assert_eq!(api.metric(ok), Some(2.0));
    // A caller without the mesh reaches the strict pod only to be refused.
    let (Some(stranger), _) = (pod(), ()) else {
        return;
    };
    let (_, api_ip2) = link(&stranger, &api);
    let out = stranger.run(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{api_ip2}:8080/"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
}

#[test]
fn https_the_app_originates_passes_through_untouched() {
    let (Some(mut client), Some(mut server)) = (pod(), pod()) else {
        return;
    };
    let dir = workdir("https");
    let (_, server_ip) = link(&client, &server);
    let certs = dir.join("certs");
    netns::dev_certs(&certs, &["spiffe://outside.test/site"]);
    let (crt, key) = (certs.join("site.crt"), certs.join("site.key"));
    server.spawn(
        &[
            "openssl",
            "s_server",
            "-accept",
            "8443",
            "-www",
            "-cert",
            crt.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
        ],
        &dir.join("s_server.log"),
    );
    server.wait_listening(8443);
    start_sidecar(&mut client, &dir, &sidecar("", ""));
    // The app's own TLS, end to end: the sidecar sees a ClientHello and copies bytes.
    let url = format!("https://{server_ip}:8443/");
    let body = client.ok(&["curl", "-sS", "-k", "--max-time", "5", &url]);
    assert!(body.contains("s_server"), "{body}");
    let tls = "remora_protocol_detections_total{direction=\"outbound\",protocol=\"tls\"}";
    assert_eq!(client.metric(tls), Some(1.0), "{}", client.metrics());
    let conns = "remora_tcp_connections_total{direction=\"outbound\",route=\"\",service=\"\"}";
    assert_eq!(client.metric(conns), Some(1.0));
}

#[test]
fn ipv6_is_redirected_and_sent_to_its_original_destination_too() {
    let (Some(mut client), Some(mut server)) = (pod(), pod()) else {
        return;
    };
    let dir = workdir("ipv6");
    let (_, server_ip) = link(&client, &server);
    let server_v6 = netns::v6_of(&server_ip);
    start_app(&mut server, &dir, &["8080"]);
    // `[::]` takes both families: 127.0.0.1 for IPv4 redirects, ::1 for IPv6 ones.
    let config = sidecar("", "").replace("  listen: 127.0.0.1:15001", "  listen: \"[::]:15001\"");
    start_sidecar(&mut client, &dir, &config);
    for (url, family) in [
        (format!("http://[{server_v6}]:8080/six"), "-6"),
        (format!("http://{server_ip}:8080/four"), "-4"),
    ] {
        let body = client.ok(&[
            "curl",
            "-sS",
            family,
            "--max-time",
            "5",
            "-H",
            "Host: elsewhere",
            &url,
        ]);
        assert!(
            body.starts_with("port=8080 host=elsewhere"),
            "{family}: {body}"
        );
    }
    let passthrough = "remora_requests_total{code=\"200\",direction=\"outbound\",route=\"\",service=\"passthrough\"}";
    assert_eq!(
        client.metric(passthrough),
        Some(2.0),
        "{}",
        client.metrics()
    );
}

#[test]
fn tcp_routes_skip_refusing_endpoints_eject_them_and_respect_max_connections() {
    let (Some(mut client), Some(mut server)) = (pod(), pod()) else {
        return;
    };
    let dir = workdir("tcp-resilience");
    let (_, server_ip) = link(&client, &server);
    server.spawn(
        &[
            "redis-server",
            "--port",
            "6379",
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        &dir.join("redis.log"),
    );
    server.wait_listening(6379);
    // 6390: nothing listens, so a connect is refused at once.
    let routes = format!(
        "  tcp_routes:\n    - {{ name: r, match: {{ port: 6379, destination: 10.96.0.0/12 }}, service: redis }}
services:
  redis:
    endpoints: [\"{server_ip}:6390\", \"{server_ip}:6379\"]
    load_balancer: round_robin
    circuit_breaker: {{ max_connections: 1 }}
    outlier_detection: {{ consecutive_failures: 1, base_ejection: 1h, max_ejected_percent: 50 }}
"
    );
    start_sidecar(&mut client, &dir, &sidecar(&routes, ""));
    for _ in 0..4 {
        assert_eq!(
            client.ok(&["redis-cli", "-h", "10.96.0.10", "PING"]).trim(),
            "PONG"
        );
    }
    let ejected =
        format!("remora_endpoint_ejected{{endpoint=\"{server_ip}:6390\",service=\"redis\"}}");
    assert_eq!(client.metric(&ejected), Some(1.0), "{}", client.metrics());

    // One connection held open fills max_connections: the next is refused and counted.
    client.spawn(
        &["redis-cli", "-h", "10.96.0.10", "BLPOP", "nothing", "30"],
        &dir.join("held.log"),
    );
    let open = "remora_tcp_connections_open{direction=\"outbound\"}";
    client.wait_metric(open, 1.0);
    let out = client.run(&["redis-cli", "-h", "10.96.0.10", "PING"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("PONG"),
        "refused while full"
    );
    let overloaded = "remora_proxy_errors_total{direction=\"outbound\",reason=\"overloaded\",route=\"r\",service=\"redis\"}";
    assert_eq!(client.metric(overloaded), Some(1.0), "{}", client.metrics());

    // Each connection's access log line says where it went and how it ended.
    let log = std::fs::read_to_string(dir.join(format!("{}.log", client.name))).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("\"protocol\":\"tcp\"") && l.contains("\"close\":\"done\""))
        .unwrap_or_else(|| panic!("no TCP access line in:\n{log}"));
    assert!(line.contains("\"route\":\"r\""), "{line}");
    assert!(
        line.contains(&format!("\"endpoint\":\"{server_ip}:6379\"")),
        "{line}"
    );
}

#[test]
fn admin_control_endpoints_answer_only_loopback_unless_opened() {
    let (Some(prometheus), Some(mut pod)) = (pod(), pod()) else {
        return;
    };
    let dir = workdir("admin");
    let (_, pod_ip) = link(&prometheus, &pod);
    let config = sidecar("", "").replace(
        "admin: { listen: 127.0.0.1:15090 }",
        "admin: { listen: 0.0.0.0:15090 }",
    );
    start_sidecar(&mut pod, &dir, &config);
    let status = |ns: &Netns, method: &str, url: &str| {
        let out = ns.ok(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            method,
            "--max-time",
            "5",
            url,
        ]);
        out.trim().to_owned()
    };
    let base = format!("http://{pod_ip}:15090");
    // The scrape address stays open to the network...
    assert_eq!(
        status(&prometheus, "GET", &format!("{base}/metrics")),
        "200"
    );
    assert_eq!(status(&prometheus, "GET", &format!("{base}/ready")), "200");
    // ...its control endpoints do not.
    for (method, path) in [
        ("GET", "/config"),
        ("POST", "/reload"),
        ("GET", "/debug/route?url=http://x/"),
    ] {
        assert_eq!(
            status(&prometheus, method, &format!("{base}{path}")),
            "403",
            "{method} {path}"
        );
    }
    // On loopback they work.
    assert_eq!(status(&pod, "GET", "http://127.0.0.1:15090/config"), "200");

    // `admin.remote_control: true` opens them to the network.
    let Some(mut open) = Netns::new().ok() else {
        return;
    };
    let (_, open_ip) = link(&prometheus, &open);
    let config = sidecar("", "").replace(
        "admin: { listen: 127.0.0.1:15090 }",
        "admin: { listen: 0.0.0.0:15090, remote_control: true }",
    );
    start_sidecar(&mut open, &dir, &config);
    let url = format!("http://{open_ip}:15090/config");
    assert_eq!(status(&prometheus, "GET", &url), "200");
}
