//! Resilience policies on the request path: local rate limiting (`rate_limit`), fault
//! injection (`fault`), per-service circuit breaking (`breaker`), per-endpoint outlier
//! detection (`outlier`), active health checks (`health`), retries with budgets (`retry`),
//! caller deadlines (`deadline`), and request mirroring (`mirror`).

pub mod breaker;
pub mod deadline;
pub mod fault;
pub mod health;
pub mod mirror;
pub mod outlier;
pub mod rate_limit;
pub mod retry;

pub use breaker::Breaker;
pub use fault::Fault;
pub use rate_limit::RateLimiter;
