//! The layer right inside the outermost one that every request passes before routing and
//! authorization look at it: it refuses framing two parsers could read differently and header
//! blocks with more fields than `limits.max_headers` (hyper counts them for HTTP/1.1 only, so
//! an HTTP/2 caller is held to the same limit here), and normalizes the path
//! (`routing::normalize`) so routes, authorization and the upstream all see the same one. Each
//! refusal is a counted 4xx.

use std::sync::Arc;

use http::uri::{PathAndQuery, Uri};
use tower::{Layer, Service};

use crate::{
    context::{stack_service, BoxFuture, Req, Stage},
    error::ProxyError,
    headers,
    routing::normalize::PathRules,
};

/// What every request on a listener must satisfy.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// How paths are normalized.
    pub paths: PathRules,
    /// Most header fields a request may carry (431 beyond).
    pub max_headers: usize,
}

/// Applies `Rules` to each request.
#[derive(Debug, Clone)]
pub struct HygieneLayer(Arc<Rules>);

impl HygieneLayer {
    /// Requests held to `rules`.
    pub fn new(rules: Rules) -> Self {
        Self(Arc::new(rules))
    }
}

impl<S> Layer<S> for HygieneLayer {
    type Service = Hygiene<S>;

    fn layer(&self, inner: S) -> Hygiene<S> {
        Hygiene {
            rules: self.0.clone(),
            inner,
        }
    }
}

/// Sends the request on with its path normalized, or refuses it.
#[derive(Debug, Clone)]
pub struct Hygiene<S> {
    rules: Arc<Rules>,
    inner: S,
}

impl<S> Hygiene<S> {
    /// The service this one wraps.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Stage> Service<Req> for Hygiene<S> {
    stack_service!();

    fn call(&mut self, mut req: Req) -> BoxFuture {
        match self.rules.admit(&mut req) {
            Ok(()) => self.inner.call(req),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

impl Rules {
    fn admit(&self, req: &mut Req) -> Result<(), ProxyError> {
        if req.headers().len() > self.max_headers {
            return Err(ProxyError::TooManyHeaders);
        }
        headers::check_framing(req.headers())?;
        match self.paths.apply(req.uri().path()) {
            Ok(None) => Ok(()),
            Ok(Some(path)) => replace_path(req, &path),
            Err(why) => Err(ProxyError::BadRequest(why)),
        }
    }
}

fn replace_path(req: &mut Req, path: &str) -> Result<(), ProxyError> {
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query =
        Some(PathAndQuery::try_from(pq).map_err(|_| ProxyError::BadRequest("invalid path"))?);
    *req.http.uri_mut() =
        Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid path"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{request, Mock};

    fn rules(max_headers: usize) -> Rules {
        Rules {
            paths: PathRules::default(),
            max_headers,
        }
    }

    #[tokio::test]
    async fn more_header_fields_than_the_limit_get_431_before_the_inner_service() {
        let mock = Mock::statuses(&[200]);
        let mut svc = HygieneLayer::new(rules(3)).layer(mock.clone());
        let mut req = request("GET", "/", "");
        for i in 0..3 {
            req.headers_mut()
                .append("x-many", http::HeaderValue::from(i));
        }
        assert!(
            req.headers().len() <= 3,
            "the request under test has no other field"
        );
        svc.call(req).await.unwrap();
        let mut req = request("GET", "/", "");
        for i in 0..4 {
            req.headers_mut()
                .append("x-many", http::HeaderValue::from(i));
        }
        let e = svc.call(req).await.unwrap_err();
        assert_eq!(e.status(), 431);
        assert_eq!(mock.calls(), 1);
    }

    #[tokio::test]
    async fn paths_are_normalized_before_the_inner_service_and_bad_ones_refused() {
        let mock = Mock::statuses(&[200]);
        let mut svc = HygieneLayer::new(rules(100)).layer(mock.clone());
        let r = svc
            .call(request("GET", "/public/%2e%2e/secret?x=1", ""))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(mock.seen()[0].parts.uri, "/secret?x=1");
        let e = svc
            .call(request("GET", "/public/..%2fsecret", ""))
            .await
            .unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(
            mock.calls(),
            1,
            "a refused path never reaches the inner service"
        );
    }
}
