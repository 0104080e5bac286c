//! The one body type the proxy moves in both directions: a streamed hyper body (never
//! buffered) or a small body Remora makes itself. An enum rather than a boxed trait object,
//! so the per-request path allocates nothing for it.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub mod replay;
mod tee;

pub use replay::ReplayBody;
pub use tee::{Tee, MAX_BODY as TEE_MAX_BODY};

/// A request or response body.
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from a peer.
    Stream {
        /// The peer's body.
        body: Incoming,
        /// Keeps the endpoint's in-flight count (least-request balancer) until the body ends
        /// or is dropped.
        in_flight: Option<Place>,
        /// Keeps the request counted by its service's circuit breaker until then too.
        permit: Option<Place>,
        /// The upstream connection, returned to its pool when the body ends.
        lease: Option<Lease>,
        /// Counts the bytes as they pass, and reports the total when the body is dropped.
        meter: Option<Box<Meter>>,
    },
    /// A complete body made by Remora (`None` once sent).
    Full(Option<Bytes>),
    /// One attempt of a request body kept for retries.
    Replay(ReplayBody),
    /// A request body copied for a mirror as it passes.
    Tee(Tee),
    /// A body whose first frame was read ahead (to see gRPC trailers), then the rest.
    Prefixed {
        /// The frame read ahead, until it is sent.
        first: Option<Frame<Bytes>>,
        /// The rest of the body.
        rest: Box<ProxyBody>,
    },
}

impl ProxyBody {
    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        ProxyBody::Full((!b.is_empty()).then_some(b))
    }

    /// An upstream response body holding its connection lease, which goes back to the pool
    /// when the body ends (at once when it is already empty).
    pub fn upstream(body: Incoming, lease: Option<Lease>) -> Self {
        if body.is_end_stream() {
            if let Some(lease) = lease {
                lease.release();
            }
            return ProxyBody::stream(body);
        }
        ProxyBody::Stream {
            body,
            in_flight: None,
            permit: None,
            lease,
            meter: None,
        }
    }

    /// Keeps `permit` (the service's count of this request) until the body ends; a body
    /// that has ended, or that Remora made itself, lets it go at once.
    pub fn with_permit(mut self, permit: Place) -> Self {
        if let Some((_, slot)) = self.guards() {
            *slot = Some(permit);
        }
        self
    }

    /// Keeps `in_flight` (the endpoint's count of this request, which the least-request
    /// balancer reads) until the body ends, like [`ProxyBody::with_permit`].
    pub fn with_in_flight(mut self, in_flight: Place) -> Self {
        if let Some((slot, _)) = self.guards() {
            *slot = Some(in_flight);
        }
        self
    }

    /// The guard slots of a streamed body that has not ended.
    fn guards(&mut self) -> Option<(&mut Option<Place>, &mut Option<Place>)> {
        match self {
            ProxyBody::Stream {
                body,
                in_flight,
                permit,
                ..
            } if !body.is_end_stream() => Some((in_flight, permit)),
            ProxyBody::Prefixed { rest, .. } => rest.guards(),
            _ => None,
        }
    }

    /// A streamed body.
    pub fn stream(body: Incoming) -> Self {
        ProxyBody::Stream {
            body,
            in_flight: None,
            permit: None,
            lease: None,
            meter: None,
        }
    }

    /// Counts this body's bytes with `meter`. A streamed body that has not ended keeps it
    /// and counts as data passes; any other is counted now, whole (its size is known), and
    /// the meter reports at once. Returns the body.
    pub fn metered(mut self, mut meter: Meter) -> Self {
        match &mut self {
            ProxyBody::Stream {
                body, meter: slot, ..
            } if !body.is_end_stream() => {
                *slot = Some(Box::new(meter));
            }
            ProxyBody::Prefixed { first, rest } => {
                // The frame read ahead is counted now, the rest as it passes.
                if let Some(f) = first {
                    if let Some(data) = f.data_ref() {
                        meter.add(data.len() as u64);
                    } else if let Some(trailers) = f.trailers_ref() {
                        meter.trailers(trailers);
                    }
                }
                let inner = std::mem::replace(rest.as_mut(), ProxyBody::empty());
                **rest = inner.metered(meter);
            }
            other => {
                meter.add(other.size_hint().exact().unwrap_or(0));
                drop(meter);
            }
        }
        self
    }
}

impl From<Incoming> for ProxyBody {
    fn from(body: Incoming) -> Self {
        ProxyBody::stream(body)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Stream {
                body,
                in_flight,
                permit,
                lease,
                meter,
            } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if let (Some(m), Poll::Ready(Some(Ok(frame)))) = (meter.as_mut(), &polled) {
                    if let Some(data) = frame.data_ref() {
                        m.add(data.len() as u64);
                    } else if let Some(trailers) = frame.trailers_ref() {
                        m.trailers(trailers);
                    }
                }
                // hyper stops polling once `is_end_stream` is true, so the end is noticed here
                // as well as on the final `None`.
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if ended {
                    in_flight.take();
                    permit.take();
                    if let Some(lease) = lease.take() {
                        lease.release();
                    }
                }
                polled
            }
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Replay(r) => r.poll(cx),
            ProxyBody::Tee(t) => t.poll(cx),
            ProxyBody::Prefixed { first, rest } => match first.take() {
                Some(f) => Poll::Ready(Some(Ok(f))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Stream { body, .. } => body.is_end_stream(),
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Replay(r) => r.is_end_stream(),
            ProxyBody::Tee(t) => t.is_end_stream(),
            ProxyBody::Prefixed { first, rest } => first.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Stream { body, .. } => body.size_hint(),
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Replay(r) => r.size_hint(),
            ProxyBody::Tee(t) => t.size_hint(),
            ProxyBody::Prefixed { .. } => SizeHint::default(),
        }
    }
}

/// Counts a body's bytes into a counter as they pass, and hands the total to a hook when the
/// body is dropped: when it ended, or when it was abandoned part way (the caller went away).
pub struct Meter {
    counter: prometheus::IntCounter,
    seen: u64,
    on_drop: Option<EndHook>,
    /// Sees the body's trailers, if it has any (the gRPC status is there).
    on_trailers: Option<TrailersHook>,
}

/// Gets a metered body's byte total when it is dropped.
pub type EndHook = Box<dyn FnOnce(u64) + Send>;

/// Gets a metered body's trailers (`None`: it had none).
pub type TrailersHook = Box<dyn FnOnce(Option<&http::HeaderMap>) + Send>;

impl Meter {
    /// Counts into `counter`; `on_drop` gets the total.
    pub fn new(counter: prometheus::IntCounter, on_drop: Option<EndHook>) -> Self {
        Self {
            counter,
            seen: 0,
            on_drop,
            on_trailers: None,
        }
    }

    /// Also hands the body's trailers to `hook` when they pass (`None` when the body is done
    /// with and had none).
    pub fn with_trailers(mut self, hook: TrailersHook) -> Self {
        self.on_trailers = Some(hook);
        self
    }

    fn trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some(hook) = self.on_trailers.take() {
            hook(Some(trailers));
        }
    }

    fn add(&mut self, n: u64) {
        if n > 0 {
            self.counter.inc_by(n);
            self.seen += n;
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if let Some(hook) = self.on_trailers.take() {
            hook(None);
        }
        if let Some(hook) = self.on_drop.take() {
            hook(self.seen);
        }
    }
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

/// What counts a request while it is in flight: its service's circuit breaker
/// (`max_requests`), its endpoint (for the least-request balancer).
pub trait Release: Send + Sync + std::fmt::Debug {
    /// The request is no longer counted.
    fn release(&self);
}

/// A request's place in a count, given back when dropped: when its response body ends, or
/// with the request when it fails. A pointer to what counts it, so holding one costs no
/// allocation, and the body needs to know nothing of breakers or endpoints.
#[derive(Debug)]
pub struct Place(std::sync::Arc<dyn Release>);

impl Place {
    /// A place counted by `counter`, which has counted it already.
    pub fn new(counter: std::sync::Arc<dyn Release>) -> Self {
        Self(counter)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Where a leased HTTP/1.1 connection goes back to (its pool).
pub trait Home: Send + Sync + std::fmt::Debug {
    /// The response on `sender`'s connection was read to its end: it can take another
    /// request.
    fn give_back(&self, sender: hyper::client::conn::http1::SendRequest<ProxyBody>);
}

/// A borrowed HTTP/1.1 connection, given back to its pool when the response body ends, and
/// not when the body is dropped before its end (the connection's state is unknown then).
#[derive(Debug)]
pub struct Lease {
    home: std::sync::Weak<dyn Home>,
    sender: hyper::client::conn::http1::SendRequest<ProxyBody>,
}

impl Lease {
    /// `sender`'s connection, lent out by `home`.
    pub fn new(
        home: std::sync::Weak<dyn Home>,
        sender: hyper::client::conn::http1::SendRequest<ProxyBody>,
    ) -> Self {
        Self { home, sender }
    }

    /// The response was read to its end: the connection goes home, if the pool is still
    /// there.
    pub fn release(self) {
        if let Some(home) = self.home.upgrade() {
            home.give_back(self.sender);
        }
    }
}
