//! `remora inject`: adds Remora to every pod template in Kubernetes YAML, as `linkerd inject`
//! and `istioctl kube-inject` do, offline and without a control plane.
//!
//! Each pod template (a Pod, or the template of a Deployment, StatefulSet, DaemonSet,
//! ReplicaSet, ReplicationController, Job or CronJob, also inside a `List`) gets:
//!
//! - `remora-init`, an init container that runs `remora iptables` with only `NET_ADMIN` and
//!   `NET_RAW`, so the app's traffic goes through the sidecar;
//! - `remora` as a native sidecar (an init container with `restartPolicy: Always`, Kubernetes
//!   1.29+) whose startup probe holds the app back until the proxy is ready, or, with
//!   `--legacy`, as the first ordinary container;
//! - the control file's ConfigMap and, when given, the identity Secret as volumes; scrape
//!   annotations for the metrics port; a termination grace period that covers the proxy's own
//!   `shutdown.grace + drain_timeout`.
//!
//! What was added is recorded in the `remora.io/injected` annotation (what it added, and any
//! value it replaced), so injecting again changes nothing and `--uninject` gives the input
//! back. Documents without a pod template, and templates left alone, are written out as they
//! came, byte for byte; a changed document is written out again by the YAML serializer.
//! Nothing is written unless every document could be handled.

use std::{fmt, time::Duration};

use serde_yaml::{Mapping, Value};

/// The annotation that marks an injected pod template and records what was added.
pub const INJECTED: &str = "remora.io/injected";
/// `disabled` leaves the workload without a sidecar.
pub const INJECT: &str = "remora.io/inject";
/// Inbound ports not redirected to the sidecar, comma-separated.
pub const SKIP_INBOUND_PORTS: &str = "remora.io/skip-inbound-ports";
/// Outbound destination ports not redirected, comma-separated.
pub const SKIP_OUTBOUND_PORTS: &str = "remora.io/skip-outbound-ports";
/// Outbound destination ranges not redirected, comma-separated CIDRs.
pub const SKIP_OUTBOUND_CIDRS: &str = "remora.io/skip-outbound-cidrs";
/// Ports proxied as opaque TCP without protocol detection, comma-separated (server-first
/// protocols: MySQL, SMTP, NATS), added to the control file's `opaque_ports`.
pub const OPAQUE_PORTS: &str = "remora.io/opaque-ports";
/// The sidecar's CPU request, memory request, CPU limit and memory limit.
pub const PROXY_CPU_REQUEST: &str = "remora.io/proxy-cpu-request";
/// See [`PROXY_CPU_REQUEST`].
pub const PROXY_MEMORY_REQUEST: &str = "remora.io/proxy-memory-request";
/// See [`PROXY_CPU_REQUEST`].
pub const PROXY_CPU_LIMIT: &str = "remora.io/proxy-cpu-limit";
/// See [`PROXY_CPU_REQUEST`].
pub const PROXY_MEMORY_LIMIT: &str = "remora.io/proxy-memory-limit";

/// The uid (and gid) the sidecar runs as; `remora iptables` exempts its traffic.
pub const PROXY_UID: u32 = 1337;
/// The inbound listener's port (what the pod's inbound TCP is redirected to).
pub const INBOUND_PORT: u16 = 15006;
/// The outbound listener's port (what the app's outbound TCP is redirected to).
pub const OUTBOUND_PORT: u16 = 15001;
/// The admin listener's port: probes and metrics.
pub const ADMIN_PORT: u16 = 15090;

const PROXY: &str = "remora";
const INIT: &str = "remora-init";
const CONFIG_VOLUME: &str = "remora-config";
const IDENTITY_VOLUME: &str = "remora-identity";
const CONFIG_DIR: &str = "/etc/remora";
const IDENTITY_DIR: &str = "/etc/remora-tls";
/// Added to the proxy's own shutdown budget for the kubelet's grace period.
const GRACE_MARGIN: Duration = Duration::from_secs(5);

/// What to inject.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Remora image.
    pub image: String,
    /// The image of the init step: Remora with `iptables-restore` on its path.
    pub init_image: String,
    /// The ConfigMap holding the control file as `remora.yaml`.
    pub config_map: String,
    /// The Secret holding the workload's mTLS identity (`ca.crt`, `tls.crt`, `tls.key`).
    pub identity_secret: Option<String>,
    /// An ordinary container instead of a native sidecar, for clusters before 1.29.
    pub legacy: bool,
}

/// A document that could not be handled (by `remora inject`, or `remora import`): which one,
/// where in it, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// 1-based document number.
    pub document: usize,
    /// `Kind name`, when the document got that far.
    pub resource: Option<String>,
    /// The field, dotted (`spec.template.spec.containers`); empty for the whole document.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Error {
    /// `document 2 (Deployment shop/orders): spec.template: message`; the input as a whole
    /// (document 0) is named by nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.document > 0 {
            write!(f, "document {}", self.document)?;
            if let Some(r) = &self.resource {
                write!(f, " ({r})")?;
            }
            if !self.path.is_empty() {
                write!(f, ": {}", self.path)?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl Error {
    /// An error in document `document` (1-based), of `resource`, at field `path`.
    pub fn new(
        document: usize,
        resource: Option<String>,
        path: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            document,
            resource,
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// Adds the sidecar to every pod template in `input` (one or more YAML documents).
pub fn inject(input: &str, opts: &Options) -> Result<String, Error> {
    let docs = documents(input)?;
    let grace = shutdown_budget(&docs, &opts.config_map)?;
    rewrite(docs, |doc, at| {
        templates(doc, at, &mut |template, path| {
            inject_template(template, path, opts, grace)
        })
    })
}

/// Takes out what [`inject`] added, giving back the documents it was given.
pub fn uninject(input: &str) -> Result<String, Error> {
    rewrite(documents(input)?, |doc, at| {
        templates(doc, at, &mut uninject_template)
    })
}

/// One document of the input: its text as it came (separator line included) and its value.
struct Document<'a> {
    number: usize,
    /// The `---` line that began it, if one did.
    separator: &'a str,
    text: &'a str,
    value: Value,
}

/// Splits the input at `---` lines and parses each document.
fn documents(input: &str) -> Result<Vec<Document<'_>>, Error> {
    let mut chunks: Vec<(&str, &str, usize)> = Vec::new();
    let (mut start, mut body_start, mut first_line, mut line_no) = (0, 0, 1, 1);
    let mut separator = "";
    let mut pos = 0;
    for line in input.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_separator = bare == "---"
            || bare.starts_with("--- ")
            || bare.starts_with("---\t")
            || bare.starts_with("--- #");
        if is_separator {
            if pos > start || !separator.is_empty() {
                chunks.push((separator, &input[body_start..pos], first_line));
            }
            start = pos;
            separator = &input[pos..pos + line.len()];
            body_start = pos + line.len();
            first_line = line_no + 1;
        }
        pos += line.len();
        line_no += 1;
    }
    if pos > body_start || !separator.is_empty() || chunks.is_empty() {
        chunks.push((separator, &input[body_start..], first_line));
    }
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, (separator, text, first_line))| {
            let value = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_yaml::from_str(text).map_err(|e| {
                    let (line, column) = e
                        .location()
                        .map_or((first_line, 1), |l| (first_line + l.line() - 1, l.column()));
                    Error {
                        document: i + 1,
                        resource: None,
                        path: String::new(),
                        message: format!("line {line} column {column}: {}", plain_yaml_error(&e)),
                    }
                })?
            };
            Ok(Document {
                number: i + 1,
                separator,
                text,
                value,
            })
        })
        .collect()
}

/// serde_yaml's message without the position it appends (it is given apart).
fn plain_yaml_error(e: &serde_yaml::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Applies `change` to every document; writes changed ones anew and the rest as they came.
fn rewrite(
    docs: Vec<Document<'_>>,
    mut change: impl FnMut(&mut Value, &At) -> Result<bool, Error>,
) -> Result<String, Error> {
    let mut out = String::new();
    for mut doc in docs {
        let at = At {
            document: doc.number,
            resource: resource_name(&doc.value),
        };
        out.push_str(doc.separator);
        if change(&mut doc.value, &at)? {
            let text =
                serde_yaml::to_string(&doc.value).map_err(|e| at.error("", e.to_string()))?;
            out.push_str(&text);
        } else {
            out.push_str(doc.text);
        }
    }
    Ok(out)
}

/// Which document is being handled, for errors.
struct At {
    document: usize,
    resource: Option<String>,
}

impl At {
    fn error(&self, path: &str, message: impl Into<String>) -> Error {
        Error::new(self.document, self.resource.clone(), path, message)
    }
}

fn resource_name(v: &Value) -> Option<String> {
    let kind = v.get("kind")?.as_str()?;
    let meta = v.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    Some(
        match meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
        {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        },
    )
}

/// Calls `each` on every pod template in `doc` (a `List`'s items included) with its field
/// path; true when any changed.
fn templates(
    doc: &mut Value,
    at: &At,
    each: &mut dyn FnMut(&mut Mapping, &str) -> Result<bool, Error>,
) -> Result<bool, Error> {
    walk(doc, "", at, each)
}

fn walk(
    v: &mut Value,
    prefix: &str,
    at: &At,
    each: &mut dyn FnMut(&mut Mapping, &str) -> Result<bool, Error>,
) -> Result<bool, Error> {
    let Some(kind) = v.get("kind").and_then(Value::as_str).map(str::to_owned) else {
        return Ok(false);
    };
    let field = |f: &str| join(prefix, f);
    let path: &[&str] = match kind.as_str() {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        k if k == "List" || k.ends_with("List") => {
            let Some(items) = v.get_mut("items") else {
                return Ok(false);
            };
            let Some(items) = items.as_sequence_mut() else {
                return Err(at.error(&field("items"), "expected a list"));
            };
            let mut changed = false;
            for (i, item) in items.iter_mut().enumerate() {
                changed |= walk(item, &field(&format!("items[{i}]")), at, each)?;
            }
            return Ok(changed);
        }
        _ => return Ok(false),
    };
    let mut node = &mut *v;
    let mut here = prefix.to_owned();
    for step in path {
        here = join(&here, step);
        node = match node {
            Value::Mapping(m) => m
                .get_mut(*step)
                .ok_or_else(|| at.error(&here, format!("{kind} has no {step}")))?,
            _ => return Err(at.error(&here, "expected a mapping")),
        };
    }
    match node {
        // Errors inside a template name the field; the document is named here.
        Value::Mapping(template) => each(template, &here).map_err(|e| Error {
            document: at.document,
            resource: at.resource.clone(),
            ..e
        }),
        _ => Err(at.error(&here, "expected a mapping")),
    }
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

/// The record kept in the `remora.io/injected` annotation.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
struct Record {
    /// The Remora version that injected.
    version: String,
    /// Pod annotations added (absent before).
    annotations: Vec<String>,
    /// Whether `terminationGracePeriodSeconds` was raised.
    #[serde(default)]
    raised_grace_period: bool,
    /// Its value before, when it was raised (`None`: it was unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grace_period_before: Option<u64>,
    /// Fields created empty to hold what was added: `metadata`, `annotations`,
    /// `initContainers`, `containers`, `volumes`.
    created: Vec<String>,
}

fn inject_template(
    template: &mut Mapping,
    path: &str,
    opts: &Options,
    grace: Duration,
) -> Result<bool, Error> {
    let annotations = template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default();
    if note(&annotations, INJECT) == Some("disabled") || annotations.contains_key(INJECTED) {
        return Ok(false);
    }
    let mut record = Record {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Record::default()
    };
    let spec_path = join(path, "spec");
    let spec = match template.get_mut("spec") {
        Some(Value::Mapping(s)) => s,
        Some(_) => return Err(field_error(&spec_path, "expected a mapping")),
        None => return Err(field_error(&spec_path, "a pod template needs a spec")),
    };
    check_list(spec, "containers", &spec_path)?;
    for list in ["initContainers", "containers"] {
        if let Some(Value::Sequence(cs)) = spec.get(list) {
            for c in cs {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                if name == PROXY || name == INIT {
                    return Err(field_error(
                        &join(&spec_path, list),
                        format!("a container is already named {name:?}: remove it, or set {INJECT}: disabled"),
                    ));
                }
            }
        }
    }

    let init = init_container(opts, &annotations)?;
    let proxy = proxy_container(opts, &annotations)?;
    let inits = list_mut(spec, "initContainers", &spec_path, &mut record)?;
    if opts.legacy {
        inits.insert(0, init);
        list_mut(spec, "containers", &spec_path, &mut record)?.insert(0, proxy);
    } else {
        inits.insert(0, proxy);
        inits.insert(0, init);
    }
    let volumes = list_mut(spec, "volumes", &spec_path, &mut record)?;
    for v in volumes.iter() {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        if name == CONFIG_VOLUME || name == IDENTITY_VOLUME {
            return Err(field_error(
                &join(&spec_path, "volumes"),
                format!("a volume is already named {name:?}"),
            ));
        }
    }
    volumes.push(yaml(&format!(
        "{{ name: {CONFIG_VOLUME}, configMap: {{ name: {} }} }}",
        quoted(&opts.config_map)
    )));
    if let Some(secret) = &opts.identity_secret {
        volumes.push(yaml(&format!(
            "{{ name: {IDENTITY_VOLUME}, secret: {{ secretName: {} }} }}",
            quoted(secret)
        )));
    }
    let needed = (grace + GRACE_MARGIN).as_secs_f64().ceil() as u64;
    let current = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_u64);
    // The kubelet's default is 30 seconds.
    if current.unwrap_or(30) < needed {
        record.raised_grace_period = true;
        record.grace_period_before = current;
        spec.insert("terminationGracePeriodSeconds".into(), needed.into());
    }

    let meta = match template.get("metadata") {
        Some(Value::Mapping(_)) => template.get_mut("metadata").and_then(Value::as_mapping_mut),
        Some(_) => return Err(field_error(&join(path, "metadata"), "expected a mapping")),
        None => {
            record.created.push("metadata".into());
            template.insert("metadata".into(), Value::Mapping(Mapping::new()));
            template.get_mut("metadata").and_then(Value::as_mapping_mut)
        }
    }
    .expect("metadata is a mapping");
    let notes = match meta.get("annotations") {
        Some(Value::Mapping(_)) => meta.get_mut("annotations").and_then(Value::as_mapping_mut),
        Some(_) => {
            return Err(field_error(
                &join(path, "metadata.annotations"),
                "expected a mapping",
            ))
        }
        None => {
            record.created.push("annotations".into());
            meta.insert("annotations".into(), Value::Mapping(Mapping::new()));
            meta.get_mut("annotations").and_then(Value::as_mapping_mut)
        }
    }
    .expect("annotations are a mapping");
    for (k, v) in [
        ("prometheus.io/scrape", "true".to_owned()),
        ("prometheus.io/port", ADMIN_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_owned()),
    ] {
        if !notes.contains_key(k) {
            notes.insert(k.into(), v.into());
            record.annotations.push(k.to_owned());
        }
    }
    let text = serde_json::to_string(&record).expect("a record serializes");
    notes.insert(INJECTED.into(), text.into());
    Ok(true)
}

fn uninject_template(template: &mut Mapping, path: &str) -> Result<bool, Error> {
    let Some(text) = template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(INJECTED))
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return Ok(false);
    };
    let record: Record = serde_json::from_str(&text).map_err(|e| {
        field_error(
            &join(path, &format!("metadata.annotations.{INJECTED}")),
            format!("not a record this version of remora reads: {e}"),
        )
    })?;
    if let Some(Value::Mapping(spec)) = template.get_mut("spec") {
        for list in ["initContainers", "containers"] {
            if let Some(Value::Sequence(cs)) = spec.get_mut(list) {
                cs.retain(|c| {
                    let name = c.get("name").and_then(Value::as_str);
                    name != Some(PROXY) && name != Some(INIT)
                });
            }
        }
        if let Some(Value::Sequence(vs)) = spec.get_mut("volumes") {
            vs.retain(|v| {
                let name = v.get("name").and_then(Value::as_str);
                name != Some(CONFIG_VOLUME) && name != Some(IDENTITY_VOLUME)
            });
        }
        for list in ["initContainers", "containers", "volumes"] {
            if record.created.iter().any(|c| c == list) {
                spec.remove(list);
            }
        }
        if record.raised_grace_period {
            match record.grace_period_before {
                Some(before) => {
                    spec.insert("terminationGracePeriodSeconds".into(), before.into());
                }
                None => {
                    spec.remove("terminationGracePeriodSeconds");
                }
            }
        }
    }
    if let Some(Value::Mapping(meta)) = template.get_mut("metadata") {
        if let Some(Value::Mapping(notes)) = meta.get_mut("annotations") {
            notes.remove(INJECTED);
            for k in &record.annotations {
                notes.remove(k.as_str());
            }
        }
        if record.created.iter().any(|c| c == "annotations") {
            meta.remove("annotations");
        }
    }
    if record.created.iter().any(|c| c == "metadata") {
        template.remove("metadata");
    }
    Ok(true)
}

/// An error in a template; the document is filled in by the caller's `At`.
fn field_error(path: &str, message: impl Into<String>) -> Error {
    Error {
        document: 0,
        resource: None,
        path: path.to_owned(),
        message: message.into(),
    }
}

fn check_list(spec: &Mapping, field: &str, spec_path: &str) -> Result<(), Error> {
    match spec.get(field) {
        Some(Value::Sequence(_)) => Ok(()),
        Some(_) => Err(field_error(&join(spec_path, field), "expected a list")),
        None => Err(field_error(
            &join(spec_path, field),
            "a pod spec needs containers",
        )),
    }
}

/// The list `field` of `spec`, created (and recorded) when absent.
fn list_mut<'a>(
    spec: &'a mut Mapping,
    field: &str,
    spec_path: &str,
    record: &mut Record,
) -> Result<&'a mut Vec<Value>, Error> {
    if !spec.contains_key(field) || spec.get(field) == Some(&Value::Null) {
        record.created.push(field.to_owned());
        spec.insert(field.into(), Value::Sequence(Vec::new()));
    }
    spec.get_mut(field)
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| field_error(&join(spec_path, field), "expected a list"))
}

/// The pod annotation `key`, trimmed.
fn note<'a>(annotations: &'a Mapping, key: &str) -> Option<&'a str> {
    annotations.get(key).and_then(Value::as_str).map(str::trim)
}

/// A small YAML literal of this module's own making.
fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("the injected YAML is well formed")
}

/// `s` as a YAML (JSON) string literal.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The `remora iptables` init container.
fn init_container(opts: &Options, annotations: &Mapping) -> Result<Value, Error> {
    let note = |k: &str| note(annotations, k);
    let mut args = vec![
        "iptables".to_owned(),
        "--proxy-uid".to_owned(),
        PROXY_UID.to_string(),
        "--proxy-gid".to_owned(),
        PROXY_UID.to_string(),
        "--inbound-port".to_owned(),
        INBOUND_PORT.to_string(),
        "--outbound-port".to_owned(),
        OUTBOUND_PORT.to_string(),
        "--admin-port".to_owned(),
        ADMIN_PORT.to_string(),
    ];
    for (key, flag, check) in [
        (SKIP_INBOUND_PORTS, "--skip-inbound-ports", Check::Ports),
        (SKIP_OUTBOUND_PORTS, "--skip-outbound-ports", Check::Ports),
        (SKIP_OUTBOUND_CIDRS, "--skip-outbound-cidrs", Check::Cidrs),
    ] {
        if let Some(v) = note(key).filter(|v| !v.is_empty()) {
            check.validate(key, v)?;
            args.push(flag.to_owned());
            args.push(v.split(',').map(str::trim).collect::<Vec<_>>().join(","));
        }
    }
    let mut c = yaml(&format!(
        r#"
name: {INIT}
image: {image}
args: []
securityContext:
  runAsUser: 0
  runAsNonRoot: false
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: false
  capabilities: {{ add: [NET_ADMIN, NET_RAW], drop: [ALL] }}
  seccompProfile: {{ type: RuntimeDefault }}
resources:
  requests: {{ cpu: 10m, memory: 16Mi }}
  limits: {{ memory: 64Mi }}
"#,
        image = quoted(&opts.init_image)
    ));
    c["args"] = Value::Sequence(args.into_iter().map(Value::from).collect());
    Ok(c)
}

/// The sidecar.
fn proxy_container(opts: &Options, annotations: &Mapping) -> Result<Value, Error> {
    let note = |k: &str| note(annotations, k);
    let quantity = |key: &str, default: &str| -> Result<String, Error> {
        match note(key) {
            Some(v) if is_quantity(v) => Ok(quoted(v)),
            Some(v) => Err(field_error(
                &format!("metadata.annotations.{key}"),
                format!("{v:?} is not a Kubernetes quantity (100m, 64Mi, 1)"),
            )),
            None => Ok(quoted(default)),
        }
    };
    // Sized from what the benchmarks measure: about 10 MiB at start, 25 MiB at peak under
    // load with a thousand idle connections held.
    let resources = format!(
        "{{ requests: {{ cpu: {}, memory: {} }}, limits: {{ {}memory: {} }} }}",
        quantity(PROXY_CPU_REQUEST, "50m")?,
        quantity(PROXY_MEMORY_REQUEST, "32Mi")?,
        match note(PROXY_CPU_LIMIT) {
            Some(_) => format!("cpu: {}, ", quantity(PROXY_CPU_LIMIT, "")?),
            None => String::new(),
        },
        quantity(PROXY_MEMORY_LIMIT, "128Mi")?,
    );
    let mut c = yaml(&format!(
        r#"
name: {PROXY}
image: {image}
args: [run, --config, {CONFIG_DIR}/remora.yaml]
ports:
  - {{ name: remora-inbound, containerPort: {INBOUND_PORT} }}
  - {{ name: remora-admin, containerPort: {ADMIN_PORT} }}
startupProbe:
  httpGet: {{ path: /ready, port: {ADMIN_PORT} }}
  periodSeconds: 1
  failureThreshold: 60
readinessProbe:
  httpGet: {{ path: /ready, port: {ADMIN_PORT} }}
  periodSeconds: 2
livenessProbe:
  httpGet: {{ path: /live, port: {ADMIN_PORT} }}
  periodSeconds: 10
resources: {resources}
securityContext:
  runAsUser: {PROXY_UID}
  runAsGroup: {PROXY_UID}
  runAsNonRoot: true
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities: {{ drop: [ALL] }}
  seccompProfile: {{ type: RuntimeDefault }}
volumeMounts:
  - {{ name: {CONFIG_VOLUME}, mountPath: {CONFIG_DIR}, readOnly: true }}
"#,
        image = quoted(&opts.image)
    ));
    if let Some(ports) = note(OPAQUE_PORTS).filter(|v| !v.is_empty()) {
        Check::Ports.validate(OPAQUE_PORTS, ports)?;
        let list: Vec<&str> = ports.split(',').map(str::trim).collect();
        c.as_mapping_mut()
            .expect("a container is a mapping")
            .insert(
                "env".into(),
                yaml(&format!(
                    "[{{ name: {}, value: {} }}]",
                    crate::config::OPAQUE_PORTS_ENV,
                    quoted(&list.join(","))
                )),
            );
    }
    if opts.identity_secret.is_some() {
        if let Some(Value::Sequence(mounts)) = c.get_mut("volumeMounts") {
            mounts.push(yaml(&format!(
                "{{ name: {IDENTITY_VOLUME}, mountPath: {IDENTITY_DIR}, readOnly: true }}"
            )));
        }
    }
    if !opts.legacy {
        c.as_mapping_mut()
            .expect("a container is a mapping")
            .insert("restartPolicy".into(), "Always".into());
    }
    Ok(c)
}

#[derive(Clone, Copy)]
enum Check {
    Ports,
    Cidrs,
}

impl Check {
    fn validate(self, key: &str, v: &str) -> Result<(), Error> {
        for item in v.split(',').map(str::trim) {
            let ok = match self {
                Check::Ports => item.parse::<u16>().is_ok_and(|p| p > 0),
                Check::Cidrs => crate::routing::tcp::Cidr::parse(item).is_ok(),
            };
            if !ok {
                let what = match self {
                    Check::Ports => "a port (1-65535)",
                    Check::Cidrs => "a CIDR such as 10.0.0.0/8",
                };
                return Err(field_error(
                    &format!("metadata.annotations.{key}"),
                    format!("{item:?} is not {what}"),
                ));
            }
        }
        Ok(())
    }
}

/// A Kubernetes resource quantity: a decimal number with an optional suffix.
fn is_quantity(v: &str) -> bool {
    const SUFFIXES: [&str; 14] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    SUFFIXES.iter().any(|s| {
        v.strip_suffix(s).is_some_and(|n| {
            !n.is_empty()
                && n.chars().all(|c| c.is_ascii_digit() || c == '.')
                && n.chars().filter(|c| *c == '.').count() <= 1
                && n != "."
        })
    })
}

/// The proxy's own shutdown budget (`shutdown.grace + drain_timeout`), from the control file
/// when the input carries its ConfigMap, otherwise the defaults (0s + 30s).
fn shutdown_budget(docs: &[Document<'_>], config_map: &str) -> Result<Duration, Error> {
    // The defaults of `shutdown:`.
    const DEFAULT_BUDGET: Duration = Duration::from_secs(30);
    for d in docs {
        let v = &d.value;
        let is_it = v.get("kind").and_then(Value::as_str) == Some("ConfigMap")
            && v.get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                == Some(config_map);
        let Some(text) = is_it
            .then(|| v.get("data").and_then(|d| d.get("remora.yaml")))
            .flatten()
        else {
            continue;
        };
        let at = At {
            document: d.number,
            resource: resource_name(v),
        };
        let text = text
            .as_str()
            .ok_or_else(|| at.error("data.remora.yaml", "expected the control file as text"))?;
        return crate::config::shutdown_budget("remora.yaml", text).map_err(|e| {
            at.error(
                "data.remora.yaml",
                format!("the control file does not parse:\n{e}"),
            )
        });
    }
    Ok(DEFAULT_BUDGET)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            image: "remora:test".into(),
            init_image: "remora-init:test".into(),
            config_map: "orders-remora".into(),
            identity_secret: None,
            legacy: false,
        }
    }

    const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: orders
  namespace: shop
spec:
  selector:
    matchLabels: { app: orders }
  template:
    metadata:
      labels: { app: orders }
    spec:
      containers:
        - name: app
          image: example/orders:1.0
          ports: [{ containerPort: 8080 }]
";

    fn values(text: &str) -> Vec<Value> {
        documents(text)
            .unwrap()
            .into_iter()
            .map(|d| d.value)
            .collect()
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_sequence()
            .map(|cs| {
                cs.iter()
                    .map(|c| c["name"].as_str().unwrap_or(""))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_deployment_gets_the_init_step_the_sidecar_and_its_volumes() {
        let out = inject(DEPLOYMENT, &opts()).unwrap();
        let v = &values(&out)[0];
        let pod = &v["spec"]["template"];
        let spec = &pod["spec"];
        assert_eq!(names(&spec["initContainers"]), ["remora-init", "remora"]);
        assert_eq!(names(&spec["containers"]), ["app"]);
        let init = &spec["initContainers"][0];
        assert_eq!(init["args"][0], "iptables");
        assert_eq!(init["image"], "remora-init:test");
        assert_eq!(
            init["securityContext"]["capabilities"]["add"],
            yaml("[NET_ADMIN, NET_RAW]")
        );
        let proxy = &spec["initContainers"][1];
        assert_eq!(proxy["restartPolicy"], "Always");
        assert_eq!(proxy["image"], "remora:test");
        assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(proxy["livenessProbe"]["httpGet"]["path"], "/live");
        let sc = &proxy["securityContext"];
        assert_eq!(sc["runAsUser"], 1337);
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], yaml("[ALL]"));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(spec["volumes"][0]["configMap"]["name"], "orders-remora");
        // The default shutdown budget (30s) and a margin.
        assert_eq!(spec["terminationGracePeriodSeconds"], 35);
        let notes = &pod["metadata"]["annotations"];
        assert_eq!(notes["prometheus.io/scrape"], "true");
        assert_eq!(notes["prometheus.io/port"], "15090");
        assert!(notes[INJECTED].as_str().unwrap().contains("\"version\""));
        // The rest of the document is as it was.
        assert_eq!(pod["metadata"]["labels"]["app"], "orders");
        assert_eq!(v["metadata"]["namespace"], "shop");
    }

    #[test]
    fn every_workload_kind_and_lists_are_injected_where_their_pods_are() {
        let pod_spec = "containers: [{ name: app, image: a }]";
        let template = format!("{{ metadata: {{ labels: {{ a: b }} }}, spec: {{ {pod_spec} }} }}");
        let cases = [
            (format!("kind: Pod\napiVersion: v1\nmetadata: {{ name: p }}\nspec: {{ {pod_spec} }}\n"), vec![]),
            (format!("kind: StatefulSet\nspec: {{ template: {template} }}\n"), vec!["spec", "template"]),
            (format!("kind: DaemonSet\nspec: {{ template: {template} }}\n"), vec!["spec", "template"]),
            (format!("kind: ReplicaSet\nspec: {{ template: {template} }}\n"), vec!["spec", "template"]),
            (format!("kind: Job\nspec: {{ template: {template} }}\n"), vec!["spec", "template"]),
            (
                format!("kind: CronJob\nspec: {{ schedule: '* * * * *', jobTemplate: {{ spec: {{ template: {template} }} }} }}\n"),
                vec!["spec", "jobTemplate", "spec", "template"],
            ),
        ];
        for (doc, path) in &cases {
            let v = &values(&inject(doc, &opts()).unwrap())[0];
            let pod = path.iter().fold(v, |v, k| &v[*k]);
            assert_eq!(
                names(&pod["spec"]["initContainers"]),
                ["remora-init", "remora"],
                "{doc}"
            );
        }
        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n  - {{ kind: Service, metadata: {{ name: s }} }}\n  - {{ kind: Deployment, spec: {{ template: {template} }} }}\n"
        );
        let v = &values(&inject(&list, &opts()).unwrap())[0];
        assert_eq!(
            v["items"][0],
            yaml("{ kind: Service, metadata: { name: s } }")
        );
        assert_eq!(
            names(&v["items"][1]["spec"]["template"]["spec"]["initContainers"]),
            ["remora-init", "remora"]
        );
    }

    const MIXED: &str = "\
# The service, as its owner wrote it.
apiVersion: v1
kind: Service
metadata: {name: orders}   # odd spacing kept
spec:
  ports: [ {port: 80} ]
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: orders }
spec:
  template:
    metadata:
      annotations:
        prometheus.io/scrape: \"false\"
        team: shop
    spec:
      terminationGracePeriodSeconds: 10
      initContainers:
        - { name: migrate, image: m }
      containers:
        - { name: app, image: a }
      volumes:
        - { name: data, emptyDir: {} }
---
apiVersion: v1
kind: Pod
metadata: { name: quiet, annotations: { remora.io/inject: disabled } }
spec:
  containers: [{ name: app, image: a }]
";

    #[test]
    fn other_documents_come_out_byte_for_byte_and_owners_choices_are_kept() {
        let out = inject(MIXED, &opts()).unwrap();
        let service = MIXED.split("---\n").next().unwrap();
        assert!(out.starts_with(service), "{out}");
        let disabled = MIXED.rsplit("---\n").next().unwrap();
        assert!(out.ends_with(disabled), "{out}");
        let v = values(&out);
        let pod = &v[1]["spec"]["template"];
        assert_eq!(
            names(&pod["spec"]["initContainers"]),
            ["remora-init", "remora", "migrate"]
        );
        assert_eq!(names(&pod["spec"]["volumes"]), ["data", "remora-config"]);
        // The owner's scrape choice stands; the grace period grew to cover the drain.
        assert_eq!(
            pod["metadata"]["annotations"]["prometheus.io/scrape"],
            "false"
        );
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 35);
    }

    #[test]
    fn injecting_twice_is_injecting_once_and_uninject_gives_the_input_back() {
        for input in [DEPLOYMENT, MIXED] {
            let once = inject(input, &opts()).unwrap();
            assert_eq!(inject(&once, &opts()).unwrap(), once);
            let back = uninject(&once).unwrap();
            assert_eq!(values(&back), values(input), "{back}");
            // Nothing injected: nothing to take out.
            assert_eq!(uninject(input).unwrap(), input);
        }
        let legacy = Options {
            legacy: true,
            identity_secret: Some("orders-tls".into()),
            ..opts()
        };
        let once = inject(DEPLOYMENT, &legacy).unwrap();
        assert_eq!(values(&uninject(&once).unwrap()), values(DEPLOYMENT));
    }

    #[test]
    fn legacy_mode_is_an_ordinary_first_container() {
        let o = Options {
            legacy: true,
            ..opts()
        };
        let v = &values(&inject(DEPLOYMENT, &o).unwrap())[0];
        let spec = &v["spec"]["template"]["spec"];
        assert_eq!(names(&spec["initContainers"]), ["remora-init"]);
        assert_eq!(names(&spec["containers"]), ["remora", "app"]);
        assert!(spec["containers"][0].get("restartPolicy").is_none());
    }

    #[test]
    fn the_identity_secret_is_mounted_for_the_sidecar() {
        let o = Options {
            identity_secret: Some("orders-tls".into()),
            ..opts()
        };
        let v = &values(&inject(DEPLOYMENT, &o).unwrap())[0];
        let spec = &v["spec"]["template"]["spec"];
        assert_eq!(spec["volumes"][1]["secret"]["secretName"], "orders-tls");
        let mounts = &spec["initContainers"][1]["volumeMounts"];
        assert_eq!(mounts[1]["mountPath"], "/etc/remora-tls");
    }

    #[test]
    fn annotations_tune_the_redirect_and_the_resources() {
        let doc = DEPLOYMENT.replace(
            "      labels: { app: orders }\n",
            "      labels: { app: orders }\n      annotations:\n        remora.io/opaque-ports: \"3306, 4222\"\n        remora.io/skip-inbound-ports: \"9000, 9001\"\n        remora.io/skip-outbound-cidrs: 10.0.0.0/8\n        remora.io/proxy-memory-limit: 256Mi\n        remora.io/proxy-cpu-limit: \"1\"\n",
        );
        let v = &values(&inject(&doc, &opts()).unwrap())[0];
        let spec = &v["spec"]["template"]["spec"];
        let args: Vec<&str> = spec["initContainers"][0]["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
        assert_eq!(after("--skip-inbound-ports"), "9000,9001");
        assert_eq!(after("--skip-outbound-cidrs"), "10.0.0.0/8");
        assert_eq!(after("--proxy-uid"), "1337");
        let env = &spec["initContainers"][1]["env"][0];
        assert_eq!(
            (env["name"].as_str(), env["value"].as_str()),
            (Some("REMORA_OPAQUE_PORTS"), Some("3306,4222"))
        );
        let res = &spec["initContainers"][1]["resources"];
        assert_eq!(res["limits"]["memory"], "256Mi");
        assert_eq!(res["limits"]["cpu"], "1");
        assert_eq!(res["requests"]["memory"], "32Mi");
    }

    #[test]
    fn the_grace_period_follows_the_control_file_in_the_same_input() {
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: orders-remora }\ndata:\n  remora.yaml: |\n    version: 1\n    shutdown: { grace: 5s, drain_timeout: 50s }\n    outbound: { listen: 127.0.0.1:15001 }\n---\n";
        let v = values(&inject(&format!("{cm}{DEPLOYMENT}"), &opts()).unwrap());
        assert_eq!(
            v[1]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            60
        );
        let bad = cm.replace("drain_timeout: 50s", "drain_timeout: soon");
        let e = inject(&format!("{bad}{DEPLOYMENT}"), &opts()).unwrap_err();
        assert_eq!(
            (e.document, e.path.as_str()),
            (1, "data.remora.yaml"),
            "{e}"
        );
        assert!(e.to_string().contains("ConfigMap orders-remora"), "{e}");
    }

    #[test]
    fn a_malformed_document_is_named_with_its_field_and_nothing_is_written() {
        let not_a_list = DEPLOYMENT.replace(
            "      containers:\n        - name: app\n          image: example/orders:1.0\n          ports: [{ containerPort: 8080 }]\n",
            "      containers: app\n",
        );
        let e = inject(&format!("kind: Service\n---\n{not_a_list}"), &opts()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "document 2 (Deployment shop/orders): spec.template.spec.containers: expected a list"
        );
        let e = inject("kind: Pod\nspec: [\n", &opts()).unwrap_err();
        assert!(e.to_string().starts_with("document 1: line 3"), "{e}");
        let e = inject(
            "kind: Deployment\nmetadata: { name: x }\nspec: {}\n",
            &opts(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "document 1 (Deployment x): spec.template: Deployment has no template"
        );
        let taken = DEPLOYMENT.replace("- name: app", "- name: remora");
        assert!(inject(&taken, &opts())
            .unwrap_err()
            .to_string()
            .contains("already named \"remora\""));
        let bad_port = DEPLOYMENT.replace(
            "      labels: { app: orders }\n",
            "      labels: { app: orders }\n      annotations: { remora.io/skip-inbound-ports: \"80,http\" }\n",
        );
        let e = inject(&bad_port, &opts()).unwrap_err();
        assert!(e.to_string().contains("\"http\" is not a port"), "{e}");
        let bad_quantity = DEPLOYMENT.replace(
            "      labels: { app: orders }\n",
            "      labels: { app: orders }\n      annotations: { remora.io/proxy-memory-limit: lots }\n",
        );
        assert!(inject(&bad_quantity, &opts())
            .unwrap_err()
            .to_string()
            .contains("not a Kubernetes quantity"));
    }

    #[test]
    fn quantities_are_kubernetes_quantities() {
        for ok in ["1", "0.5", "100m", "64Mi", "1Gi", "2k"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "lots", "1.2.3", "-1", "64 Mi", "."] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
