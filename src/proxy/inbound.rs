//! The inbound listener's stack: callers' requests to the local app. `stack` builds it when
//! a config is loaded: observe (metrics, rescue, access log) → guard (framing, `tls: strict`,
//! authorization by the caller's identity, the verified identity header) → rate limit →
//! circuit breaker → the forwarding path to the app (`forward::path`: preparation → one try
//! within the inbound timeout → balancer → pooled client), the same layers routes use.

use std::sync::Arc;

use tower::{Service, ServiceBuilder};

use super::{
    forward::{self, Prepare},
    hygiene::{self, Hygiene, HygieneLayer},
    observe::{Observe, ObserveLayer, Observing},
};
use crate::{
    authorize::Authorizer,
    context::{stack_service, BoxFuture, Req, Stage},
    error::ProxyError,
    headers,
    metrics::{Direction, Metrics},
    resilience::{
        breaker::{BreakerLayer, CircuitBreaker},
        rate_limit::{RateLimit, RateLimitLayer},
        retry::{Retry, RetryLayer},
    },
    runtime::Inbound,
    tls::{self, accept::ClientId},
    upstream::{Balance, Passthrough, PassthroughClient},
};

pub use crate::headers::CLIENT_ID;

/// The inbound listener's whole stack.
pub type InboundStack =
    Observe<Hygiene<Guard<RateLimit<CircuitBreaker<Prepare<Retry<LocalApp>>>>>>>;

/// Assembles the inbound stack for a snapshot's inbound side, top to bottom.
pub fn stack(
    s: &Inbound,
    metrics: &Metrics,
    pools: &Arc<Passthrough>,
    observing: Observing,
    (hygiene, underscores): (hygiene::Rules, headers::Underscores),
) -> InboundStack {
    let d = Direction::Inbound;
    let rules = Arc::new(Rules {
        tls: s.tls,
        authorizer: s.authorizer.clone(),
        underscores,
    });
    ServiceBuilder::new()
        .layer(ObserveLayer::new(
            metrics.request(d, "", "app"),
            Some(s.app.name().clone()),
            observing,
        ))
        .layer(HygieneLayer::new(hygiene))
        .layer_fn(|inner| Guard {
            rules: rules.clone(),
            inner,
        })
        .layer(RateLimitLayer::new(
            s.limiter.clone(),
            metrics.rate_limited(d),
        ))
        .layer(BreakerLayer::new(s.app.breaker().clone()))
        .service(forward::path(
            s.app.spec().protocol,
            forward::Peer::Server,
            None,
            Default::default(),
            RetryLayer::once(s.timeout),
            LocalApp {
                app_port: s.app.endpoint_addrs().first().map(|a| a.port()),
                app: Balance::new(s.app.clone()),
                ports: PassthroughClient::local_ports(pools.clone(), metrics.upstream("app")),
            },
        ))
}

/// The app: `inbound.app`, or in transparent mode the app's port the caller connected to
/// (another port than `inbound.app`'s goes to `127.0.0.1` at that port).
#[derive(Debug, Clone)]
pub struct LocalApp {
    app: Balance,
    app_port: Option<u16>,
    ports: PassthroughClient,
}

impl Service<Req> for LocalApp {
    stack_service!();

    fn call(&mut self, req: Req) -> BoxFuture {
        match req.ctx.conn().original_dst {
            Some(dst) if Some(dst.port()) != self.app_port => self.ports.call(req),
            _ => self.app.call(req),
        }
    }
}

/// Lets a request in only over the transport and for the callers the listener allows, and
/// hands the app the caller's verified identity.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    rules: Arc<Rules>,
    inner: S,
}

#[derive(Debug)]
struct Rules {
    tls: tls::Mode,
    authorizer: Option<Arc<Authorizer>>,
    underscores: headers::Underscores,
}

impl<S> Service<Req> for Guard<S>
where
    S: Stage,
{
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
        let conn = req.ctx.conn().clone();
        // Also catches connections accepted in plaintext before a reload made the mode strict.
        if self.tls == tls::Mode::Strict && !conn.tls {
            return Err(ProxyError::MtlsRequired);
        }
        if let Some(authz) = &self.authorizer {
            let caller = conn.client_id.as_ref().map(ClientId::as_str);
            if !authz.allows(caller, req.method(), req.uri().path()) {
                return Err(ProxyError::Unauthorized {
                    caller: caller.map(Arc::from),
                });
            }
        }
        // Only the identity this proxy verified reaches the app under this name (preparation
        // inserts it, after hop-by-hop stripping, so no `Connection` header can remove it),
        // nor under a name a WSGI or CGI app would read as it (`x_remora_client_id`).
        req.headers_mut().remove(CLIENT_ID);
        headers::check_underscores(req.headers_mut(), self.underscores)?;
        Ok(())
    }
}
