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

/// When a connection last read or wrote, in milliseconds since it opened.
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
        last.store(opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing was read or written for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        let (opened, last) = &*self.0;
        loop {
            let deadline = *opened + Duration::from_millis(last.load(Ordering::Relaxed)) + timeout;
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
