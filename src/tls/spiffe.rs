//! SPIFFE IDs: [`SpiffeId`], a validated ID (from the control file or a peer's certificate),
//! and [`IdPattern`], the caller patterns the control file writes: an exact ID, every ID
//! under a path prefix, or any authenticated caller.

use std::{fmt, sync::Arc};

/// The longest SPIFFE ID the SPIFFE standard allows, in bytes.
const MAX_LEN: usize = 2048;

/// A SPIFFE ID checked against the SPIFFE standard: `spiffe://` then a trust domain of
/// lowercase letters, digits, `.`, `-` and `_`, then an optional path of non-empty segments
/// (letters, digits, `.`, `-`, `_`; never `.` or `..`), with no query, fragment, port or
/// trailing `/`. Cheap to clone: every request on a connection shares one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId(Arc<str>);

impl SpiffeId {
    /// Checks `text`, saying what is wrong with it.
    pub fn parse(text: &str) -> Result<SpiffeId, String> {
        let Some(rest) = text.strip_prefix("spiffe://") else {
            return Err(format!(
                "{text:?} is not a SPIFFE ID: expected spiffe://TRUST-DOMAIN/PATH"
            ));
        };
        if text.len() > MAX_LEN {
            return Err(format!(
                "a SPIFFE ID is at most {MAX_LEN} bytes; this one has {}",
                text.len()
            ));
        }
        let (domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if domain.is_empty() {
            return Err(format!("{text:?} has no trust domain"));
        }
        if let Some(c) = domain
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(format!(
                "{text:?}: the trust domain may hold only lowercase letters, digits, '.', '-' and '_', not {c:?}"
            ));
        }
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                match segment {
                    "" => {
                        return Err(format!(
                            "{text:?}: the path has an empty segment (a doubled or trailing '/')"
                        ))
                    }
                    "." | ".." => {
                        return Err(format!(
                            "{text:?}: the path may not hold a {segment:?} segment"
                        ))
                    }
                    _ => {}
                }
                if let Some(c) = segment
                    .chars()
                    .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
                {
                    return Err(format!(
                        "{text:?}: the path may hold only letters, digits, '.', '-' and '_', not {c:?}"
                    ));
                }
            }
        }
        Ok(SpiffeId(text.into()))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain (between `spiffe://` and the path).
    pub fn trust_domain(&self) -> &str {
        let rest = &self.0["spiffe://".len()..];
        &rest[..rest.find('/').unwrap_or(rest.len())]
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A pattern for caller SPIFFE IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdPattern {
    /// Any authenticated caller (`*`).
    Any,
    /// Exactly this ID.
    Exact(SpiffeId),
    /// IDs under this prefix (written `spiffe://domain/ns/*`; stored with the final `/`).
    Prefix(String),
}

impl IdPattern {
    /// Parses `*`, `spiffe://.../*` or an exact `spiffe://` ID.
    pub fn parse(text: &str) -> Result<IdPattern, String> {
        if text == "*" {
            return Ok(IdPattern::Any);
        }
        let Some(rest) = text.strip_prefix("spiffe://") else {
            return Err(format!(
                "{text:?} is not a SPIFFE ID: expected spiffe://TRUST-DOMAIN/PATH, spiffe://TRUST-DOMAIN/PREFIX/* or *"
            ));
        };
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("{text:?} has no trust domain"));
        }
        match text.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('/') && !prefix.contains('*') => {
                // The prefix must itself be a valid ID once its final `/` is gone, so that a
                // pattern cannot name IDs no certificate can carry.
                SpiffeId::parse(&prefix[..prefix.len() - 1])?;
                Ok(IdPattern::Prefix(prefix.to_owned()))
            }
            Some(_) => Err(format!(
                "{text:?}: a wildcard is allowed only as a whole last segment, e.g. spiffe://cluster.local/ns/shop/*"
            )),
            None if text.contains('*') => Err(format!(
                "{text:?}: a wildcard is allowed only as a whole last segment"
            )),
            None => SpiffeId::parse(text).map(IdPattern::Exact),
        }
    }

    /// Whether `id` is one the pattern takes.
    pub fn matches(&self, id: &str) -> bool {
        match self {
            IdPattern::Any => true,
            IdPattern::Exact(e) => e.as_str() == id,
            IdPattern::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_parse_and_keep_their_text() {
        for text in [
            "spiffe://cluster.local/ns/shop/sa/web",
            "spiffe://example.org",
            "spiffe://my_domain-1.example/a.b/C-d_e",
        ] {
            let id = SpiffeId::parse(text).unwrap();
            assert_eq!(id.as_str(), text);
        }
        assert_eq!(
            SpiffeId::parse("spiffe://cluster.local/ns/a")
                .unwrap()
                .trust_domain(),
            "cluster.local"
        );
        assert_eq!(
            SpiffeId::parse("spiffe://example.org")
                .unwrap()
                .trust_domain(),
            "example.org"
        );
    }

    #[test]
    fn invalid_ids_say_what_is_wrong() {
        let cases = [
            ("https://cluster.local/ns/a", "not a SPIFFE ID"),
            ("SPIFFE://cluster.local/ns/a", "not a SPIFFE ID"),
            ("spiffe://", "no trust domain"),
            ("spiffe:///ns/a", "no trust domain"),
            ("spiffe://Cluster.local/ns/a", "trust domain"),
            ("spiffe://cluster.local:8443/ns/a", "trust domain"),
            ("spiffe://user@cluster.local/ns/a", "trust domain"),
            ("spiffe://cluster.local/ns//a", "empty segment"),
            ("spiffe://cluster.local/ns/a/", "empty segment"),
            ("spiffe://cluster.local/ns/../a", "\"..\" segment"),
            ("spiffe://cluster.local/ns/a?x=1", "not '?'"),
            ("spiffe://cluster.local/ns/a#f", "not '#'"),
            ("spiffe://cluster.local/ns/a b", "not ' '"),
        ];
        for (text, why) in cases {
            let e = SpiffeId::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        let long = format!("spiffe://d/{}", "a".repeat(MAX_LEN));
        assert!(SpiffeId::parse(&long).unwrap_err().contains("at most"));
    }

    #[test]
    fn patterns_validate_what_they_name() {
        assert_eq!(IdPattern::parse("*").unwrap(), IdPattern::Any);
        assert!(IdPattern::parse("spiffe://d/ns/*")
            .unwrap()
            .matches("spiffe://d/ns/a"));
        assert!(!IdPattern::parse("spiffe://d/ns/*")
            .unwrap()
            .matches("spiffe://d/nsx/a"));
        assert!(IdPattern::parse("spiffe://D/ns/*").is_err());
        assert!(IdPattern::parse("spiffe://d/ns a").is_err());
        assert!(IdPattern::parse("spiffe://d/ns/a")
            .unwrap()
            .matches("spiffe://d/ns/a"));
    }
}
