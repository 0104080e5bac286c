//! Outlier detection per endpoint: after `consecutive_failures` failed responses in a row
//! (5xx, including Remora's own connect failures, resets and timeouts) an endpoint is ejected
//! for `base_ejection` x the number of times it has been ejected, while at most
//! `max_ejected_percent` of the service is out at once. When its time is up it takes traffic
//! again, and is ejected again, for longer, if it keeps failing. Balancers skip ejected
//! endpoints. All state is atomics; while nothing is ejected a pick pays one atomic load.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use prometheus::IntGauge;

use crate::metrics::LazyCounter;
use tokio::time::Instant;

/// A service's outlier detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection's length; the n-th lasts n times as long.
    pub base_ejection: Duration,
    /// Most endpoints out at once, in percent of the service's endpoints.
    pub max_ejected_percent: u8,
}

/// Service-wide state.
#[derive(Debug)]
pub struct Detector {
    policy: Policy,
    start: Instant,
    ejected: AtomicUsize,
    ejections: LazyCounter,
}

/// One endpoint's state.
#[derive(Debug)]
pub struct EndpointState {
    consecutive: AtomicU32,
    times_ejected: AtomicU32,
    /// Milliseconds since the detector's start until which the endpoint is out; 0: in.
    until_ms: AtomicU64,
    gauge: IntGauge,
}

impl Detector {
    /// A detector for `policy`, counting ejections in `ejections`.
    pub fn new(policy: Policy, ejections: LazyCounter) -> Self {
        Self {
            policy,
            start: Instant::now(),
            ejected: AtomicUsize::new(0),
            ejections,
        }
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Whether any endpoint is out (the balancers' fast path).
    pub fn any_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire) > 0
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    /// Whether `ep` is out now; an ejection whose time is up ends here.
    pub fn is_ejected(&self, ep: &EndpointState) -> bool {
        let until = ep.until_ms.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        if self.now_ms() < until {
            return true;
        }
        if ep
            .until_ms
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            ep.consecutive.store(0, Ordering::Release);
            ep.gauge.set(0);
        }
        false
    }

    /// Records one response of `ep`, a service of `endpoints` endpoints.
    pub fn observe(&self, ep: &EndpointState, success: bool, endpoints: usize) {
        if success {
            ep.consecutive.store(0, Ordering::Release);
            return;
        }
        let failures = ep.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if failures < self.policy.consecutive_failures || ep.until_ms.load(Ordering::Acquire) != 0 {
            return;
        }
        // Room under max_ejected_percent?
        let max = endpoints * usize::from(self.policy.max_ejected_percent) / 100;
        let mut out = self.ejected.load(Ordering::Acquire);
        loop {
            if out >= max {
                return;
            }
            match self.ejected.compare_exchange_weak(
                out,
                out + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(current) => out = current,
            }
        }
        let n = ep.times_ejected.fetch_add(1, Ordering::AcqRel) + 1;
        let length = self.policy.base_ejection.saturating_mul(n);
        ep.until_ms
            .store(self.now_ms() + length.as_millis() as u64, Ordering::Release);
        ep.consecutive.store(0, Ordering::Release);
        ep.gauge.set(1);
        self.ejections.inc();
    }
}

impl EndpointState {
    /// Fresh state, reporting ejection in `gauge`.
    pub fn new(gauge: IntGauge) -> Self {
        gauge.set(0);
        Self {
            consecutive: AtomicU32::new(0),
            times_ejected: AtomicU32::new(0),
            until_ms: AtomicU64::new(0),
            gauge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(max_percent: u8) -> (Detector, Vec<EndpointState>) {
        let policy = Policy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejected_percent: max_percent,
        };
        let d = Detector::new(
            policy,
            prometheus::IntCounter::new("e", "e").unwrap().into(),
        );
        let eps = (0..4)
            .map(|i| EndpointState::new(IntGauge::new(format!("g{i}"), "g").unwrap()))
            .collect();
        (d, eps)
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_for_growing_times() {
        let (d, eps) = setup(50);
        let ep = &eps[0];
        d.observe(ep, false, 4);
        d.observe(ep, false, 4);
        d.observe(ep, true, 4);
        d.observe(ep, false, 4);
        d.observe(ep, false, 4);
        assert!(!d.is_ejected(ep), "a success resets the count");
        d.observe(ep, false, 4);
        assert!(d.is_ejected(ep) && d.any_ejected());
        assert_eq!(ep.gauge.get(), 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!d.is_ejected(ep), "back after base_ejection");
        assert!(!d.any_ejected());
        for _ in 0..3 {
            d.observe(ep, false, 4);
        }
        assert!(d.is_ejected(ep));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(d.is_ejected(ep), "the second ejection lasts twice as long");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!d.is_ejected(ep));
    }

    #[tokio::test(start_paused = true)]
    async fn never_ejects_more_than_the_max_percent() {
        let (d, eps) = setup(50);
        for ep in &eps {
            for _ in 0..3 {
                d.observe(ep, false, 4);
            }
        }
        let out = eps.iter().filter(|e| d.is_ejected(e)).count();
        assert_eq!(out, 2, "50% of 4");
    }
}
