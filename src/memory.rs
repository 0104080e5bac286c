//! The allocator, and handing a burst's freed pages back to the system.
//!
//! jemalloc, not glibc's allocator: after a burst (a flood of connections, a large reload)
//! glibc keeps the freed memory fragmented in its heap, so RSS stays at the peak; jemalloc,
//! with the background purging `.cargo/config.toml` turns on, returns it within a second or
//! two. Returning it at once always (`dirty_decay_ms:0`) halves HTTP/1.1 throughput (every
//! freed run of pages is a `madvise` and a page fault later), so only the moments that make
//! megabytes of garbage, start-up and a reload, return it at once, through
//! [`return_freed_pages`].

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Returns the pages freed since the last purge to the system now, rather than a second or
/// two later: a reload of a 1,000-route file frees several MiB at once, and the sidecar's
/// RSS should not wear them. Costs well under a millisecond; for the admin side only.
pub fn return_freed_pages() {
    use tikv_jemalloc_ctl::{arenas, Access, AsName};
    let Ok(count) = arenas::narenas::read() else {
        return;
    };
    for arena in 0..count {
        let key = format!("arena.{arena}.dirty_decay_ms\0");
        let key = key.as_str().name();
        // Restarting an arena's decay at 0 purges its dirty pages at once; then it goes on
        // at its usual pace. An arena never used answers an error, and has nothing to give.
        if let Ok(ms) = Access::<isize>::read(key) {
            let _ = key.write(0isize);
            let _ = key.write(ms);
        }
    }
}

/// What the allocator holds, in bytes, as jemalloc counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes the program has allocated and not freed.
    pub allocated: usize,
    /// Bytes in the pages that hold those allocations: `allocated` plus the free room in
    /// partly used pages (fragmentation).
    pub active: usize,
    /// Bytes of the allocator's own bookkeeping.
    pub metadata: usize,
    /// Bytes in resident pages the allocator maps: `active`, metadata, and freed pages not
    /// yet returned to the system.
    pub resident: usize,
}

/// The allocator's figures now, or `None` if it cannot give them.
pub fn usage() -> Option<Usage> {
    use tikv_jemalloc_ctl::{epoch, Access, AsName};
    // The figures are a snapshot taken when the epoch advances.
    epoch::advance().ok()?;
    let read = |key: &'static str| Access::<usize>::read(key.name()).ok();
    Some(Usage {
        allocated: read("stats.allocated\0")?,
        active: read("stats.active\0")?,
        metadata: read("stats.metadata\0")?,
        resident: read("stats.resident\0")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tikv_jemalloc_ctl::{epoch, Access, AsName};

    /// The two tests below make and free megabytes: one at a time, so neither reads the
    /// other's garbage.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Dirty pages held by every arena, in pages.
    fn dirty() -> usize {
        epoch::advance().unwrap();
        "stats.arenas.4096.pdirty\0".name().read().unwrap()
    }

    #[test]
    fn freed_pages_go_back_at_once_and_the_decay_pace_is_kept() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let garbage: Vec<Vec<u8>> = (0..256).map(|_| vec![1u8; 64 * 1024]).collect();
        drop(garbage);
        let before = dirty();
        let pace = "arena.0.dirty_decay_ms\0".name();
        let ms: isize = pace.read().unwrap();
        return_freed_pages();
        let after = dirty();
        assert!(
            before >= 1024 && after * 4 < before,
            "dirty pages: {before}, then {after}"
        );
        assert_eq!(Access::<isize>::read(pace).unwrap(), ms);
    }

    #[test]
    fn usage_counts_what_is_held() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let before = usage().unwrap();
        let held = vec![1u8; 64 << 20];
        let during = usage().unwrap();
        assert!(
            during.allocated >= before.allocated + (32 << 20),
            "{before:?} then {during:?}"
        );
        assert!(during.active >= during.allocated && during.resident >= during.active);
        assert!(during.metadata > 0);
        drop(held);
    }
}
