//! The one place an error becomes a response: the status from DESIGN.md's table,
//! `x-remora-error: <reason>`, `server: remora`, and the error text as the body.

use http::{header, HeaderValue, Response};

use crate::{body::ProxyBody, error::ProxyError, resilience::rate_limit::retry_after_secs};

/// The response the caller sees for `err`.
pub fn rescue(err: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(format!("{err}\n")));
    *resp.status_mut() = err.status();
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("remora"));
    h.insert("x-remora-error", HeaderValue::from_static(err.reason()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let ProxyError::RateLimited(wait) = err {
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(*wait)),
        );
    }
    resp
}
