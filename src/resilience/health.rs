//! Active health checks per endpoint: `GET path` every `interval` (plus up to 10% jitter, so
//! sidecars do not probe in step), through the endpoint's own pool. `unhealthy_after`
//! failures in a row (non-2xx, error or no answer within `timeout`) take the endpoint out of
//! rotation; `healthy_after` passes in a row bring it back. Endpoints start healthy, so a
//! restart does not turn traffic away before the first checks.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use prometheus::IntGauge;

/// A service's health check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Path requested.
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Failures in a row that make an endpoint unhealthy.
    pub unhealthy_after: u32,
    /// Passes in a row that make it healthy again.
    pub healthy_after: u32,
}

/// One endpoint's health.
#[derive(Debug)]
pub struct Health {
    healthy: AtomicBool,
    passes: AtomicU32,
    failures: AtomicU32,
    gauge: IntGauge,
    /// The service's count of unhealthy endpoints (the balancers' fast path).
    unhealthy: Arc<AtomicUsize>,
}

impl Health {
    /// A healthy endpoint, reported in `gauge`, counted in `unhealthy` while it is not.
    pub fn new(gauge: IntGauge, unhealthy: Arc<AtomicUsize>) -> Self {
        gauge.set(1);
        Self {
            healthy: AtomicBool::new(true),
            passes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            gauge,
            unhealthy,
        }
    }

    /// Whether the endpoint takes traffic.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Records one check; returns the new state when it changed.
    pub fn record(&self, passed: bool, check: &Check) -> Option<bool> {
        if passed {
            self.failures.store(0, Ordering::Release);
            let n = self.passes.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= check.healthy_after && !self.healthy.swap(true, Ordering::AcqRel) {
                self.unhealthy.fetch_sub(1, Ordering::AcqRel);
                self.gauge.set(1);
                return Some(true);
            }
        } else {
            self.passes.store(0, Ordering::Release);
            let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= check.unhealthy_after && self.healthy.swap(false, Ordering::AcqRel) {
                self.unhealthy.fetch_add(1, Ordering::AcqRel);
                self.gauge.set(0);
                return Some(false);
            }
        }
        None
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        // A removed endpoint no longer counts against its service.
        if !self.healthy.load(Ordering::Acquire) {
            self.unhealthy.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_unhealthy_and_back_after_runs_of_results() {
        let check = Check {
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_after: 3,
            healthy_after: 2,
        };
        let count = Arc::new(AtomicUsize::new(0));
        let h = Health::new(IntGauge::new("h", "h").unwrap(), count.clone());
        h.record(false, &check);
        h.record(false, &check);
        h.record(true, &check);
        h.record(false, &check);
        h.record(false, &check);
        assert!(h.is_healthy(), "a pass resets the run");
        h.record(false, &check);
        assert!(!h.is_healthy());
        assert_eq!(count.load(Ordering::Acquire), 1);
        h.record(true, &check);
        assert!(!h.is_healthy());
        h.record(true, &check);
        assert!(h.is_healthy());
        assert_eq!(count.load(Ordering::Acquire), 0);
    }
}
