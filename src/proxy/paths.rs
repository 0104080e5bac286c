//! The layer that normalizes a request's path (`routing::normalize`) right inside the
//! outermost layer, so routes, authorization and the upstream all see the same path, and a
//! path that cannot be normalized safely is a counted 400.

use std::sync::Arc;

use http::uri::{PathAndQuery, Uri};
use tower::{Layer, Service};

use crate::{
    context::{stack_service, BoxFuture, Req, Stage},
    error::ProxyError,
    routing::normalize::PathRules,
};

/// Normalizes paths by `PathRules`.
#[derive(Debug, Clone)]
pub struct NormalizeLayer(Arc<PathRules>);

impl NormalizeLayer {
    /// Paths normalized as `rules` say.
    pub fn new(rules: PathRules) -> Self {
        Self(Arc::new(rules))
    }
}

impl<S> Layer<S> for NormalizeLayer {
    type Service = Normalize<S>;

    fn layer(&self, inner: S) -> Normalize<S> {
        Normalize {
            rules: self.0.clone(),
            inner,
        }
    }
}

/// Sends the request on with its path normalized, or refuses it.
#[derive(Debug, Clone)]
pub struct Normalize<S> {
    rules: Arc<PathRules>,
    inner: S,
}

impl<S: Stage> Service<Req> for Normalize<S> {
    stack_service!();

    fn call(&mut self, mut req: Req) -> BoxFuture {
        match self.rules.apply(req.uri().path()) {
            Ok(None) => {}
            Ok(Some(path)) => {
                if let Err(e) = replace_path(&mut req, &path) {
                    return Box::pin(std::future::ready(Err(e)));
                }
            }
            Err(why) => return Box::pin(std::future::ready(Err(ProxyError::BadRequest(why)))),
        }
        self.inner.call(req)
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

    #[tokio::test]
    async fn paths_are_normalized_before_the_inner_service_and_bad_ones_refused() {
        let mock = Mock::statuses(&[200]);
        let mut svc = NormalizeLayer::new(PathRules::default()).layer(mock.clone());
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
