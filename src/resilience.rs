//! Resilience policies on the request path: local rate limiting (`rate_limit`) and fault
//! injection (`fault`).

pub mod fault;
pub mod rate_limit;

pub use fault::Fault;
pub use rate_limit::RateLimiter;
