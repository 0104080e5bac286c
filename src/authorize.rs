//! Inbound authorization by caller identity: `inbound.authorize` rules, the first match
//! allows; when rules exist and none matches, 403 `unauthorized`. A caller is its SPIFFE ID
//! (from the mTLS handshake) or nobody (plaintext). Nobody matches only rules with
//! `unauthenticated: true`, which match every caller. An opaque TCP connection is allowed
//! only by a rule without `paths` and `methods`.

use http::Method;
use prometheus::{IntCounter, IntCounterVec, Opts};

use crate::{metrics::Metrics, routing::matcher::prefix_matches};

/// Compiled `inbound.authorize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Rules in order.
    pub rules: Vec<Rule>,
}

/// One compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Name for metrics and logs.
    pub name: String,
    /// Identity patterns.
    pub from: Vec<IdPattern>,
    /// Whether every caller matches, those without an identity included.
    pub unauthenticated: bool,
    /// Path patterns; empty means any path.
    pub paths: Vec<PathPattern>,
    /// Methods; empty means any.
    pub methods: Vec<Method>,
}

pub use crate::tls::spiffe::IdPattern;

/// A pattern for request paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// Exactly this path.
    Exact(String),
    /// This path and everything under it (written `/api/*`; stored as `/api`).
    Prefix(String),
}

impl PathPattern {
    /// Parses `/exact` or `/prefix/*` (`/*` is every path).
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        if !text.starts_with('/') {
            return Err(format!("{text:?} must start with \"/\""));
        }
        match text.strip_suffix("/*") {
            Some(prefix) if !prefix.contains('*') => Ok(PathPattern::Prefix(prefix.to_owned())),
            _ if text.contains('*') => Err(format!(
                "{text:?}: a wildcard is allowed only as a last segment, e.g. /api/*"
            )),
            _ => Ok(PathPattern::Exact(text.to_owned())),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(e) => e == path,
            PathPattern::Prefix(p) => prefix_matches(p, path),
        }
    }
}

impl Rule {
    fn matches_caller(&self, caller: Option<&str>) -> bool {
        match caller {
            Some(id) => self.unauthenticated || self.from.iter().any(|p| p.matches(id)),
            None => self.unauthenticated,
        }
    }

    fn matches(&self, caller: Option<&str>, method: &Method, path: &str) -> bool {
        self.matches_caller(caller)
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
            && (self.methods.is_empty() || self.methods.contains(method))
    }
}

impl Policy {
    /// The index of the first rule allowing the request, or `None` (deny).
    pub fn check(&self, caller: Option<&str>, method: &Method, path: &str) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| r.matches(caller, method, path))
    }
}

/// A policy bound to its counters.
#[derive(Debug)]
pub struct Authorizer {
    /// The rules.
    pub policy: Policy,
    allowed: Vec<IntCounter>,
    denied: IntCounter,
}

impl Authorizer {
    /// Binds `policy` to the `remora_authz_*` counters in `metrics`.
    pub fn new(policy: Policy, metrics: &AuthzMetrics) -> Self {
        let allowed = policy
            .rules
            .iter()
            .map(|r| metrics.allowed.with_label_values(&[&r.name]))
            .collect();
        Self {
            policy,
            allowed,
            denied: metrics.denied.with_label_values(&[DEFAULT_DENY]),
        }
    }

    /// Whether the request may go on (counted either way).
    pub fn allows(&self, caller: Option<&str>, method: &Method, path: &str) -> bool {
        self.count(self.policy.check(caller, method, path))
    }

    /// Whether `caller` may open an opaque TCP connection: only rules without `paths` or
    /// `methods` can allow one (they say nothing a byte stream could be checked against).
    /// Counted like requests.
    pub fn allows_connection(&self, caller: Option<&str>) -> bool {
        let found =
            self.policy.rules.iter().position(|r| {
                r.paths.is_empty() && r.methods.is_empty() && r.matches_caller(caller)
            });
        self.count(found)
    }

    fn count(&self, found: Option<usize>) -> bool {
        match found {
            Some(i) => {
                self.allowed[i].inc();
                true
            }
            None => {
                self.denied.inc();
                false
            }
        }
    }
}

/// The `rule` label of a denial: no rule matched.
pub const DEFAULT_DENY: &str = "default-deny";

/// `remora_authz_allowed_total{rule}` and `remora_authz_denied_total{rule}`.
#[derive(Debug, Clone)]
pub struct AuthzMetrics {
    allowed: IntCounterVec,
    denied: IntCounterVec,
}

impl AuthzMetrics {
    /// Registers the counters on `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let allowed = IntCounterVec::new(
            Opts::new(
                "remora_authz_allowed_total",
                "Inbound requests allowed, by the authorization rule that matched.",
            ),
            &["rule"],
        )
        .expect("valid metric");
        let denied = IntCounterVec::new(
            Opts::new(
                "remora_authz_denied_total",
                "Inbound requests refused with 403 unauthorized (rule=\"default-deny\": no rule matched).",
            ),
            &["rule"],
        )
        .expect("valid metric");
        metrics.register(Box::new(allowed.clone()));
        metrics.register(Box::new(denied.clone()));
        Self { allowed, denied }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(from: &[&str], unauthenticated: bool, paths: &[&str], methods: &[&str]) -> Rule {
        Rule {
            name: "r".into(),
            from: from.iter().map(|f| IdPattern::parse(f).unwrap()).collect(),
            unauthenticated,
            paths: paths
                .iter()
                .map(|p| PathPattern::parse(p).unwrap())
                .collect(),
            methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
        }
    }

    const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

    #[test]
    fn first_matching_rule_allows() {
        let p = Policy {
            rules: vec![
                rule(&[FRONTEND], false, &["/api/*"], &["GET", "POST"]),
                rule(&["spiffe://cluster.local/ns/ops/*"], false, &[], &[]),
                rule(&[], true, &["/healthz"], &[]),
            ],
        };
        let get = Method::GET;
        assert_eq!(p.check(Some(FRONTEND), &get, "/api"), Some(0));
        assert_eq!(p.check(Some(FRONTEND), &get, "/api/items"), Some(0));
        assert_eq!(p.check(Some(FRONTEND), &get, "/apix"), None);
        assert_eq!(p.check(Some(FRONTEND), &Method::DELETE, "/api/x"), None);
        assert_eq!(
            p.check(
                Some("spiffe://cluster.local/ns/ops/sa/admin"),
                &Method::DELETE,
                "/x"
            ),
            Some(1)
        );
        assert_eq!(
            p.check(Some("spiffe://cluster.local/ns/opsx/sa/a"), &get, "/x"),
            None
        );
        assert_eq!(p.check(None, &get, "/healthz"), Some(2));
        assert_eq!(p.check(None, &get, "/api/items"), None);
        // A rule open to unauthenticated callers is open to authenticated ones too.
        assert_eq!(p.check(Some(FRONTEND), &get, "/healthz"), Some(2));
    }

    #[test]
    fn star_matches_any_authenticated_caller_only() {
        let p = Policy {
            rules: vec![rule(&["*"], false, &[], &[])],
        };
        assert_eq!(p.check(Some(FRONTEND), &Method::GET, "/"), Some(0));
        assert_eq!(p.check(None, &Method::GET, "/"), None);
    }

    #[test]
    fn patterns_are_validated() {
        assert!(IdPattern::parse("frontend").is_err());
        assert!(IdPattern::parse("spiffe://").is_err());
        assert!(IdPattern::parse("spiffe://d/ns*").is_err());
        assert!(IdPattern::parse("spiffe://d/*/sa").is_err());
        assert_eq!(
            IdPattern::parse("spiffe://d/ns/*").unwrap(),
            IdPattern::Prefix("spiffe://d/ns/".into())
        );
        assert!(PathPattern::parse("api").is_err());
        assert!(PathPattern::parse("/a*").is_err());
        assert_eq!(
            PathPattern::parse("/*").unwrap(),
            PathPattern::Prefix(String::new())
        );
        assert!(PathPattern::Prefix(String::new()).matches("/anything"));
    }
}
