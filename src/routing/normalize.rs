//! Path normalization before routing and authorization, so that `/public/../secret` cannot
//! match `/public/*` while the app serves `/secret`: percent-encoded unreserved characters are
//! decoded (`%2e` is `.`), other escapes upper-cased, backslashes read as slashes, dot segments
//! removed (RFC 3986 §5.2.4; `..` never climbs above the root), and, when asked, repeated
//! slashes merged. An escaped slash (`%2F`, `%5C`) is refused by default: apps disagree on
//! whether it separates segments. The normalized path is what is routed, authorized and
//! forwarded. Like Envoy's `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action`.

/// What to do with `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Refuse the request (400).
    #[default]
    Reject,
    /// Leave them as they are (upper-cased).
    Keep,
    /// Decode them into `/` (then normalize).
    Unescape,
}

/// How request paths are normalized (compiled from `limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Whether to normalize at all.
    pub normalize: bool,
    /// Whether `//` becomes `/`.
    pub merge_slashes: bool,
    /// What an escaped slash does.
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathRules {
    fn default() -> Self {
        Self {
            normalize: true,
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

impl PathRules {
    /// The normalized form of `path`: `Ok(None)` when it is already normal (the common case,
    /// decided by one scan without allocating), `Err` with the reason when it cannot be
    /// normalized safely.
    pub fn apply(&self, path: &str) -> Result<Option<String>, &'static str> {
        if !self.normalize || !path.starts_with('/') {
            return Ok(None);
        }
        let bytes = path.as_bytes();
        let suspect = bytes.iter().any(|&b| b == b'%' || b == b'\\')
            || path.contains("/.")
            || (self.merge_slashes && path.contains("//"));
        if !suspect {
            return Ok(None);
        }
        let mut decoded = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' => {
                    let (hi, lo) = match bytes.get(i + 1..i + 3) {
                        Some(&[h, l]) => (h, l),
                        _ => return Err("bad percent-encoding in the path"),
                    };
                    let v = hex(hi)
                        .zip(hex(lo))
                        .map(|(h, l)| h * 16 + l)
                        .ok_or("bad percent-encoding in the path")?;
                    match v {
                        b'/' | b'\\' => match self.escaped_slashes {
                            EscapedSlashes::Reject => return Err("escaped slash in the path"),
                            EscapedSlashes::Unescape => decoded.push(b'/'),
                            EscapedSlashes::Keep => push_escape(&mut decoded, v),
                        },
                        _ if is_unreserved(v) => decoded.push(v),
                        _ => push_escape(&mut decoded, v),
                    }
                    i += 3;
                }
                b'\\' => {
                    decoded.push(b'/');
                    i += 1;
                }
                b => {
                    decoded.push(b);
                    i += 1;
                }
            }
        }
        let decoded = String::from_utf8(decoded).map_err(|_| "the path is not UTF-8")?;
        let segments: Vec<&str> = decoded[1..].split('/').collect();
        let last = segments.len() - 1;
        let mut out: Vec<&str> = Vec::with_capacity(segments.len());
        for (n, seg) in segments.iter().enumerate() {
            match *seg {
                "." => {}
                ".." => {
                    out.pop();
                }
                "" if self.merge_slashes && n != last => {}
                s => out.push(s),
            }
            // A path ending in a dot segment names a directory: keep its slash.
            if n == last && matches!(*seg, "." | "..") {
                out.push("");
            }
        }
        let normal = format!("/{}", out.join("/"));
        Ok((normal != path).then_some(normal))
    }
}

fn push_escape(out: &mut Vec<u8>, v: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 15)]]);
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, &'static str> {
        PathRules::default()
            .apply(path)
            .map(|p| p.unwrap_or_else(|| path.to_owned()))
    }

    #[test]
    fn dot_segments_and_escapes_are_resolved() {
        for (path, want) in [
            ("/a/b", "/a/b"),
            ("/index.html", "/index.html"),
            ("/public/../secret", "/secret"),
            ("/public/%2e%2e/secret", "/secret"),
            ("/public/%2E%2e/secret", "/secret"),
            ("/public/./../secret", "/secret"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/./b/", "/a/b/"),
            ("/%7euser/%41", "/~user/A"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/a\\..\\b", "/b"),
            ("/a//b", "/a//b"),
            ("/.well-known/x", "/.well-known/x"),
            ("/..a/b", "/..a/b"),
        ] {
            assert_eq!(norm(path).as_deref(), Ok(want), "{path}");
        }
    }

    #[test]
    fn what_cannot_be_normalized_safely_is_refused() {
        assert_eq!(
            norm("/public/..%2fsecret"),
            Err("escaped slash in the path")
        );
        assert_eq!(norm("/a%5cb"), Err("escaped slash in the path"));
        assert_eq!(norm("/a%zz"), Err("bad percent-encoding in the path"));
        assert_eq!(norm("/a%2"), Err("bad percent-encoding in the path"));
        assert_eq!(norm("/a%ff"), Ok("/a%FF".to_owned()));
    }

    #[test]
    fn the_options_do_what_they_say() {
        let merge = PathRules {
            merge_slashes: true,
            ..PathRules::default()
        };
        assert_eq!(merge.apply("/a//b///c/"), Ok(Some("/a/b/c/".to_owned())));
        let unescape = PathRules {
            escaped_slashes: EscapedSlashes::Unescape,
            ..PathRules::default()
        };
        assert_eq!(
            unescape.apply("/public/..%2fsecret"),
            Ok(Some("/secret".to_owned()))
        );
        let keep = PathRules {
            escaped_slashes: EscapedSlashes::Keep,
            ..PathRules::default()
        };
        assert_eq!(keep.apply("/a%2fb"), Ok(Some("/a%2Fb".to_owned())));
        let off = PathRules {
            normalize: false,
            ..PathRules::default()
        };
        assert_eq!(off.apply("/a/../b"), Ok(None));
        assert_eq!(PathRules::default().apply("*"), Ok(None));
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        // A small deterministic sweep over tricky alphabets: idempotence and no dot segments.
        let alphabet = ["/", ".", "..", "%2e", "a", "%41", "\\", "//"];
        let mut seed = 0x9e37_79b9_u32;
        for _ in 0..5000 {
            let mut path = String::from("/");
            for _ in 0..8 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                path.push_str(alphabet[(seed % alphabet.len() as u32) as usize]);
            }
            let Ok(once) = norm(&path) else { continue };
            assert_eq!(norm(&once).as_deref(), Ok(once.as_str()), "{path}");
            assert!(
                !once.split('/').any(|s| s == "." || s == ".."),
                "{path} → {once}"
            );
        }
    }
}
