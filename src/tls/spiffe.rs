//! SPIFFE ID patterns as the control file writes them: an exact ID, every ID under a path
//! prefix, or any authenticated caller.

/// A pattern for caller SPIFFE IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdPattern {
    /// Any authenticated caller (`*`).
    Any,
    /// Exactly this ID.
    Exact(String),
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
                Ok(IdPattern::Prefix(prefix.to_owned()))
            }
            Some(_) => Err(format!(
                "{text:?}: a wildcard is allowed only as a whole last segment, e.g. spiffe://cluster.local/ns/shop/*"
            )),
            None if text.contains('*') => Err(format!(
                "{text:?}: a wildcard is allowed only as a whole last segment"
            )),
            None => Ok(IdPattern::Exact(text.to_owned())),
        }
    }

    /// Whether `id` is one the pattern takes.
    pub fn matches(&self, id: &str) -> bool {
        match self {
            IdPattern::Any => true,
            IdPattern::Exact(e) => e == id,
            IdPattern::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}
