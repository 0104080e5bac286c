//! The per-service retry budget that keeps retries from turning an outage into a storm.
//!
//! The budget is a sliding window of ten one-second buckets counting requests and retries.
//! A retry is allowed while retries in the window stay under `ratio` x requests plus
//! `min_per_second` x the window, so under a total outage upstream attempts stay below
//! (1 + ratio) x requests + the floor. Buckets are atomics; a stale bucket is reset by the
//! first caller to see it (a race there only blurs one second of counts).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::metrics::LazyCounter;
use tokio::time::Instant;

/// A retry budget as configured: retries may add `per_mille` / 1000 of the requests, plus
/// `min_per_second` each second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSpec {
    /// Share of requests, in thousandths.
    pub per_mille: u32,
    /// The floor, in retries per second.
    pub min_per_second: u32,
}

impl Default for BudgetSpec {
    /// linkerd's defaults: 20% plus 10 per second.
    fn default() -> Self {
        Self {
            per_mille: 200,
            min_per_second: 10,
        }
    }
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
    /// Counts retries the budget refused (`remora_retry_budget_exhausted_total`).
    exhausted: Option<LazyCounter>,
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
            exhausted: None,
        }
    }

    /// A budget for `spec`.
    pub fn for_spec(spec: BudgetSpec) -> Self {
        Self::new(f64::from(spec.per_mille) / 1000.0, spec.min_per_second)
    }

    /// Counts each refused retry in `exhausted`.
    pub fn counting(mut self, exhausted: LazyCounter) -> Self {
        self.exhausted = Some(exhausted);
        self
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
            if let Some(c) = &self.exhausted {
                c.inc();
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
