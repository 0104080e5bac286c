//! `remora import`: Gateway API routes (`HTTPRoute`, `GRPCRoute`, GAMMA-style with Services
//! as parents, or with `hostnames`) and the Services they name, turned into a Remora control
//! file, offline: Linkerd and Istio users bring their routes along without a control plane.
//!
//! Every field either maps to the control file or stops the import with its path; nothing is
//! dropped in silence. Where Remora is coarser than the Gateway API in a way that does not
//! change which requests match or where they go (a parent's port, say), the import goes on
//! and says so in a note, printed on stderr and as a comment at the top of the output.

use std::{collections::BTreeMap, fmt};

use serde_yaml::{Mapping, Value};

/// A resource that could not be imported: which document, which field, and why (the error
/// type `remora inject` reports with too).
pub use crate::inject::Error;

/// The control file made, and the notes about what Remora does more coarsely.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// The control file's text.
    pub text: String,
    /// What the reader should know (each also a comment at the top of `text`).
    pub notes: Vec<String>,
}

/// The cluster domain of Services' DNS names.
const CLUSTER_DOMAIN: &str = "cluster.local";

/// Turns the Gateway API routes and Services in `input` into a control file with an outbound
/// listener; `namespace` is the namespace of resources that name none.
pub fn import(input: &str, namespace: &str) -> Result<Imported, Error> {
    let mut services: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut routes: Vec<(Precedence, Value)> = Vec::new();
    let mut used: BTreeMap<String, Value> = BTreeMap::new();
    let mut notes = Vec::new();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(input)
        .enumerate()
        .map(|(i, d)| {
            serde::Deserialize::deserialize(d)
                .map_err(|e: serde_yaml::Error| Error::new(i + 1, None, "", e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    // Services first, wherever they are in the input, for the routes' ports and protocols.
    for d in docs.iter().flat_map(items) {
        if d.get("kind").and_then(Value::as_str) == Some("Service") {
            let (ns, name) = ns_name(d, namespace);
            services.insert((ns, name), d.clone());
        }
    }
    for (i, d) in docs.iter().enumerate() {
        for item in items(d) {
            let kind = item.get("kind").and_then(Value::as_str).unwrap_or("");
            let grpc = match kind {
                "HTTPRoute" => false,
                "GRPCRoute" => true,
                _ => continue,
            };
            let (ns, name) = ns_name(item, namespace);
            let mut at = At {
                document: i + 1,
                resource: format!("{kind} {ns}/{name}"),
                namespace: ns,
                name,
                notes: &mut notes,
            };
            route(item, grpc, &services, &mut at, &mut routes, &mut used)?;
        }
    }
    if routes.is_empty() {
        return Err(Error::new(
            1,
            None,
            "",
            "no HTTPRoute or GRPCRoute in the input",
        ));
    }
    // Remora takes the first route that matches; the Gateway API the most specific one.
    routes.sort_by(|a, b| a.0.cmp(&b.0));
    let routes: Vec<Value> = routes.into_iter().map(|(_, r)| r).collect();
    let mut file = Mapping::new();
    file.insert("version".into(), 1.into());
    let mut outbound = Mapping::new();
    outbound.insert("listen".into(), "127.0.0.1:15001".into());
    outbound.insert("unmatched".into(), "passthrough".into());
    outbound.insert("routes".into(), Value::Sequence(routes));
    file.insert("outbound".into(), Value::Mapping(outbound));
    file.insert(
        "services".into(),
        Value::Mapping(used.into_iter().map(|(k, v)| (k.into(), v)).collect()),
    );
    let body = serde_yaml::to_string(&Value::Mapping(file)).expect("a control file serializes");
    let mut text = String::from("# Made by `remora import` from Gateway API resources.\n");
    for n in &notes {
        text.push_str(&format!("# note: {n}\n"));
    }
    text.push_str(&body);
    Ok(Imported { text, notes })
}

/// A document, or a `List`'s items.
fn items(d: &Value) -> Vec<&Value> {
    match d.get("kind").and_then(Value::as_str) {
        Some(k) if k == "List" || k.ends_with("List") => d
            .get("items")
            .and_then(Value::as_sequence)
            .map(|s| s.iter().collect())
            .unwrap_or_default(),
        _ => vec![d],
    }
}

fn ns_name(v: &Value, default_ns: &str) -> (String, String) {
    let meta = v.get("metadata");
    let get = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    (
        get("namespace").unwrap_or(default_ns).to_owned(),
        get("name").unwrap_or("").to_owned(),
    )
}

/// The resource being imported, for errors and notes.
struct At<'a> {
    document: usize,
    resource: String,
    namespace: String,
    name: String,
    notes: &'a mut Vec<String>,
}

impl At<'_> {
    fn error(&self, path: &str, message: impl Into<String>) -> Error {
        Error::new(self.document, Some(self.resource.clone()), path, message)
    }

    fn note(&mut self, path: &str, message: impl fmt::Display) {
        self.notes
            .push(format!("{} {path}: {message}", self.resource));
    }
}

/// The fields of `v` (a mapping) must all be in `known`; any other stops the import.
fn only(v: &Value, known: &[&str], path: &str, at: &At<'_>) -> Result<(), Error> {
    let Some(m) = v.as_mapping() else {
        return Err(at.error(path, "expected a mapping"));
    };
    for k in m.keys() {
        let k = k.as_str().unwrap_or("");
        if !known.contains(&k) {
            return Err(at.error(
                &join(path, k),
                format!("{k} has no counterpart in a Remora control file"),
            ));
        }
    }
    Ok(())
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn seq<'a>(v: &'a Value, field: &str, path: &str, at: &At<'_>) -> Result<Vec<&'a Value>, Error> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Sequence(s)) => Ok(s.iter().collect()),
        Some(_) => Err(at.error(&join(path, field), "expected a list")),
    }
}

fn text<'a>(v: &'a Value, field: &str, path: &str, at: &At<'_>) -> Result<Option<&'a str>, Error> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(at.error(&join(path, field), "expected text")),
    }
}

/// The hosts a route's requests are addressed to: its `hostnames`, else the DNS names of its
/// parent Services (as callers write them: `inventory`, `inventory.shop`, ...).
fn hosts(spec: &Value, at: &mut At<'_>) -> Result<Vec<Option<String>>, Error> {
    let hostnames: Vec<Option<String>> = seq(spec, "hostnames", "spec", at)?
        .into_iter()
        .map(|h| h.as_str().map(str::to_owned))
        .collect();
    let mut out = Vec::new();
    for (i, p) in seq(spec, "parentRefs", "spec", at)?.iter().enumerate() {
        let path = format!("spec.parentRefs[{i}]");
        only(
            p,
            &["group", "kind", "name", "namespace", "port", "sectionName"],
            &path,
            at,
        )?;
        let kind = text(p, "kind", &path, at)?.unwrap_or("Gateway");
        let name = text(p, "name", &path, at)?
            .ok_or_else(|| at.error(&join(&path, "name"), "a parent needs a name"))?;
        match kind {
            "Service" => {
                let ns = text(p, "namespace", &path, at)?
                    .unwrap_or(&at.namespace)
                    .to_owned();
                if let Some(port) = p.get("port").and_then(Value::as_u64) {
                    at.note(
                        &join(&path, "port"),
                        format!(
                            "Remora matches the Service's host names on any port, not only {port}"
                        ),
                    );
                }
                out.extend(
                    [
                        name.to_owned(),
                        format!("{name}.{ns}"),
                        format!("{name}.{ns}.svc"),
                        format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}"),
                    ]
                    .map(Some),
                );
            }
            "Gateway" => at.note(
                &path,
                format!(
                    "the routes of Gateway {name} are imported for the sidecar's outbound listener"
                ),
            ),
            other => {
                return Err(at.error(
                    &join(&path, "kind"),
                    format!("a parent of kind {other} cannot be imported (Service or Gateway)"),
                ))
            }
        }
    }
    // Hostnames, when given, are what requests are addressed to; else the parent Services'
    // names; with neither, every host.
    let mut out = if hostnames.is_empty() { out } else { hostnames };
    if out.is_empty() {
        out.push(None);
    }
    out.dedup();
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn route(
    item: &Value,
    grpc: bool,
    services: &BTreeMap<(String, String), Value>,
    at: &mut At<'_>,
    routes: &mut Vec<(Precedence, Value)>,
    used: &mut BTreeMap<String, Value>,
) -> Result<(), Error> {
    only(
        item,
        &["apiVersion", "kind", "metadata", "spec", "status"],
        "",
        at,
    )?;
    let spec = item
        .get("spec")
        .ok_or_else(|| at.error("spec", "a route needs a spec"))?;
    only(spec, &["parentRefs", "hostnames", "rules"], "spec", at)?;
    let hosts = hosts(spec, at)?;
    let rules = seq(spec, "rules", "spec", at)?;
    for (r, rule) in rules.iter().enumerate() {
        let path = format!("spec.rules[{r}]");
        let fields: &[&str] = if grpc {
            &["name", "matches", "filters", "backendRefs"]
        } else {
            &["name", "matches", "filters", "backendRefs", "timeouts"]
        };
        only(rule, fields, &path, at)?;
        let mut base = Mapping::new();
        actions(rule, grpc, &path, services, at, &mut base, used)?;
        let mut matches = seq(rule, "matches", &path, at)?
            .into_iter()
            .enumerate()
            .map(|(m, v)| request_match(v, grpc, &format!("{path}.matches[{m}]"), at))
            .collect::<Result<Vec<_>, _>>()?;
        if matches.is_empty() {
            matches.push(Mapping::new());
        }
        // Gateway API's default match is a `/` prefix: every path.
        let rule_name =
            text(rule, "name", &path, at)?.map_or_else(|| format!("r{r}"), str::to_owned);
        for (m, cond) in matches.iter().enumerate() {
            for (h, host) in hosts.iter().enumerate() {
                let mut cond = cond.clone();
                if let Some(host) = host {
                    cond.insert("host".into(), host.clone().into());
                }
                let mut name = format!("{}-{}-{rule_name}", at.namespace, at.name);
                if matches.len() > 1 {
                    name.push_str(&format!("-m{m}"));
                }
                if hosts.len() > 1 {
                    name.push_str(&format!("-h{h}"));
                }
                let key = Precedence::of(&cond, &at.namespace, &at.name, (r, m, h));
                let mut route = Mapping::new();
                route.insert("name".into(), name.into());
                route.insert("match".into(), Value::Mapping(cond));
                for (k, v) in &base {
                    route.insert(k.clone(), v.clone());
                }
                routes.push((key, Value::Mapping(route)));
            }
        }
    }
    Ok(())
}

/// The Gateway API's order between matches, most specific first: an exact host, then a
/// wildcard one, then none; an exact path, then the longest prefix, then a regex; a method
/// match; the most header matches; the most query matches; then the route's namespace and
/// name, and its rules and matches in the order written.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    host: u8,
    path: u8,
    prefix: std::cmp::Reverse<usize>,
    no_method: bool,
    headers: std::cmp::Reverse<usize>,
    query: std::cmp::Reverse<usize>,
    route: (String, String),
    place: (usize, usize, usize),
}

impl Precedence {
    fn of(cond: &Mapping, ns: &str, name: &str, place: (usize, usize, usize)) -> Self {
        let host = match cond.get("host").and_then(Value::as_str) {
            Some(h) if h.starts_with('*') => 1,
            Some(_) => 0,
            None => 2,
        };
        let (path, prefix) = match cond.get("path").and_then(Value::as_mapping) {
            Some(p) if p.contains_key("exact") => (0, 0),
            Some(p) if p.contains_key("prefix") => (
                1,
                p.get("prefix").and_then(Value::as_str).map_or(0, str::len),
            ),
            Some(_) => (2, 0),
            None => (1, 1),
        };
        let count = |k: &str| {
            cond.get(k)
                .and_then(Value::as_mapping)
                .map_or(0, Mapping::len)
        };
        Self {
            host,
            path,
            prefix: std::cmp::Reverse(prefix),
            no_method: !cond.contains_key("method"),
            headers: std::cmp::Reverse(count("headers")),
            query: std::cmp::Reverse(count("query")),
            route: (ns.to_owned(), name.to_owned()),
            place,
        }
    }
}

/// The Remora `match:` of one Gateway API match.
fn request_match(v: &Value, grpc: bool, path: &str, at: &At<'_>) -> Result<Mapping, Error> {
    let mut m = Mapping::new();
    if grpc {
        only(v, &["method", "headers"], path, at)?;
        if let Some(method) = v.get("method") {
            let mp = join(path, "method");
            only(method, &["type", "service", "method"], &mp, at)?;
            let kind = text(method, "type", &mp, at)?.unwrap_or("Exact");
            if kind != "Exact" {
                return Err(at.error(
                    &join(&mp, "type"),
                    format!("{kind} gRPC method matches cannot be imported (Exact only)"),
                ));
            }
            let service = text(method, "service", &mp, at)?;
            let name = text(method, "method", &mp, at)?;
            let cond = match (service, name) {
                (Some(s), Some(n)) => single("exact", format!("/{s}/{n}")),
                (Some(s), None) => single("prefix", format!("/{s}")),
                (None, Some(n)) => single("regex", format!("/[^/]+/{}", regex_escape(n))),
                (None, None) => Mapping::new(),
            };
            if !cond.is_empty() {
                m.insert("path".into(), Value::Mapping(cond));
            }
        }
    } else {
        only(v, &["path", "headers", "queryParams", "method"], path, at)?;
        if let Some(p) = v.get("path") {
            let pp = join(path, "path");
            only(p, &["type", "value"], &pp, at)?;
            let value = text(p, "value", &pp, at)?.unwrap_or("/").to_owned();
            let kind = match text(p, "type", &pp, at)?.unwrap_or("PathPrefix") {
                "Exact" => "exact",
                "PathPrefix" => "prefix",
                "RegularExpression" => "regex",
                other => {
                    return Err(at.error(
                        &join(&pp, "type"),
                        format!("unknown path match type {other}"),
                    ))
                }
            };
            if !(kind == "prefix" && value == "/") {
                m.insert("path".into(), Value::Mapping(single(kind, value)));
            }
        }
        if let Some(method) = text(v, "method", path, at)? {
            m.insert("method".into(), Value::Sequence(vec![method.into()]));
        }
        let query = value_matches(v, "queryParams", path, at)?;
        if !query.is_empty() {
            m.insert("query".into(), Value::Mapping(query));
        }
    }
    let headers = value_matches(v, "headers", path, at)?;
    if !headers.is_empty() {
        m.insert("headers".into(), Value::Mapping(headers));
    }
    Ok(m)
}

/// Header or query parameter matches: `{ name: { exact: v } }`.
fn value_matches(v: &Value, field: &str, path: &str, at: &At<'_>) -> Result<Mapping, Error> {
    let mut out = Mapping::new();
    for (i, h) in seq(v, field, path, at)?.into_iter().enumerate() {
        let hp = format!("{}[{i}]", join(path, field));
        only(h, &["type", "name", "value"], &hp, at)?;
        let name = text(h, "name", &hp, at)?
            .ok_or_else(|| at.error(&join(&hp, "name"), "a match needs a name"))?;
        let value = text(h, "value", &hp, at)?.unwrap_or("").to_owned();
        let kind = match text(h, "type", &hp, at)?.unwrap_or("Exact") {
            "Exact" => "exact",
            "RegularExpression" => "regex",
            other => {
                return Err(at.error(&join(&hp, "type"), format!("unknown match type {other}")))
            }
        };
        let key = if field == "headers" {
            name.to_ascii_lowercase()
        } else {
            name.to_owned()
        };
        if out.contains_key(key.as_str()) {
            return Err(at.error(
                &hp,
                format!("a second match on {name}: Remora takes one condition per name"),
            ));
        }
        out.insert(key.into(), Value::Mapping(single(kind, value)));
    }
    Ok(out)
}

fn single(k: &str, v: String) -> Mapping {
    let mut m = Mapping::new();
    m.insert(k.into(), v.into());
    m
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// What a rule does: backends, filters and timeouts, into `route`.
#[allow(clippy::too_many_arguments)]
fn actions(
    rule: &Value,
    grpc: bool,
    path: &str,
    services: &BTreeMap<(String, String), Value>,
    at: &mut At<'_>,
    route: &mut Mapping,
    used: &mut BTreeMap<String, Value>,
) -> Result<(), Error> {
    let mut backends = Vec::new();
    for (b, backend) in seq(rule, "backendRefs", path, at)?.into_iter().enumerate() {
        let bp = format!("{path}.backendRefs[{b}]");
        only(
            backend,
            &["group", "kind", "name", "namespace", "port", "weight"],
            &bp,
            at,
        )?;
        if backend.get("filters").is_some() {
            return Err(at.error(
                &join(&bp, "filters"),
                "per-backend filters cannot be imported",
            ));
        }
        let name = service_ref(backend, &bp, grpc, services, at, used)?;
        let weight = backend.get("weight").and_then(Value::as_u64).unwrap_or(1);
        let mut m = Mapping::new();
        m.insert("service".into(), name.into());
        m.insert("weight".into(), weight.into());
        backends.push(Value::Mapping(m));
    }
    let mut request_headers = Mapping::new();
    let mut response_headers = Mapping::new();
    for (f, filter) in seq(rule, "filters", path, at)?.into_iter().enumerate() {
        let fp = format!("{path}.filters[{f}]");
        let kind = text(filter, "type", &fp, at)?
            .ok_or_else(|| at.error(&join(&fp, "type"), "a filter needs a type"))?;
        match kind {
            "RequestHeaderModifier" | "ResponseHeaderModifier" => {
                let field = if kind == "RequestHeaderModifier" {
                    "requestHeaderModifier"
                } else {
                    "responseHeaderModifier"
                };
                only(filter, &["type", field], &fp, at)?;
                let edits = header_edits(
                    filter.get(field).unwrap_or(&Value::Null),
                    &join(&fp, field),
                    at,
                )?;
                *(if kind == "RequestHeaderModifier" {
                    &mut request_headers
                } else {
                    &mut response_headers
                }) = edits;
            }
            "URLRewrite" if !grpc => {
                only(filter, &["type", "urlRewrite"], &fp, at)?;
                let rp = join(&fp, "urlRewrite");
                let rw = filter.get("urlRewrite").unwrap_or(&Value::Null);
                only(rw, &["path"], &rp, at)?;
                if let Some(p) = rw.get("path") {
                    let pp = join(&rp, "path");
                    only(
                        p,
                        &["type", "replacePrefixMatch", "replaceFullPath"],
                        &pp,
                        at,
                    )?;
                    let value = match text(p, "type", &pp, at)? {
                        Some("ReplacePrefixMatch") => text(p, "replacePrefixMatch", &pp, at)?,
                        Some("ReplaceFullPath") => {
                            let prefix_match = seq(rule, "matches", path, at)?.iter().any(|m| {
                                m.get("path").is_none_or(|p| {
                                    p.get("type")
                                        .and_then(Value::as_str)
                                        .unwrap_or("PathPrefix")
                                        != "Exact"
                                })
                            });
                            if prefix_match {
                                return Err(at.error(&join(&pp, "type"), "ReplaceFullPath on a prefix match cannot be imported: Remora rewrites the matched prefix (use an Exact match, or ReplacePrefixMatch)"));
                            }
                            text(p, "replaceFullPath", &pp, at)?
                        }
                        other => {
                            return Err(at.error(
                                &join(&pp, "type"),
                                format!("unknown path rewrite {other:?}"),
                            ))
                        }
                    };
                    let mut m = Mapping::new();
                    m.insert("prefix".into(), value.unwrap_or("/").into());
                    route.insert("rewrite".into(), Value::Mapping(m));
                }
            }
            "RequestRedirect" if !grpc => {
                only(filter, &["type", "requestRedirect"], &fp, at)?;
                let rp = join(&fp, "requestRedirect");
                let rd = filter.get("requestRedirect").unwrap_or(&Value::Null);
                only(
                    rd,
                    &["scheme", "hostname", "port", "path", "statusCode"],
                    &rp,
                    at,
                )?;
                let host = text(rd, "hostname", &rp, at)?.ok_or_else(|| {
                    at.error(&join(&rp, "hostname"), "a redirect that keeps the request's host cannot be imported: Remora redirects to a fixed location")
                })?;
                let target = match rd.get("path") {
                    Some(p) if p.get("type").and_then(Value::as_str) == Some("ReplaceFullPath") => {
                        p.get("replaceFullPath").and_then(Value::as_str).unwrap_or("/").to_owned()
                    }
                    _ => return Err(at.error(&join(&rp, "path"), "a redirect that keeps the request's path cannot be imported: give path.type ReplaceFullPath")),
                };
                let scheme = text(rd, "scheme", &rp, at)?.unwrap_or("http");
                let port = rd
                    .get("port")
                    .and_then(Value::as_u64)
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default();
                let mut m = Mapping::new();
                m.insert(
                    "status".into(),
                    rd.get("statusCode")
                        .and_then(Value::as_u64)
                        .unwrap_or(302)
                        .into(),
                );
                m.insert(
                    "location".into(),
                    format!("{scheme}://{host}{port}{target}").into(),
                );
                route.insert("redirect".into(), Value::Mapping(m));
            }
            "RequestMirror" => {
                only(filter, &["type", "requestMirror"], &fp, at)?;
                let mp = join(&fp, "requestMirror");
                let rm = filter.get("requestMirror").unwrap_or(&Value::Null);
                only(rm, &["backendRef", "percent", "fraction"], &mp, at)?;
                let b = rm.get("backendRef").ok_or_else(|| {
                    at.error(&join(&mp, "backendRef"), "a mirror needs a backendRef")
                })?;
                let bp = join(&mp, "backendRef");
                only(b, &["group", "kind", "name", "namespace", "port"], &bp, at)?;
                let name = service_ref(b, &bp, grpc, services, at, used)?;
                let percent = match (rm.get("percent"), rm.get("fraction")) {
                    (Some(p), _) => p.as_f64().unwrap_or(100.0),
                    (None, Some(f)) => {
                        let num = f.get("numerator").and_then(Value::as_f64).unwrap_or(0.0);
                        let den = f
                            .get("denominator")
                            .and_then(Value::as_f64)
                            .unwrap_or(100.0);
                        100.0 * num / den
                    }
                    (None, None) => 100.0,
                };
                let mut m = Mapping::new();
                m.insert("service".into(), name.into());
                m.insert("percent".into(), percent.into());
                route.insert("mirror".into(), Value::Mapping(m));
            }
            other => {
                return Err(at.error(
                    &join(&fp, "type"),
                    format!("{other} filters cannot be imported"),
                ))
            }
        }
    }
    if let Some(t) = rule.get("timeouts") {
        let tp = join(path, "timeouts");
        only(t, &["request", "backendRequest"], &tp, at)?;
        match (
            text(t, "request", &tp, at)?,
            text(t, "backendRequest", &tp, at)?,
        ) {
            (Some(r), _) => {
                route.insert(
                    "timeout".into(),
                    duration(r, &join(&tp, "request"), at)?.into(),
                );
                if t.get("backendRequest").is_some() {
                    at.note(&join(&tp, "backendRequest"), "Remora bounds each try only with a retry policy's per_try_timeout; the request timeout bounds them all");
                }
            }
            (None, Some(b)) => {
                route.insert(
                    "timeout".into(),
                    duration(b, &join(&tp, "backendRequest"), at)?.into(),
                );
            }
            (None, None) => {}
        }
    }
    if !request_headers.is_empty() {
        route.insert("request_headers".into(), Value::Mapping(request_headers));
    }
    if !response_headers.is_empty() {
        route.insert("response_headers".into(), Value::Mapping(response_headers));
    }
    if route.contains_key("redirect") {
        if !backends.is_empty() {
            return Err(at.error(
                &join(path, "backendRefs"),
                "a redirect and backends in one rule: Remora answers a redirect without forwarding",
            ));
        }
    } else if backends.is_empty() {
        // Gateway API answers 500 for a rule with no backends.
        let mut m = Mapping::new();
        m.insert("status".into(), 500.into());
        m.insert("body".into(), "no backends\n".into());
        route.insert("direct_response".into(), Value::Mapping(m));
    } else {
        route.insert("backends".into(), Value::Sequence(backends));
    }
    Ok(())
}

/// Gateway API durations (`1h`, `10s`, `500ms`, `1h30m`) as Remora writes them.
fn duration(text: &str, path: &str, at: &At<'_>) -> Result<String, Error> {
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (n, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let (unit, tail) = tail.split_at(unit_len);
        let n: u64 = n
            .parse()
            .map_err(|_| at.error(path, format!("{text:?} is not a Gateway API duration")))?;
        total_ms += n * match unit {
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1000,
            "ms" => 1,
            _ => return Err(at.error(path, format!("{text:?} is not a Gateway API duration"))),
        };
        rest = tail;
    }
    Ok(if total_ms % 1000 == 0 {
        format!("{}s", total_ms / 1000)
    } else {
        format!("{total_ms}ms")
    })
}

fn header_edits(v: &Value, path: &str, at: &At<'_>) -> Result<Mapping, Error> {
    only(v, &["set", "add", "remove"], path, at)?;
    let mut out = Mapping::new();
    for op in ["set", "add"] {
        let mut m = Mapping::new();
        for (i, h) in seq(v, op, path, at)?.into_iter().enumerate() {
            let hp = format!("{}[{i}]", join(path, op));
            only(h, &["name", "value"], &hp, at)?;
            let name =
                text(h, "name", &hp, at)?.ok_or_else(|| at.error(&hp, "a header needs a name"))?;
            m.insert(
                name.to_ascii_lowercase().into(),
                text(h, "value", &hp, at)?.unwrap_or("").into(),
            );
        }
        if !m.is_empty() {
            out.insert(op.into(), Value::Mapping(m));
        }
    }
    let remove: Vec<Value> = seq(v, "remove", path, at)?
        .into_iter()
        .filter_map(|h| h.as_str().map(|s| s.to_ascii_lowercase().into()))
        .collect();
    if !remove.is_empty() {
        out.insert("remove".into(), Value::Sequence(remove));
    }
    Ok(out)
}

/// A backend Service: its entry under `services:` (made once), and its name there.
fn service_ref(
    b: &Value,
    path: &str,
    grpc: bool,
    services: &BTreeMap<(String, String), Value>,
    at: &mut At<'_>,
    used: &mut BTreeMap<String, Value>,
) -> Result<String, Error> {
    let kind = text(b, "kind", path, at)?.unwrap_or("Service");
    let group = text(b, "group", path, at)?.unwrap_or("");
    if kind != "Service" || !(group.is_empty() || group == "core") {
        return Err(at.error(
            &join(path, "kind"),
            format!("a backend of kind {kind} cannot be imported (Services only)"),
        ));
    }
    let name = text(b, "name", path, at)?
        .ok_or_else(|| at.error(&join(path, "name"), "a backend needs a name"))?;
    let ns = text(b, "namespace", path, at)?
        .unwrap_or(&at.namespace)
        .to_owned();
    let svc = services.get(&(ns.clone(), name.to_owned()));
    let port = match b.get("port").and_then(Value::as_u64) {
        Some(p) => p,
        None => {
            let ports = svc
                .map(|s| seq(&s["spec"], "ports", "", at))
                .transpose()?
                .unwrap_or_default();
            match ports.as_slice() {
                [one] => one.get("port").and_then(Value::as_u64).unwrap_or(80),
                _ => {
                    return Err(at.error(
                        &join(path, "port"),
                        format!(
                            "Service {ns}/{name}: give the port (the input has {} for it)",
                            ports.len()
                        ),
                    ))
                }
            }
        }
    };
    // A headless Service's name resolves to its pods, which Remora calls at the target port;
    // any other's to its cluster IP, at the Service port.
    let headless = svc.is_some_and(|s| s["spec"]["clusterIP"] == "None");
    let target = if headless {
        let target = svc
            .and_then(|s| s["spec"]["ports"].as_sequence())
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.get("port").and_then(Value::as_u64) == Some(port))
            })
            .and_then(|p| p.get("targetPort"));
        match target {
            None => port,
            Some(Value::Number(n)) => n.as_u64().unwrap_or(port),
            Some(named) => {
                return Err(at.error(
                    &join(path, "port"),
                    format!("Service {ns}/{name} targets the named port {named:?}: Remora calls its pods by number; give the number"),
                ))
            }
        }
    } else {
        at.note(
            path,
            format!("Service {ns}/{name} is not headless (or not in the input): Remora balances over what its DNS name resolves to, so make it headless (clusterIP: None) for per-pod balancing and outlier detection"),
        );
        port
    };
    let key = if ns == at.namespace {
        name.to_owned()
    } else {
        format!("{name}.{ns}")
    };
    let key = format!("{key}-{port}");
    let mut entry = Mapping::new();
    entry.insert(
        "dns".into(),
        format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}:{target}").into(),
    );
    if grpc {
        entry.insert("protocol".into(), "http2".into());
    }
    used.entry(key.clone()).or_insert(Value::Mapping(entry));
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(notes: &mut Vec<String>) -> At<'_> {
        At {
            document: 1,
            resource: "HTTPRoute shop/r".into(),
            namespace: "shop".into(),
            name: "r".into(),
            notes,
        }
    }

    #[test]
    fn gateway_durations_become_remora_durations() {
        let mut notes = Vec::new();
        let a = at(&mut notes);
        for (gw, remora) in [
            ("10s", "10s"),
            ("1500ms", "1500ms"),
            ("1h30m", "5400s"),
            ("2m", "120s"),
        ] {
            assert_eq!(duration(gw, "t", &a).unwrap(), remora);
        }
        for bad in ["1d", "s", "1.5s", "-1s"] {
            assert!(duration(bad, "t", &a).is_err(), "{bad}");
        }
    }

    #[test]
    fn more_specific_matches_come_first() {
        let m = |y: &str| serde_yaml::from_str::<Mapping>(y).unwrap();
        let mut keys = [
            ("any", Precedence::of(&m("{}"), "a", "r", (0, 0, 0))),
            (
                "prefix",
                Precedence::of(&m("{ path: { prefix: /api } }"), "a", "r", (1, 0, 0)),
            ),
            (
                "longer",
                Precedence::of(&m("{ path: { prefix: /api/v1 } }"), "a", "r", (2, 0, 0)),
            ),
            (
                "exact",
                Precedence::of(&m("{ path: { exact: /api } }"), "a", "r", (3, 0, 0)),
            ),
            (
                "header",
                Precedence::of(
                    &m("{ path: { prefix: /api }, headers: { x: { exact: y } } }"),
                    "a",
                    "r",
                    (4, 0, 0),
                ),
            ),
            (
                "method",
                Precedence::of(
                    &m("{ path: { prefix: /api }, method: [GET] }"),
                    "a",
                    "r",
                    (5, 0, 0),
                ),
            ),
            (
                "host",
                Precedence::of(&m("{ host: a }"), "a", "r", (6, 0, 0)),
            ),
        ];
        keys.sort_by(|a, b| a.1.cmp(&b.1));
        let order: Vec<&str> = keys.iter().map(|k| k.0).collect();
        assert_eq!(
            order,
            ["host", "exact", "longer", "method", "header", "prefix", "any"]
        );
    }

    #[test]
    fn grpc_method_names_are_escaped_in_regexes() {
        assert_eq!(regex_escape("Get.Item"), "Get\\.Item");
    }
}
