//! Idle connections giving their memory back (a patch of Remora's; not in upstream h2).
//!
//! A connection keeps a 16 KiB write buffer, an 8 KiB read buffer and its streams' storage
//! for its whole life. An HTTP/2 connection with no stream open for a while needs none of
//! it, and a sidecar may hold thousands such. h2 has no clock to tell "for a while", so the
//! caller, which does, polls the connection inside [`release_idle`]: if the connection then
//! has no stream open and has flushed everything, it frees them; the next frame allocates
//! them again. hyper owns the h2 connection it serves, so this is a thread-local flag rather
//! than a method on it.

use std::cell::Cell;

thread_local! {
    static RELEASE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `poll`, a poll of HTTP/2 connections on this thread, so that each one polled that
/// is idle (no stream open, nothing left to write or half-read) frees its buffers and its
/// streams' storage before it returns `Pending`.
pub fn release_idle<R>(poll: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            RELEASE.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(RELEASE.with(|r| r.replace(true)));
    poll()
}

/// Whether the current poll runs inside [`release_idle`].
pub(crate) fn requested() -> bool {
    RELEASE.with(|r| r.get())
}
