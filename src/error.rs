//! Errors on the request path, each recording what happened and where, with the status and
//! `x-remora-error` reason a caller sees. `proxy::rescue` is the one place they become
//! responses. Policies (`resilience/`) and the client side (`upstream/`) return these, so
//! the type lives at the crate root rather than in `proxy/`.

use std::{error::Error as StdError, fmt, sync::Arc, time::Duration};

use http::StatusCode;

/// A boxed error cause.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Why Remora answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matched and unmatched requests are rejected (or had no authority to pass
    /// through to).
    #[error("no route matches this request")]
    NoRoute,
    /// A passthrough request would come back to this listener.
    #[error("request loops back to this proxy")]
    Loop,
    /// The request is malformed (downstream's fault).
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    /// The request carries more header fields than `limits.max_headers` (downstream's fault).
    #[error("request has more header fields than limits.max_headers")]
    TooManyHeaders,
    /// The chosen service has no endpoint to send to.
    #[error("service {service} has no healthy endpoints")]
    NoEndpoints {
        /// Service name.
        service: Arc<str>,
    },
    /// A connection to the upstream could not be opened.
    #[error("upstream {target}: connect failed: {}", Chain(.source.as_ref()))]
    Connect {
        /// Endpoint or authority.
        target: String,
        /// Cause.
        source: BoxError,
    },
    /// The upstream connection or stream failed after it was opened.
    #[error("upstream {target}: {}", Chain(.source.as_ref()))]
    Reset {
        /// Endpoint or authority.
        target: String,
        /// Cause.
        source: BoxError,
    },
    /// No response headers within the route's timeout.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The service's circuit breaker refused the request (the limit's name).
    #[error("service is overloaded: circuit breaker {0} reached")]
    Overloaded(&'static str),
    /// A local rate limit refused the request; a token is available after the duration.
    #[error("rate limit exceeded; retry in {0:?}")]
    RateLimited(Duration),
    /// The route's fault injection answered instead of the upstream.
    #[error("fault injected by the route")]
    FaultInjected(StatusCode),
    /// A plaintext request on an inbound listener that takes only mTLS.
    #[error("this listener accepts only mutual TLS (inbound.tls: strict)")]
    MtlsRequired,
    /// No `inbound.authorize` rule allows this caller, path and method.
    #[error("caller {} is not authorized for this request", .caller.as_deref().unwrap_or("(unauthenticated)"))]
    Unauthorized {
        /// The caller's SPIFFE ID; `None` for a plaintext caller.
        caller: Option<Arc<str>>,
    },
    /// The upstream presented another identity than the service's `tls.identity`.
    #[error("upstream {target}: {source}")]
    PeerIdentityMismatch {
        /// Endpoint.
        target: String,
        /// Expected and presented identities.
        source: BoxError,
    },
}

impl ProxyError {
    /// The status the caller sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Loop => StatusCode::LOOP_DETECTED,
            ProxyError::BadRequest(_) | ProxyError::MtlsRequired => StatusCode::BAD_REQUEST,
            ProxyError::NoEndpoints { .. } | ProxyError::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect { .. }
            | ProxyError::Reset { .. }
            | ProxyError::PeerIdentityMismatch { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Unauthorized { .. } => StatusCode::FORBIDDEN,
            ProxyError::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::FaultInjected(status) => *status,
        }
    }

    /// The `x-remora-error` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no-route",
            ProxyError::Loop => "proxy-loop",
            ProxyError::BadRequest(_) => "malformed-request",
            ProxyError::TooManyHeaders => "too-many-headers",
            ProxyError::NoEndpoints { .. } => "no-healthy-endpoints",
            ProxyError::Overloaded(_) => "overloaded",
            ProxyError::Connect { .. } => "upstream-connect-failure",
            ProxyError::Reset { .. } => "upstream-reset",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::RateLimited(_) => "rate-limited",
            ProxyError::FaultInjected(_) => "fault-injected",
            ProxyError::Unauthorized { .. } => "unauthorized",
            ProxyError::MtlsRequired => "mtls-required",
            ProxyError::PeerIdentityMismatch { .. } => "peer-identity-mismatch",
        }
    }

    /// Whether the fault lies with the caller rather than upstream or the proxy.
    pub fn is_downstream(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::TooManyHeaders
                | ProxyError::NoRoute
                | ProxyError::Loop
                | ProxyError::RateLimited(_)
                | ProxyError::FaultInjected(_)
                | ProxyError::Unauthorized { .. }
                | ProxyError::MtlsRequired
        )
    }
}

/// Formats an error with its causes, `a: b: c`.
struct Chain<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}
