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

#[cfg(test)]
mod tests {
    use super::*;
    use tikv_jemalloc_ctl::{epoch, Access, AsName};

    /// Dirty pages held by every arena, in pages.
    fn dirty() -> usize {
        epoch::advance().unwrap();
        "stats.arenas.4096.pdirty\0".name().read().unwrap()
    }

    #[test]
    fn freed_pages_go_back_at_once_and_the_decay_pace_is_kept() {
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
}
