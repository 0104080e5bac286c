//! Local rate limiting: a lock-free token bucket per route and on the inbound listener.
//! Over the limit, a request is answered 429 with `retry-after` before anything is sent
//! upstream.
//!
//! The bucket is GCRA (the generic cell rate algorithm): one atomic holds the "theoretical
//! arrival time" of the next request. Each admitted request moves it one emission interval
//! (1 / rate) ahead; a request is refused when that would put it more than `burst` intervals
//! ahead of now. That is a token bucket of `burst` tokens refilled at `rate`, decided with a
//! single compare-and-swap and no lock.

use std::{
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use prometheus::IntCounter;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::{
    context::{stack_service, BoxFuture, Req, Stage},
    error::ProxyError,
};

/// A rate limit as configured: at least one request per second, and a burst of at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests per second on average.
    pub per_second: NonZeroU32,
    /// Requests at once.
    pub burst: NonZeroU32,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s, burst {}", self.per_second, self.burst)
    }
}

/// A token bucket.
#[derive(Debug)]
pub struct RateLimiter {
    /// Nanoseconds per token.
    interval: u64,
    /// How far ahead of now the arrival time may run: burst x interval.
    tolerance: u64,
    start: Instant,
    /// Theoretical arrival time, in nanoseconds since `start`.
    tat: AtomicU64,
}

impl RateLimiter {
    /// A bucket for `limit`.
    pub fn for_limit(limit: Limit) -> Self {
        Self::new(limit.per_second.get(), limit.burst.get())
    }

    /// `rate` requests per second on average, up to `burst` at once. Both are at least 1.
    pub fn new(rate: u32, burst: u32) -> Self {
        let interval = 1_000_000_000 / u64::from(rate.max(1));
        Self {
            interval,
            tolerance: interval * u64::from(burst.max(1)),
            start: Instant::now(),
            tat: AtomicU64::new(0),
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let now = self.start.elapsed().as_nanos() as u64;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now) + self.interval;
            if next - now > self.tolerance {
                return Err(Duration::from_nanos(next - now - self.tolerance));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

/// `retry-after` in whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0 || wait.is_zero())
}

// === impl RateLimitLayer ===

/// A request refused by a rate limit; a token is available after the duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited(pub Duration);

impl From<Limited> for ProxyError {
    fn from(l: Limited) -> Self {
        ProxyError::RateLimited(l.0)
    }
}

/// Builds [`RateLimit`] services: a route's or the inbound listener's limit, if it has one.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Option<Arc<RateLimiter>>,
    refused: IntCounter,
}

impl RateLimitLayer {
    /// Limits by `limiter` (none: every request passes); refusals count in `refused`.
    pub fn new(limiter: Option<Arc<RateLimiter>>, refused: IntCounter) -> Self {
        Self { limiter, refused }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            limiter: self.limiter.clone(),
            refused: self.refused.clone(),
            inner,
        }
    }
}

/// Answers [`Limited`] (429 with `retry-after`) over the limit, before anything is sent.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    limiter: Option<Arc<RateLimiter>>,
    refused: IntCounter,
    inner: S,
}

impl<S> Service<Req> for RateLimit<S>
where
    S: Stage,
{
    stack_service!();

    fn call(&mut self, req: Req) -> BoxFuture {
        if let Some(limiter) = &self.limiter {
            if let Err(wait) = limiter.try_acquire() {
                self.refused.inc();
                return Box::pin(std::future::ready(Err(Limited(wait).into())));
            }
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_a_burst_then_the_rate() {
        let rl = RateLimiter::new(10, 5);
        for _ in 0..5 {
            assert!(rl.try_acquire().is_ok());
        }
        let wait = rl.try_acquire().unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(rl.try_acquire().is_ok(), "one token after one interval");
        assert!(rl.try_acquire().is_err());
        // A quiet second refills the whole burst, and no more.
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..5 {
            assert!(rl.try_acquire().is_ok());
        }
        assert!(rl.try_acquire().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn sustained_rate_matches_the_limit() {
        let rl = RateLimiter::new(100, 1);
        let mut admitted = 0;
        // 10 s of attempts every millisecond: 100/s get through.
        for _ in 0..10_000 {
            if rl.try_acquire().is_ok() {
                admitted += 1;
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!((999..=1001).contains(&admitted), "{admitted}");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_refuses_over_the_limit_without_calling_inward() {
        use tower::{Layer, Service};

        use crate::testing::{request, Mock};

        let refused = IntCounter::new("r", "r").unwrap();
        let mock = Mock::statuses(&[200]);
        let limiter = Arc::new(RateLimiter::new(1, 1));
        let mut svc = RateLimitLayer::new(Some(limiter), refused.clone()).layer(mock.clone());
        assert!(svc.call(request("GET", "/", "")).await.is_ok());
        let err = svc.call(request("GET", "/", "")).await.unwrap_err();
        assert!(matches!(err, ProxyError::RateLimited(w) if w == Duration::from_secs(1)));
        assert_eq!((mock.calls(), refused.get()), (1, 1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(svc.call(request("GET", "/", "")).await.is_ok());

        let mut open = RateLimitLayer::new(None, refused.clone()).layer(mock.clone());
        for _ in 0..10 {
            assert!(open.call(request("GET", "/", "")).await.is_ok());
        }
    }
}
