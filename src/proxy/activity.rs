//! When a connection last moved bytes, for idle timeouts: one clock per connection, touched
//! by its stream wrappers (a relaxed atomic store per read or write) and watched by one timer
//! that re-arms itself to the last activity, so no timer is reset per read.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::time::Instant;

/// When a connection last read or wrote, in milliseconds since it opened, plus one (0: never).
#[derive(Debug, Clone)]
pub struct Activity(Arc<(Instant, AtomicU64)>);

impl Activity {
    /// A connection opening now.
    pub fn new() -> Self {
        Self(Arc::new((Instant::now(), AtomicU64::new(0))))
    }

    /// Records that bytes moved now.
    pub fn touch(&self) {
        let (opened, last) = &*self.0;
        last.store(opened.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }

    /// How long ago the connection opened.
    pub fn age(&self) -> Duration {
        self.0 .0.elapsed()
    }

    /// Whether any byte moved yet.
    pub fn ever(&self) -> bool {
        self.0 .1.load(Ordering::Relaxed) != 0
    }

    /// Resolves once no byte moved within `first` of opening, or, after one did, nothing
    /// moved for `timeout`.
    pub async fn idle_or_silent(&self, first: Duration, timeout: Duration) {
        tokio::time::sleep_until(self.0 .0 + first).await;
        if self.ever() {
            self.idle(timeout).await;
        }
    }

    /// Resolves once nothing was read or written for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        let (opened, last) = &*self.0;
        loop {
            let since = last.load(Ordering::Relaxed).saturating_sub(1);
            let deadline = *opened + Duration::from_millis(since) + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}
