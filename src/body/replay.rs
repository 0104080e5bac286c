//! A request body that can be sent again: the first attempt streams it live while a copy is
//! kept (up to a cap), and a retry replays the copy, then goes on reading the live body where
//! the earlier attempt stopped. Nothing waits for the whole body first, so a streaming call
//! that waits for a response before sending more does not stall. Past the cap the copy is
//! dropped and the request can no longer be retried.
//!
//! Each attempt's body carries an epoch; when a newer attempt starts, an older body that hyper
//! may still be polling ends at once instead of taking frames meant for the new one.
//!
//! Locking: the epoch is an atomic read before anything else, so an older body never touches
//! the lock, and only the attempt allowed to read takes it, for one poll of the source (never
//! across an `.await`). The lock is therefore uncontended on the data path; `attempt` and
//! `can_retry` take it once per try. Handing the source from attempt to attempt by value
//! instead (as linkerd2-proxy does) would save that lock but make a new attempt wait for an
//! older body hyper still holds and no longer polls, which a per-try timeout makes possible.

use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
};

use super::ProxyBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The copy of a request body shared by its attempts.
#[derive(Debug, Clone)]
pub struct Replay {
    shared: Arc<Common>,
}

/// What every attempt's body shares.
#[derive(Debug)]
struct Common {
    /// The attempt allowed to read.
    epoch: AtomicU32,
    /// The original body's size hint, so a known length is still sent as one.
    size: SizeHint,
    state: Mutex<Shared>,
}

#[derive(Debug)]
struct Shared {
    source: ProxyBody,
    /// Frames read so far (data and trailers), while `overflowed` is false.
    frames: Vec<Frame<Bytes>>,
    bytes: usize,
    cap: usize,
    overflowed: bool,
    ended: bool,
}

/// One attempt's view of the body.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Common>,
    epoch: u32,
    cursor: usize,
}

impl Replay {
    /// Keeps up to `cap` bytes of `body` for retries.
    pub fn new(body: ProxyBody, cap: usize) -> Self {
        let size = body.size_hint();
        Self {
            shared: Arc::new(Common {
                epoch: AtomicU32::new(0),
                size,
                state: Mutex::new(Shared {
                    source: body,
                    frames: Vec::new(),
                    bytes: 0,
                    cap,
                    overflowed: false,
                    ended: false,
                }),
            }),
        }
    }

    /// The body for the next attempt; earlier attempts' bodies stop here.
    pub fn attempt(&self) -> ReplayBody {
        let epoch = self.shared.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        ReplayBody {
            shared: self.shared.clone(),
            epoch,
            cursor: 0,
        }
    }

    /// Whether everything read so far is kept, so another attempt can be made.
    pub fn can_retry(&self) -> bool {
        !self.shared.lock().overflowed
    }
}

impl Common {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self, epoch: u32) -> bool {
        self.epoch.load(Ordering::Acquire) == epoch
    }
}

fn copy(frame: &Frame<Bytes>) -> Option<Frame<Bytes>> {
    if let Some(data) = frame.data_ref() {
        Some(Frame::data(data.clone()))
    } else {
        frame.trailers_ref().map(|t| Frame::trailers(t.clone()))
    }
}

impl ReplayBody {
    /// `Body::poll_frame`, for `ProxyBody`.
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if !self.shared.current(self.epoch) {
            return Poll::Ready(None);
        }
        let mut s = self.shared.lock();
        // A newer attempt may have started while this one waited for the lock. What an older
        // body reads is still kept (unless past the cap), so the newer one replays it.
        if !self.shared.current(self.epoch) {
            return Poll::Ready(None);
        }
        if self.cursor < s.frames.len() {
            let frame = copy(&s.frames[self.cursor]);
            self.cursor += 1;
            return Poll::Ready(frame.map(Ok));
        }
        if s.ended {
            return Poll::Ready(None);
        }
        let polled = std::pin::Pin::new(&mut s.source).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => s.ended = true,
            Poll::Ready(Some(Ok(frame))) if !s.overflowed => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                if s.bytes + len > s.cap {
                    s.overflowed = true;
                    s.frames = Vec::new();
                } else if let Some(c) = copy(frame) {
                    s.bytes += len;
                    s.frames.push(c);
                    self.cursor += 1;
                }
            }
            Poll::Ready(Some(Err(_))) => s.overflowed = true,
            _ => {}
        }
        polled
    }

    /// `Body::is_end_stream`.
    pub fn is_end_stream(&self) -> bool {
        if !self.shared.current(self.epoch) {
            return true;
        }
        let s = self.shared.lock();
        s.ended && self.cursor >= s.frames.len()
    }

    /// `Body::size_hint`: the original's, so a known length is still sent as one.
    pub fn size_hint(&self) -> SizeHint {
        self.shared.size
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::BodyExt;

    use super::*;

    /// A body of these frames, one at a time, as a peer would stream them.
    fn chunks(parts: &[&'static str]) -> ProxyBody {
        parts
            .iter()
            .rev()
            .fold(ProxyBody::empty(), |rest, p| ProxyBody::Prefixed {
                first: Some(http_body::Frame::data(Bytes::from_static(p.as_bytes()))),
                rest: Box::new(rest),
            })
    }

    async fn read(body: ReplayBody) -> Bytes {
        ProxyBody::Replay(body).collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_retry_replays_what_the_first_try_read_then_reads_on() {
        let replay = Replay::new(chunks(&["ab", "cd", "ef"]), 64);
        let mut first = ProxyBody::Replay(replay.attempt());
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.data_ref().unwrap(), "ab");
        // The first try gave up after one frame; the second gets everything.
        let second = replay.attempt();
        assert!(http_body::Body::is_end_stream(&first));
        assert!(!second.is_end_stream());
        assert!(
            first.frame().await.is_none(),
            "an older try's body ends at once"
        );
        assert_eq!(read(second).await, "abcdef");
        assert!(replay.can_retry());
        assert_eq!(read(replay.attempt()).await, "abcdef", "a third try too");
    }

    #[tokio::test]
    async fn past_the_cap_the_body_streams_on_but_cannot_be_retried() {
        let replay = Replay::new(chunks(&["0123", "4567", "89"]), 6);
        assert_eq!(read(replay.attempt()).await, "0123456789");
        assert!(!replay.can_retry());
    }
}
