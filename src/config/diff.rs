//! What a reload would change, semantically (`remora diff OLD NEW`, `POST
//! /reload?dry_run=true`): routes, TCP routes and services added, removed and changed field
//! by field, every other section field by field, and a change of route order (the first
//! matching route wins, so order is meaning).
//!
//! Both files are compared in their parsed shape with every default filled in, so writing a
//! default out, reordering keys, or changing comments and quoting is no change, and a changed
//! default shows as the value it had and the one it gets.

use std::{collections::BTreeMap, fmt};

use serde::Serialize;
use serde_json::Value;

use super::file::{File, Lenient};

/// Every change between two control files.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Diff {
    /// The changes, sections first, then routes, TCP routes and services by name.
    pub changes: Vec<Change>,
    /// The outbound routes' order, when it changed (before, after; routes in both only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_order: Option<(Vec<String>, Vec<String>)>,
}

/// One thing added, removed or changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// `route`, `tcp_route`, `service` or `section`.
    pub kind: &'static str,
    /// Its name (a section's: `limits`, `outbound`, ...).
    pub name: String,
    /// `added`, `removed` or `changed`.
    pub what: &'static str,
    /// For `changed`: each field that differs, by path inside the item.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

/// One field's value before and after (`None`: not set).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// Field path inside the item, e.g. `backends[1].weight`.
    pub path: String,
    /// The value before, as YAML would show it.
    pub old: Option<String>,
    /// The value after.
    pub new: Option<String>,
}

impl Diff {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.route_order.is_none()
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no changes");
        }
        for c in &self.changes {
            let kind = c.kind.replace('_', " ");
            if c.kind == "section" {
                writeln!(f, "{}: {}", c.name, c.what)?;
            } else {
                writeln!(f, "{kind} {}: {}", c.name, c.what)?;
            }
            for field in &c.fields {
                let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not set)".into());
                writeln!(
                    f,
                    "  {}: {} -> {}",
                    field.path,
                    show(&field.old),
                    show(&field.new)
                )?;
            }
        }
        if let Some((old, new)) = &self.route_order {
            writeln!(f, "route order: {} -> {}", old.join(", "), new.join(", "))?;
        }
        Ok(())
    }
}

/// The changes from `old` to `new`.
pub fn diff(old: &File, new: &File) -> Diff {
    let (old, new) = (shape(old), shape(new));
    let mut out = Diff::default();
    let sections: Vec<&String> = {
        let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
        keys.sort();
        keys.dedup();
        keys
    };
    for name in sections {
        let (a, b) = (old.get(name), new.get(name));
        match name.as_str() {
            "services" => named(&mut out, "service", by_key(a), by_key(b)),
            "outbound" => {
                let strip = |v: Option<&Value>, key: &str| {
                    v.and_then(|v| v.get(key)).map(by_name).unwrap_or_default()
                };
                let (ra, rb) = (strip(a, "routes"), strip(b, "routes"));
                section(
                    &mut out,
                    name,
                    without(a, &["routes", "tcp_routes"]),
                    without(b, &["routes", "tcp_routes"]),
                );
                let order =
                    |routes: &[(String, Value)], other: &[(String, Value)]| -> Vec<String> {
                        routes
                            .iter()
                            .map(|(n, _)| n.clone())
                            .filter(|n| other.iter().any(|(m, _)| m == n))
                            .collect()
                    };
                let (oa, ob) = (order(&ra, &rb), order(&rb, &ra));
                if oa != ob {
                    out.route_order = Some((oa, ob));
                }
                named(&mut out, "route", ra, rb);
                named(
                    &mut out,
                    "tcp_route",
                    strip(a, "tcp_routes"),
                    strip(b, "tcp_routes"),
                );
            }
            _ => section(&mut out, name, a.cloned(), b.cloned()),
        }
    }
    out
}

/// The file as JSON with every defaulted section filled in; failed parts are left out.
fn shape(file: &File) -> BTreeMap<String, Value> {
    let mut file = file.clone();
    fn fill<T: Default>(section: &mut Option<Lenient<T>>) {
        if !matches!(section, Some(Lenient::Ok(_))) {
            *section = Some(Lenient::Ok(T::default()));
        }
    }
    fill(&mut file.admin);
    fill(&mut file.limits);
    fill(&mut file.shutdown);
    fill(&mut file.log);
    match serde_json::to_value(&file) {
        Ok(Value::Object(map)) => map
            .into_iter()
            .filter(|(k, v)| k != "version" && !v.is_null())
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn without(v: Option<&Value>, keys: &[&str]) -> Option<Value> {
    let mut v = v?.clone();
    if let Value::Object(map) = &mut v {
        for k in keys {
            map.remove(*k);
        }
    }
    Some(v)
}

fn by_key(v: Option<&Value>) -> Vec<(String, Value)> {
    match v {
        Some(Value::Object(map)) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => Vec::new(),
    }
}

fn by_name(v: &Value) -> Vec<(String, Value)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let name = item
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{}", i + 1), str::to_owned);
            (name, item.clone())
        })
        .collect()
}

fn section(out: &mut Diff, name: &str, a: Option<Value>, b: Option<Value>) {
    match (a, b) {
        (None, None) => {}
        (Some(_), None) => out
            .changes
            .push(change("section", name, "removed", Vec::new())),
        (None, Some(_)) => out
            .changes
            .push(change("section", name, "added", Vec::new())),
        (Some(a), Some(b)) => {
            let fields = fields(&a, &b);
            if !fields.is_empty() {
                out.changes.push(change("section", name, "changed", fields));
            }
        }
    }
}

fn named(out: &mut Diff, kind: &'static str, a: Vec<(String, Value)>, b: Vec<(String, Value)>) {
    for (name, old) in &a {
        match b.iter().find(|(n, _)| n == name) {
            None => out.changes.push(change(kind, name, "removed", Vec::new())),
            Some((_, new)) => {
                let fields = fields(old, new);
                if !fields.is_empty() {
                    out.changes.push(change(kind, name, "changed", fields));
                }
            }
        }
    }
    for (name, _) in &b {
        if !a.iter().any(|(n, _)| n == name) {
            out.changes.push(change(kind, name, "added", Vec::new()));
        }
    }
}

fn change(kind: &'static str, name: &str, what: &'static str, fields: Vec<FieldChange>) -> Change {
    Change {
        kind,
        name: name.to_owned(),
        what,
        fields,
    }
}

/// The leaf fields that differ between `a` and `b`.
fn fields(a: &Value, b: &Value) -> Vec<FieldChange> {
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten(a, String::new(), &mut fa);
    flatten(b, String::new(), &mut fb);
    let mut keys: Vec<&String> = fa.keys().chain(fb.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| fa.get(*k) != fb.get(*k))
        .map(|k| FieldChange {
            path: k.clone(),
            old: fa.get(k).cloned(),
            new: fb.get(k).cloned(),
        })
        .collect()
}

fn flatten(v: &Value, path: String, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                flatten(v, p, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                flatten(v, format!("{path}[{i}]"), out);
            }
        }
        Value::Null => {}
        Value::String(s) => {
            out.insert(path, s.clone());
        }
        other => {
            out.insert(path, other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    fn diff(old: &str, new: &str) -> super::Diff {
        crate::config::diff(("old", old), ("new", new)).unwrap()
    }

    const ROUTES: &str = "version: 1\noutbound:\n  listen: 127.0.0.1:0\n  routes:\n    - { name: a, match: { host: a }, direct_response: { status: 200 } }\n    - { name: b, match: { host: b }, direct_response: { status: 200 } }\n";

    #[test]
    fn route_order_is_a_change() {
        let swapped = ROUTES
            .replace("name: a, match: { host: a }", "name: x")
            .replace("name: b, match: { host: b }", "name: a, match: { host: a }")
            .replace("name: x", "name: b, match: { host: b }");
        let d = diff(ROUTES, &swapped);
        assert_eq!(
            d.route_order,
            Some((vec!["a".into(), "b".into()], vec!["b".into(), "a".into()]))
        );
        assert!(d.changes.is_empty(), "{d}");
        assert!(d.to_string().contains("route order: a, b -> b, a"), "{d}");
    }

    #[test]
    fn sections_services_and_defaults() {
        let more = format!("{ROUTES}limits: {{ max_connections: 5, idle_timeout: 5m }}\nservices:\n  s: {{ endpoints: [\"127.0.0.1:1\"] }}\n");
        let d = diff(ROUTES, &more).to_string();
        // idle_timeout 5m is the default: no change.
        assert_eq!(
            d,
            "limits: changed\n  max_connections: 10000 -> 5\nservice s: added\n"
        );
        assert_eq!(diff(ROUTES, ROUTES).to_string(), "no changes\n");
    }
}
