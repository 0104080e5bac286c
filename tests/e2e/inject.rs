//! `remora inject` as users run it: the binary on the shipped example and on every workload
//! kind, its output validated against the real Kubernetes schemas (`kubernetes-validate
//! --strict`, for 1.29 and the newest it has), the app and sidecar containers held to Pod
//! Security "restricted", and bad input refused with nothing printed.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::Deserialize;
use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `remora inject ARGS` with `stdin`; (exit code, stdout, stderr).
fn inject(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
        .arg("inject")
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The example's inject command, as deploy/app.yaml documents it.
const EXAMPLE: [&str; 6] = [
    "-f",
    "deploy/app.yaml",
    "--config-map",
    "orders-remora",
    "--identity-secret",
    "orders-identity",
];

#[test]
fn the_shipped_injected_example_is_what_remora_inject_writes() {
    let (code, out, err) = inject(&EXAMPLE, "");
    assert_eq!(code, 0, "{err}");
    let shipped = std::fs::read_to_string(root().join("deploy/injected.yaml")).unwrap();
    assert!(
        out == shipped,
        "deploy/injected.yaml is stale: run `remora inject {}` > deploy/injected.yaml",
        EXAMPLE.join(" ")
    );
    // Stdin gives the same, and a second pass changes nothing.
    let app = std::fs::read_to_string(root().join("deploy/app.yaml")).unwrap();
    let (_, from_stdin, _) = inject(&EXAMPLE[2..], &app);
    assert_eq!(from_stdin, out);
    let (_, again, err) = inject(&["-"], &out);
    assert_eq!(again, out, "{err}");
    let (_, by_name, _) = inject(
        &[
            "deploy/app.yaml",
            "--config-map",
            "orders-remora",
            "--identity-secret",
            "orders-identity",
        ],
        "",
    );
    assert_eq!(by_name, out);
    let (code, back, _) = inject(&["--uninject"], &out);
    assert_eq!(code, 0);
    assert_eq!(docs(&back), docs(&app));
}

/// Every document of `text` as its own file (a `List`'s items too: the schemas have none
/// for `List`), for kubernetes-validate.
fn split_for_validation(name: &str, text: &str) -> PathBuf {
    let mut out = String::new();
    for d in docs(text) {
        let items = if d["kind"] == "List" {
            d["items"].as_sequence().unwrap().clone()
        } else {
            vec![d]
        };
        for item in items {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(&item).unwrap());
        }
    }
    let path =
        std::env::temp_dir().join(format!("remora-inject-{}-{name}.yaml", std::process::id()));
    std::fs::write(&path, out).unwrap();
    path
}

fn kubernetes_validate(path: &Path, version: Option<&str>) {
    let mut cmd = Command::new("kubernetes-validate");
    cmd.arg("--strict").arg("--quiet");
    if let Some(v) = version {
        cmd.args(["-k", v]);
    }
    let out = cmd.arg(path).output().unwrap_or_else(|e| {
        panic!("kubernetes-validate ({e}): tests/install-deps.sh installs it from PyPI")
    });
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("ERROR"),
        "{} against {}: {text}",
        path.display(),
        version.unwrap_or("the newest schema")
    );
    assert!(!text.contains("Couldn't find schema"), "{text}");
}

#[test]
fn manifests_and_injected_workloads_pass_the_kubernetes_schemas() {
    let workloads =
        std::fs::read_to_string(root().join("tests/e2e/fixtures/workloads.yaml")).unwrap();
    let (code, injected, err) = inject(&["-f", "tests/e2e/fixtures/workloads.yaml"], "");
    assert_eq!(code, 0, "{err}");
    let (_, legacy, _) = inject(&["--legacy"], &workloads);
    let files = [
        split_for_validation(
            "app",
            &std::fs::read_to_string(root().join("deploy/app.yaml")).unwrap(),
        ),
        split_for_validation(
            "injected",
            &std::fs::read_to_string(root().join("deploy/injected.yaml")).unwrap(),
        ),
        split_for_validation("workloads", &workloads),
        split_for_validation("workloads-injected", &injected),
        split_for_validation("workloads-legacy", &legacy),
    ];
    for f in &files {
        for version in [Some("1.29.0"), None] {
            kubernetes_validate(f, version);
        }
        let _ = std::fs::remove_file(f);
    }
}

/// The pod specs of `docs`, with their paths.
fn pod_specs(docs: &[Value]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for d in docs {
        let items = if d["kind"] == "List" {
            d["items"].as_sequence().unwrap().clone()
        } else {
            vec![d.clone()]
        };
        for item in items {
            let kind = item["kind"].as_str().unwrap_or("").to_owned();
            let spec = match kind.as_str() {
                "Pod" => item["spec"].clone(),
                "CronJob" => item["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone(),
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                    item["spec"]["template"]["spec"].clone()
                }
                _ => continue,
            };
            out.push((
                format!("{kind} {}", item["metadata"]["name"].as_str().unwrap_or("")),
                spec,
            ));
        }
    }
    out
}

/// Pod Security Standards, "restricted" (Kubernetes 1.29), for one container of a pod.
fn restricted_violations(pod: &Value, c: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let sc = &c["securityContext"];
    let psc = &pod["securityContext"];
    let name = c["name"].as_str().unwrap_or("?");
    if sc["privileged"] == true {
        v.push(format!("{name}: privileged"));
    }
    if sc["allowPrivilegeEscalation"] != false {
        v.push(format!("{name}: allowPrivilegeEscalation must be false"));
    }
    let drops = sc["capabilities"]["drop"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    if !drops.iter().any(|d| d == "ALL") {
        v.push(format!("{name}: capabilities.drop must include ALL"));
    }
    for add in sc["capabilities"]["add"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        if add != "NET_BIND_SERVICE" {
            v.push(format!("{name}: adds capability {add:?}"));
        }
    }
    let non_root =
        sc["runAsNonRoot"] == true || (sc["runAsNonRoot"].is_null() && psc["runAsNonRoot"] == true);
    if !non_root {
        v.push(format!("{name}: runAsNonRoot must be true"));
    }
    if sc["runAsUser"] == 0 || (sc["runAsUser"].is_null() && psc["runAsUser"] == 0) {
        v.push(format!("{name}: runs as uid 0"));
    }
    let seccomp = if sc["seccompProfile"]["type"].is_null() {
        &psc["seccompProfile"]["type"]
    } else {
        &sc["seccompProfile"]["type"]
    };
    if seccomp != "RuntimeDefault" && seccomp != "Localhost" {
        v.push(format!(
            "{name}: seccompProfile must be RuntimeDefault or Localhost"
        ));
    }
    for p in c["ports"].as_sequence().into_iter().flatten() {
        if !p["hostPort"].is_null() {
            v.push(format!("{name}: hostPort"));
        }
    }
    v
}

#[test]
fn the_app_and_sidecar_containers_meet_pod_security_restricted() {
    let shipped = std::fs::read_to_string(root().join("deploy/injected.yaml")).unwrap();
    let pods = pod_specs(&docs(&shipped));
    assert_eq!(pods.len(), 1);
    for (what, pod) in &pods {
        for key in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(pod[key] != true, "{what}: {key}");
        }
        for vol in pod["volumes"].as_sequence().into_iter().flatten() {
            let allowed = [
                "configMap",
                "secret",
                "emptyDir",
                "projected",
                "downwardAPI",
                "persistentVolumeClaim",
                "ephemeral",
                "csi",
            ];
            assert!(
                allowed.iter().any(|k| !vol[*k].is_null()),
                "{what}: volume {vol:?}"
            );
        }
        let mut checked = 0;
        for list in ["initContainers", "containers"] {
            for c in pod[list].as_sequence().into_iter().flatten() {
                // The init step needs NET_ADMIN and root for iptables: the one container the
                // restricted profile cannot cover (Istio's and Linkerd's are the same).
                if c["name"] == "remora-init" {
                    assert_eq!(
                        c["securityContext"]["capabilities"]["add"],
                        serde_yaml::from_str::<Value>("[NET_ADMIN, NET_RAW]").unwrap()
                    );
                    continue;
                }
                let bad = restricted_violations(pod, c);
                assert!(bad.is_empty(), "{what}: {bad:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 2, "{what}: the app and the sidecar");
    }
}

#[test]
fn a_workload_comes_up_in_order_and_stops_in_time() {
    let (_, out, _) = inject(&["-f", "tests/e2e/fixtures/workloads.yaml"], "");
    for (what, pod) in pod_specs(&docs(&out)) {
        let inits = pod["initContainers"].as_sequence().unwrap();
        assert_eq!(inits[0]["name"], "remora-init", "{what}");
        assert_eq!(inits[1]["name"], "remora", "{what}");
        assert_eq!(inits[1]["restartPolicy"], "Always", "{what}");
        assert_eq!(
            inits[1]["startupProbe"]["httpGet"]["path"], "/ready",
            "{what}"
        );
        // Redirect rules before the proxy, the proxy before the app; the grace period
        // covers the default drain and keeps a longer one the owner set.
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        let want = if what.starts_with("StatefulSet") {
            120
        } else {
            35
        };
        assert_eq!(grace, want, "{what}");
    }
}

#[test]
fn bad_input_is_refused_by_document_and_field_and_nothing_is_printed() {
    let (code, out, err) = inject(
        &[],
        "kind: Service\nmetadata: { name: s }\n---\nkind: Deployment\nmetadata: { name: d }\nspec: { template: { spec: { containers: {} } } }\n",
    );
    assert_eq!(code, 64);
    assert_eq!(out, "");
    assert!(
        err.contains("document 2 (Deployment d): spec.template.spec.containers: expected a list"),
        "{err}"
    );
    let (code, out, err) = inject(&["-f", "no/such/file.yaml"], "");
    assert_eq!((code, out.as_str()), (64, ""));
    assert!(err.contains("no/such/file.yaml"), "{err}");
}
