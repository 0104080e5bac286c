//! Response caching for routes (RFC 9111, shared-cache semantics; RFC 5861's stale
//! extensions), switched on per route by `cache:`. Built in steps (issue 16):
//!
//! - [`directives`]: `Cache-Control` of requests and responses, parsed as the specification
//!   says to treat malformed, duplicated and conflicting directives.
//! - [`freshness`]: whether a response may be stored by a shared cache, its freshness
//!   lifetime (explicit or heuristic), its current age, and whether a stored response may
//!   answer a request. Pure functions of heads and clocks, tested rule by rule.
//! - [`store`]: a route's stored responses, bounded by bytes, least recently used first out.
//! - [`range`]: a caller's byte range answered from a stored whole response.
//! - [`layer`]: the route layer: hits, revalidation, storing, invalidation.

pub mod directives;
pub mod freshness;
pub mod layer;
pub mod range;
pub mod store;

/// A route's cache settings, as compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Most bytes held.
    pub max_size: u64,
    /// Largest body stored.
    pub max_object_size: u64,
}
