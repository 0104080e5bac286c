//! `remora schema`: the JSON Schema editors validate the control file with, checked by the
//! `jsonschema` validator (Python, draft 2020-12) against every shipped file and a set of
//! broken ones that `check` rejects too.

use std::{path::Path, process::Command};

/// Broken files: the schema must refuse each, as `check` does.
const BROKEN: &[(&str, &str)] = &[
    ("unknown section", "version: 1\noutbound: { listen: 127.0.0.1:0 }\nsurprise: {}\n"),
    ("version as a string", "version: \"1\"\noutbound: { listen: 127.0.0.1:0 }\n"),
    ("version 2", "version: 2\noutbound: { listen: 127.0.0.1:0 }\n"),
    ("a number that is a word", "version: 1\nlimits: { max_connections: lots }\noutbound: { listen: 127.0.0.1:0 }\n"),
    ("a misspelt route field", "version: 1\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      matc: { host: a }\n      direct_response: { status: 200 }\n"),
    ("a route without a name", "version: 1\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - direct_response: { status: 200 }\n"),
    ("an unknown balancer", "version: 1\noutbound: { listen: 127.0.0.1:0 }\nservices:\n  s: { endpoints: [\"127.0.0.1:1\"], load_balancer: leastrequest }\n"),
    ("a duration without a unit", "version: 1\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      timeout: 2x\n      direct_response: { status: 200 }\n"),
    ("two path kinds", "version: 1\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: { path: { exact: /a, prefix: /b } }\n      direct_response: { status: 200 }\n"),
    ("an unknown retry condition", "version: 1\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      backends: [{ service: s }]\n      retry: { on: [sometimes] }\nservices:\n  s: { endpoints: [\"127.0.0.1:1\"] }\n"),
    ("an unknown log format", "version: 1\nlog: { format: xml }\noutbound: { listen: 127.0.0.1:0 }\n"),
];

const VALIDATE: &str = r#"
import json, sys
import jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
for path in sys.argv[2:]:
    errors = sorted(validator.iter_errors(json.load(open(path))), key=lambda e: e.path)
    print(path, "ok" if not errors else "invalid: " + errors[0].message)
"#;

#[test]
fn the_schema_accepts_every_shipped_file_and_refuses_broken_ones() {
    let dir = std::env::temp_dir().join(format!("remora-schema-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_remora"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let schema = dir.join("schema.json");
    std::fs::write(&schema, &out.stdout).unwrap();

    // Documents as JSON (read as YAML 1.2, like the proxy and editors' language servers).
    let as_json = |name: &str, yaml: &str| {
        let value: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, value.to_string()).unwrap();
        path
    };
    let mut shipped = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for sub in [root.clone(), root.join("mtls")] {
        for entry in std::fs::read_dir(&sub).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && !name.ends_with(".routes-test.yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                shipped.push(as_json(&name, &text));
            }
        }
    }
    assert!(shipped.len() >= 3, "{shipped:?}");
    let mut broken = Vec::new();
    for (i, (why, text)) in BROKEN.iter().enumerate() {
        assert!(
            remora::config::parse("f.yaml", text).is_err(),
            "check accepts {why}"
        );
        broken.push((why, as_json(&format!("broken-{i}"), text)));
    }

    let script = dir.join("validate.py");
    std::fs::write(&script, VALIDATE).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(&schema)
        .args(&shipped)
        .args(broken.iter().map(|(_, p)| p))
        .output()
        .expect("python3 with jsonschema (tests/install-deps.sh installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in &shipped {
        let line = format!("{} ok", path.display());
        assert!(
            report.lines().any(|l| l == line),
            "refused: {path:?}\n{report}"
        );
    }
    for (why, path) in &broken {
        let prefix = format!("{} invalid: ", path.display());
        assert!(
            report.lines().any(|l| l.starts_with(&prefix)),
            "the schema accepts {why}\n{report}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
