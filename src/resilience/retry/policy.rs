//! What a route retries: the conditions, idempotency, and exponential backoff with full
//! jitter (a `Retry-After` honoured up to the maximum).

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};

/// What a route retries, how often and how patiently.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Limit for each try (the route timeout still bounds them all).
    pub per_try_timeout: Option<Duration>,
    /// Outcomes retried.
    pub on: Conditions,
    /// First backoff ceiling.
    pub backoff_base: Duration,
    /// Largest backoff (and largest `Retry-After` honoured).
    pub backoff_max: Duration,
    /// Retry POST and PATCH even after they reached the upstream.
    pub non_idempotent: bool,
}

/// Retry conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Any 5xx.
    pub server_error: bool,
    /// 502, 503, 504 (Remora's own connect failures and per-try timeouts included).
    pub gateway_error: bool,
    /// The connection could not be opened.
    pub connect_failure: bool,
    /// The connection or stream failed after it was opened.
    pub reset: bool,
    /// These statuses.
    pub statuses: Vec<u16>,
    /// These gRPC status codes (1 cancelled, 4 deadline-exceeded, 8 resource-exhausted,
    /// 14 unavailable).
    pub grpc: Vec<u32>,
}

/// How one try ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status and, for gRPC, this `grpc-status`.
    Response(StatusCode, Option<u32>),
    /// No connection.
    ConnectFailure,
    /// The connection or stream broke.
    Reset,
    /// The try's time ran out.
    Timeout,
}

impl Policy {
    /// Whether `outcome` of a `method` request should be tried again.
    pub fn retries(&self, method: &Method, outcome: Outcome) -> bool {
        let c = &self.on;
        let idempotent = !matches!(*method, Method::POST | Method::PATCH) || self.non_idempotent;
        match outcome {
            // Never reached the upstream: safe for any method.
            Outcome::ConnectFailure => c.connect_failure || c.gateway_error || c.server_error,
            // Every gRPC call is a POST: listing a gRPC code is the opt-in.
            Outcome::Response(_, Some(g)) if c.grpc.contains(&g) => true,
            _ if !idempotent => false,
            Outcome::Reset => c.reset,
            Outcome::Timeout => c.gateway_error || c.server_error,
            Outcome::Response(status, grpc) => {
                let code = status.as_u16();
                (c.server_error && status.is_server_error())
                    || (c.gateway_error && matches!(code, 502..=504))
                    || c.statuses.contains(&code)
                    || grpc.is_some_and(|g| c.grpc.contains(&g))
            }
        }
    }

    /// Backoff before retry number `retry` (1 for the first retry): full jitter over an
    /// exponentially growing ceiling; a `Retry-After` wins when larger, up to the max.
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .backoff_base
            .saturating_mul(1u32 << (retry.saturating_sub(1)).min(16))
            .min(self.backoff_max);
        let jittered = ceiling.mul_f64(fastrand::f64());
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.backoff_max)),
            None => jittered,
        }
    }
}

/// `grpc-status` from headers or trailers.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            attempts: 3,
            per_try_timeout: None,
            on: Conditions {
                gateway_error: true,
                connect_failure: true,
                reset: true,
                statuses: vec![409],
                grpc: vec![14],
                ..Default::default()
            },
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            non_idempotent: false,
        }
    }

    #[test]
    fn conditions_and_idempotency() {
        let p = policy();
        let r = |s: u16| Outcome::Response(StatusCode::from_u16(s).unwrap(), None);
        assert!(p.retries(&Method::GET, r(503)));
        assert!(p.retries(&Method::GET, r(409)));
        assert!(
            !p.retries(&Method::GET, r(500)),
            "500 is not a gateway error"
        );
        assert!(!p.retries(&Method::GET, r(200)));
        assert!(p.retries(&Method::GET, Outcome::Response(StatusCode::OK, Some(14))));
        assert!(
            p.retries(&Method::POST, Outcome::Response(StatusCode::OK, Some(14))),
            "gRPC codes are retried for POST, the method of every gRPC call"
        );
        assert!(!p.retries(&Method::POST, Outcome::Response(StatusCode::OK, Some(2))));
        assert!(p.retries(&Method::GET, Outcome::Timeout));
        assert!(
            p.retries(&Method::POST, Outcome::ConnectFailure),
            "never reached the upstream"
        );
        assert!(
            !p.retries(&Method::POST, r(503)),
            "POST reached the upstream"
        );
        assert!(!p.retries(&Method::PATCH, Outcome::Reset));
        let opt_in = Policy {
            non_idempotent: true,
            ..policy()
        };
        assert!(opt_in.retries(&Method::POST, r(503)));
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let p = policy();
        for _ in 0..200 {
            assert!(p.backoff(1, None) <= Duration::from_millis(25));
            assert!(p.backoff(3, None) <= Duration::from_millis(100));
            assert!(p.backoff(10, None) <= Duration::from_millis(250));
        }
        assert_eq!(
            p.backoff(1, Some(Duration::from_millis(200))),
            Duration::from_millis(200)
        );
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(5))),
            Duration::from_millis(250)
        );
    }
}
