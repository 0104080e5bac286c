//! The import rules of DESIGN.md's "Who may import whom", checked over `src/`: no import
//! circles between the crate's top-level modules, and the named layers never reach up.
//! Reads `use crate::...` trees and `crate::` paths in each file (its `#[cfg(test)]` module
//! excluded: tests may reach anywhere).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Module path (`proxy::inbound`) → source text without its test module.
fn sources() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix("src").unwrap().with_extension("");
                let module = rel.to_str().unwrap().replace('/', "::");
                let text = fs::read_to_string(&path).unwrap();
                let text = match text.find("#[cfg(test)]\nmod tests") {
                    Some(i) => text[..i].to_owned(),
                    None => text,
                };
                out.insert(module, text);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(Path::new("src"), &mut out);
    out
}

/// Every path a file names under `crate::`, with `use` trees expanded.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let (paths, used) = tree(rest);
        out.extend(paths);
        rest = &rest[used..];
    }
    out
}

/// Parses a use tree at the start of `s` (`a::b`, `a::{b, c::{d}}`), returning its full paths
/// and the bytes it took.
fn tree(s: &str) -> (Vec<String>, usize) {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut prefix = String::new();
    loop {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        prefix.push_str(&s[start..i]);
        let group = if s[i..].starts_with("::{") {
            Some(3)
        } else if s[i..].starts_with('{') {
            Some(1)
        } else {
            None
        };
        if let Some(skip) = group {
            i += skip;
            let join = |p: String| match prefix.trim_end_matches("::") {
                "" => p,
                pre => format!("{pre}::{p}"),
            };
            let mut paths = vec![];
            loop {
                while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b',') {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] == b'}' {
                    return (paths, i + 1);
                }
                let (inner, used) = tree(&s[i..]);
                paths.extend(inner.into_iter().map(join));
                i += used;
            }
        } else if s[i..].starts_with("::") {
            i += 2;
            prefix.push_str("::");
        } else {
            return (vec![prefix], i);
        }
    }
}

/// Top-level module → the top-level modules it imports, with one file and path for each.
fn graph() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut g: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (module, text) in sources() {
        let from = module.split("::").next().unwrap().to_owned();
        for path in crate_paths(&text) {
            let to = path.split("::").next().unwrap().to_owned();
            if to != from && !to.is_empty() && to != "self" {
                g.entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| format!("{module} uses crate::{path}"));
            }
        }
    }
    g
}

#[test]
fn the_parser_reads_nested_use_trees() {
    let paths = crate_paths("use crate::{a::{b, c::D}, e};\nlet x = crate::f::g(1);");
    let want = ["a::b", "a::c::D", "e", "f::g"];
    assert_eq!(
        paths,
        want.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()
    );
}

#[test]
fn no_import_circles_between_top_level_modules() {
    let g = graph();
    for (from, edges) in &g {
        for (to, why) in edges {
            // Is `from` reachable from `to`?
            let mut seen = BTreeSet::new();
            let mut stack = vec![to.clone()];
            while let Some(m) = stack.pop() {
                if &m == from {
                    panic!("import circle: {from} → {to} ({why}) and back from {to} to {from}");
                }
                if seen.insert(m.clone()) {
                    stack.extend(g.get(&m).into_iter().flat_map(|e| e.keys().cloned()));
                }
            }
        }
    }
}

#[test]
fn lower_layers_do_not_reach_up() {
    let g = graph();
    let forbidden: &[(&str, &[&str])] = &[
        ("runtime", &["proxy", "app", "admin", "reload"]),
        ("resilience", &["proxy", "upstream", "app", "runtime"]),
        ("upstream", &["routing", "proxy", "app", "runtime"]),
        (
            "balance",
            &["routing", "proxy", "upstream", "app", "runtime"],
        ),
        ("tls", &["proxy", "routing", "upstream", "app", "runtime"]),
        ("reload", &["app"]),
        ("admin", &["app"]),
        ("config", &["proxy", "app", "runtime", "reload", "admin"]),
    ];
    for (from, above) in forbidden {
        for to in *above {
            if let Some(why) = g.get(*from).and_then(|e| e.get(*to)) {
                panic!("{from} must not import {to}: {why}");
            }
        }
    }
}

#[test]
fn serde_types_stop_at_config() {
    for (module, text) in sources() {
        if module.starts_with("config") || module == "main" {
            continue;
        }
        for path in crate_paths(&text) {
            assert!(
                !path.starts_with("config::file"),
                "{module} names crate::{path}: serde types stop at config/"
            );
        }
    }
}
