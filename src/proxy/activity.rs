//! When a connection last moved bytes, for idle timeouts: one clock per connection, touched
//! by its stream wrappers (a relaxed atomic store per read or write) and watched by one timer
//! that re-arms itself to the last activity, so no timer is reset per read. The listener
//! keeps a clone of each new connection's clock to close the oldest silent one at the
//! connection cap (`evict`); that clone is all it keeps, so a closed connection leaves it a
//! few dozen bytes, not the connection's task.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

/// When a connection last read or wrote, and whether it was told to close.
#[derive(Debug, Clone)]
pub struct Activity(Arc<Clock>);

#[derive(Debug)]
struct Clock {
    opened: Instant,
    /// Milliseconds since `opened` of the last read or write, plus one (0: never).
    last: AtomicU64,
    evict: Notify,
}

impl Activity {
    /// A connection opening now.
    pub fn new() -> Self {
        Self(Arc::new(Clock {
            opened: Instant::now(),
            last: AtomicU64::new(0),
            evict: Notify::new(),
        }))
    }

    /// Records that bytes moved now.
    pub fn touch(&self) {
        let c = &*self.0;
        c.last
            .store(c.opened.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }

    /// When bytes last moved, as a stamp that changes whenever they move again (to the
    /// millisecond).
    pub fn stamp(&self) -> u64 {
        self.0.last.load(Ordering::Relaxed)
    }

    /// How long ago the connection opened.
    pub fn age(&self) -> Duration {
        self.0.opened.elapsed()
    }

    /// Whether any byte moved yet.
    pub fn ever(&self) -> bool {
        self.0.last.load(Ordering::Relaxed) != 0
    }

    /// Tells the connection to close (it does at its next poll of `evicted`, or at once if
    /// it is waiting there).
    pub fn evict(&self) {
        self.0.evict.notify_one();
    }

    /// Resolves once `evict` was called.
    pub async fn evicted(&self) {
        self.0.evict.notified().await;
    }

    /// Whether this is the last clone: the connection is gone.
    pub fn orphaned(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// Resolves once no byte moved within `first` of opening, or, after one did, nothing
    /// moved for `timeout`.
    pub async fn idle_or_silent(&self, first: Duration, timeout: Duration) {
        tokio::time::sleep_until(self.0.opened + first).await;
        if self.ever() {
            self.idle(timeout).await;
        }
    }

    /// Resolves once nothing was read or written for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        let c = &*self.0;
        loop {
            let since = c.last.load(Ordering::Relaxed).saturating_sub(1);
            let deadline = c.opened + Duration::from_millis(since) + timeout;
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
