//! Request mirroring per route: a share of requests is copied to a shadow service, whose
//! answer and failures never reach the caller. The copy goes out once the caller's request
//! body has been read (a tee keeps up to 64 KiB of it; larger bodies are not mirrored), with
//! `-shadow` appended to the host so the shadow can tell. At most `MAX_IN_FLIGHT` copies per
//! route are outstanding; further ones are dropped and counted, so a slow shadow can neither
//! slow callers down nor grow memory without bound.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{oneshot, Semaphore};

use crate::body::ProxyBody;

/// Mirror copies of one route outstanding at once.
pub const MAX_IN_FLIGHT: usize = 64;

/// Body bytes kept for the copy.
pub const MAX_BODY: usize = 64 * 1024;

/// A route's mirroring.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    /// The shadow service.
    pub service: String,
    /// Share of requests copied, 0 to 100.
    pub percent: f64,
}

impl Mirror {
    /// Whether this request is copied.
    pub fn hit(&self) -> bool {
        fastrand::f64() * 100.0 < self.percent
    }
}

/// Bounds the copies in flight for one route.
#[derive(Debug)]
pub struct Limiter(Arc<Semaphore>);

impl Default for Limiter {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(MAX_IN_FLIGHT)))
    }
}

impl Limiter {
    /// A slot for one copy, or `None` when `MAX_IN_FLIGHT` are outstanding.
    pub fn try_acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// The caller's body on its way to the primary, copied for the mirror as it passes.
#[derive(Debug)]
pub struct Tee {
    inner: Box<ProxyBody>,
    copy: Option<BytesMut>,
    done: Option<oneshot::Sender<Bytes>>,
}

impl Tee {
    /// Tees `inner`; the receiver gets the whole body once it has passed (nothing when it was
    /// larger than `MAX_BODY` or broke off).
    pub fn new(inner: ProxyBody) -> (Self, oneshot::Receiver<Bytes>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                inner: Box::new(inner),
                copy: Some(BytesMut::new()),
                done: Some(tx),
            },
            rx,
        )
    }

    fn finish(&mut self) {
        if let (Some(copy), Some(done)) = (self.copy.take(), self.done.take()) {
            let _ = done.send(copy.freeze());
        }
    }

    /// `Body::poll_frame`, for `ProxyBody`.
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(self.inner.as_mut()).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(copy), Some(data)) = (self.copy.as_mut(), frame.data_ref()) {
                    if copy.len() + data.len() > MAX_BODY {
                        self.copy = None;
                        self.done = None;
                    } else {
                        copy.extend_from_slice(data);
                    }
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => {
                self.copy = None;
                self.done = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    /// `Body::is_end_stream`.
    pub fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    /// `Body::size_hint`.
    pub fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
