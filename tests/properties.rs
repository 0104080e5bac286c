//! Property tests over inputs a hostile peer or a careless editor controls: the control-file
//! loader, protocol detection, path normalization and header hygiene. Each runs a fixed
//! number of cases from a fixed seed (the same cases on every run, so a failure
//! reproduces); `REMORA_PROPERTY_CASES` runs more by hand, e.g. `REMORA_PROPERTY_CASES=200000 cargo test --test properties`.

use http::{header::HeaderName, HeaderMap, HeaderValue};
use remora::{headers, proxy::detect};

/// xorshift64*: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn cases(default: usize) -> usize {
    std::env::var("REMORA_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_mangled_control_file_never_panics_and_every_problem_has_a_place() {
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.yaml")).unwrap();
    let pieces = [
        "", " ", "\n", ":", "- ", "{", "}", "[", "]", "\"", "'", "#", "&a ", "*a", "!!str ", "0",
        "-1", "1e99", "routes:", "  ", "\t", "~", "null", "1h", "x",
    ];
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    for _ in 0..cases(1500) {
        let mut text = demo.clone().into_bytes();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(text.len() + 1);
            match rng.below(3) {
                0 if at < text.len() => {
                    let end = (at + 1 + rng.below(8)).min(text.len());
                    text.drain(at..end);
                }
                _ => {
                    let p = pieces[rng.below(pieces.len())].as_bytes();
                    text.splice(at..at, p.iter().copied());
                }
            }
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        let lines = text.lines().count().max(1);
        if let Err(e) = remora::config::parse("p.yaml", &text) {
            for p in &e.problems {
                assert!(
                    p.line >= 1 && p.line <= lines + 1,
                    "line {} of {lines}: {p:?}\n{text}",
                    p.line
                );
                assert!(p.column >= 1, "{p:?}");
                assert!(!p.message.is_empty(), "{p:?}");
            }
        }
    }
}

#[test]
fn detection_never_changes_its_mind_as_more_bytes_arrive() {
    let starts: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01",
        b"*1\r\n",
        b"POST /x",
        b"",
    ];
    let mut rng = Rng(0x5eed_cafe_f00d_0002);
    for _ in 0..cases(20_000) {
        let mut buf = starts[rng.below(starts.len())].to_vec();
        let cut = rng.below(buf.len() + 1);
        buf.truncate(cut);
        for _ in 0..rng.below(24) {
            buf.push(match rng.below(4) {
                0 => b' ',
                1 => b'\n',
                2 => (rng.next() & 0xff) as u8,
                _ => b"GETPOST/HT1.0"[rng.below(13)],
            });
        }
        let Some(verdict) = detect::decide(&buf) else {
            continue;
        };
        let mut more = buf.clone();
        for _ in 0..1 + rng.below(16) {
            more.push((rng.next() & 0xff) as u8);
        }
        if more.len() < detect::MAX_PEEK {
            assert_eq!(
                detect::decide(&more),
                Some(verdict),
                "{:?} then {:?}",
                String::from_utf8_lossy(&buf),
                String::from_utf8_lossy(&more)
            );
        }
    }
}

#[test]
fn no_hop_by_hop_header_survives_stripping() {
    let names = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authorization",
        "x-remora-orig-proto",
        "x-a",
        "x-b",
        "host",
        "content-type",
    ];
    let mut rng = Rng(0x5eed_cafe_f00d_0003);
    for _ in 0..cases(5000) {
        let mut h = HeaderMap::new();
        let mut listed = Vec::new();
        for _ in 0..rng.below(8) {
            let name = names[rng.below(names.len())];
            let value = if name == "connection" {
                let l = names[rng.below(names.len())];
                listed.push(l);
                format!("close, {l}")
            } else if name == "te" && rng.below(2) == 0 {
                "trailers, gzip".to_owned()
            } else {
                "v".to_owned()
            };
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).unwrap(),
            );
        }
        let before = h.clone();
        headers::strip_hop_by_hop(&mut h, false);
        for gone in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "x-remora-orig-proto",
        ]
        .iter()
        .chain(listed.iter().filter(|l| **l != "te"))
        {
            assert!(
                !h.contains_key(*gone),
                "{gone} survived: {before:?} → {h:?}"
            );
        }
        if let Some(te) = h.get("te") {
            assert_eq!(te, "trailers", "{before:?}");
        }
        for kept in ["x-a", "host", "content-type"] {
            if before.contains_key(kept) && !listed.contains(&kept) {
                assert!(h.contains_key(kept), "{kept} lost: {before:?}");
            }
        }
    }
}

#[test]
fn a_normalized_path_is_normal_and_has_no_way_back_up() {
    use remora::routing::normalize::{EscapedSlashes, PathRules};
    let pieces: [&str; 16] = [
        "/", "a", "b", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", "%41", "%zz", "%", "//", "%7e",
        "x.y",
    ];
    let mut rng = Rng(0x5eed_cafe_f00d_0004);
    for _ in 0..cases(20_000) {
        let mut path = String::from("/");
        for _ in 0..rng.below(12) {
            path.push_str(pieces[rng.below(pieces.len())]);
        }
        let rules = PathRules {
            normalize: true,
            merge_slashes: rng.below(2) == 0,
            escaped_slashes: [
                EscapedSlashes::Reject,
                EscapedSlashes::Keep,
                EscapedSlashes::Unescape,
            ][rng.below(3)],
        };
        let normal = match rules.apply(&path) {
            Ok(None) => path.clone(),
            Ok(Some(p)) => p,
            Err(_) => continue,
        };
        let ctx = || format!("{path:?} ({rules:?}) became {normal:?}");
        assert!(normal.starts_with('/'), "{}", ctx());
        assert_eq!(rules.apply(&normal), Ok(None), "not idempotent: {}", ctx());
        let segments: Vec<&str> = normal.split('/').collect();
        assert!(
            !segments.iter().any(|s| *s == "." || *s == ".."),
            "a dot segment is left: {}",
            ctx()
        );
        let lower = normal.to_ascii_lowercase();
        assert!(
            !lower.contains("%2e") && !lower.contains("%41"),
            "{}",
            ctx()
        );
        assert!(!normal.contains('\\'), "{}", ctx());
        if rules.merge_slashes {
            assert!(!normal.contains("//"), "{}", ctx());
        }
        if rules.escaped_slashes != EscapedSlashes::Keep {
            assert!(
                !lower.contains("%2f") && !lower.contains("%5c"),
                "{}",
                ctx()
            );
        }
    }
}
