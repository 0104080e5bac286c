//! Retries per route: which outcomes are retried, exponential backoff with full jitter, and
//! the per-service retry budget that keeps retries from turning an outage into a storm.
//!
//! The budget is a sliding window of ten one-second buckets counting requests and retries.
//! A retry is allowed while retries in the window stay under `ratio` x requests plus
//! `min_per_second` x the window, so under a total outage upstream attempts stay below
//! (1 + ratio) x requests + the floor. Buckets are atomics; a stale bucket is reset by the
//! first caller to see it (a race there only blurs one second of counts).

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

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

/// Window of the retry budget, in one-second buckets.
const WINDOW_SECS: usize = 10;

/// A service's retry budget.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_second: u32,
    start: Instant,
    buckets: [Bucket; WINDOW_SECS],
}

#[derive(Debug, Default)]
struct Bucket {
    /// Second (since `start`, plus one) the counts belong to; 0: never used.
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

impl Budget {
    /// Retries may add `ratio` of requests, plus `min_per_second` each second.
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        Self {
            ratio,
            min_per_second,
            start: Instant::now(),
            buckets: Default::default(),
        }
    }

    fn bucket(&self) -> &Bucket {
        let second = self.start.elapsed().as_secs() + 1;
        let b = &self.buckets[(second as usize) % WINDOW_SECS];
        let seen = b.second.load(Ordering::Acquire);
        if seen != second
            && b.second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Release);
            b.retries.store(0, Ordering::Release);
        }
        b
    }

    /// Counts a request (its first try).
    pub fn request(&self) {
        self.bucket().requests.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes a retry from the budget if there is room.
    pub fn try_retry(&self) -> bool {
        let now = self.start.elapsed().as_secs() + 1;
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let second = b.second.load(Ordering::Acquire);
            if second != 0 && now - second.min(now) < WINDOW_SECS as u64 {
                requests += u64::from(b.requests.load(Ordering::Acquire));
                retries += u64::from(b.retries.load(Ordering::Acquire));
            }
        }
        let allowed =
            self.ratio * requests as f64 + f64::from(self.min_per_second) * WINDOW_SECS as f64;
        if (retries as f64) < allowed {
            self.bucket().retries.fetch_add(1, Ordering::AcqRel);
            true
        } else {
            false
        }
    }
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

    #[tokio::test(start_paused = true)]
    async fn budget_bounds_retries_by_ratio_and_floor() {
        let b = Budget::new(0.2, 1);
        // 100 requests in one second: 20% of them plus a floor of 1/s over 10s.
        for _ in 0..100 {
            b.request();
        }
        let granted = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 30);
        // The window slides: ten seconds later the old counts are gone.
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..10 {
            b.request();
        }
        let granted = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 12, "0.2 x 10 + 10");
    }
}
