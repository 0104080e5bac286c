//! Resilience policies on the request path: local rate limiting (`rate_limit`), fault
//! injection (`fault`), and per-service circuit breaking (`breaker`).

pub mod breaker;
pub mod fault;
pub mod rate_limit;

pub use breaker::Breaker;
pub use fault::Fault;
pub use rate_limit::RateLimiter;
