//! Fault injection per route, for chaos testing: a share of requests is delayed, and a share
//! is answered with an error status instead of being forwarded. Decided per request with a
//! thread-local random number; no state is shared.

use std::time::Duration;

use http::StatusCode;

/// A route's faults.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// Delay this share of requests (percent) by `delay`.
    pub delay: Option<(f64, Duration)>,
    /// Answer this share of requests (percent) with `status`.
    pub abort: Option<(f64, StatusCode)>,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer with this status instead of forwarding.
    pub abort: Option<StatusCode>,
}

impl Fault {
    /// Draws this request's faults.
    pub fn decide(&self) -> Decision {
        let hit = |percent: f64| fastrand::f64() * 100.0 < percent;
        Decision {
            delay: self.delay.and_then(|(p, d)| hit(p).then_some(d)),
            abort: self.abort.and_then(|(p, s)| hit(p).then_some(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_percentages() {
        let f = Fault {
            delay: Some((25.0, Duration::from_millis(5))),
            abort: Some((10.0, StatusCode::SERVICE_UNAVAILABLE)),
        };
        let n = 100_000;
        let (mut delays, mut aborts) = (0, 0);
        for _ in 0..n {
            let d = f.decide();
            delays += usize::from(d.delay.is_some());
            aborts += usize::from(d.abort.is_some());
        }
        assert!((24_000..=26_000).contains(&delays), "{delays}");
        assert!((9_300..=10_700).contains(&aborts), "{aborts}");
        let never = Fault {
            delay: Some((0.0, Duration::from_millis(5))),
            abort: Some((0.0, StatusCode::SERVICE_UNAVAILABLE)),
        };
        assert!((0..1000).all(|_| never.decide() == Decision::default()));
    }
}
