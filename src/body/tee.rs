//! A request body copied for a mirror as it passes to the primary: up to `MAX_BODY` bytes
//! are kept and handed to the mirror once the body has ended.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::ProxyBody;

/// Body bytes kept for the copy.
pub const MAX_BODY: usize = 64 * 1024;

/// The caller's body on its way to the primary, copied for the mirror as it passes.
#[derive(Debug)]
pub struct Tee {
    inner: Box<ProxyBody>,
    limit: usize,
    copy: Option<BytesMut>,
    done: Option<oneshot::Sender<Bytes>>,
}

impl Tee {
    /// Tees `inner`; the receiver gets the whole body once it has passed (nothing when it was
    /// larger than `MAX_BODY` or broke off).
    pub fn new(inner: ProxyBody) -> (Self, oneshot::Receiver<Bytes>) {
        Self::with_limit(inner, MAX_BODY)
    }

    /// Tees `inner`, keeping at most `limit` bytes (a response body on its way into a
    /// cache; it ends with nothing sent when it has trailers).
    pub fn with_limit(inner: ProxyBody, limit: usize) -> (Self, oneshot::Receiver<Bytes>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                inner: Box::new(inner),
                limit,
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
                if frame.is_trailers() {
                    self.copy = None;
                    self.done = None;
                }
                if let (Some(copy), Some(data)) = (self.copy.as_mut(), frame.data_ref()) {
                    if copy.len() + data.len() > self.limit {
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
