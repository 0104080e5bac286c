//! Resilience policies on the request path: local rate limiting (`rate_limit`), fault
//! injection (`fault`), per-service circuit breaking (`breaker`), and per-endpoint outlier
//! detection (`outlier`).

pub mod breaker;
pub mod fault;
pub mod outlier;
pub mod rate_limit;

pub use breaker::Breaker;
pub use fault::Fault;
pub use rate_limit::RateLimiter;
