//! Wires a process together: binds (or takes pre-bound) listeners, starts the admin and data
//! listeners on one runtime state, and runs the graceful stop (`/ready` 503 at once, accept
//! for `shutdown.grace`, then drain in-flight requests for at most `shutdown.drain_timeout`).

use std::{future::Future, io, net::SocketAddr, path::PathBuf};

use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};

use crate::{
    admin,
    config::Compiled,
    metrics::Direction,
    proxy::{inbound, outbound, server, ConnMeta},
    reload::Reloader,
    runtime::Runtime,
};

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    /// Which listener.
    pub what: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    pub source: io::Error,
}

/// The process's listening sockets, bound before the proxy starts (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// Admin listener.
    pub admin: TcpListener,
    /// Inbound listener, when configured.
    pub inbound: Option<TcpListener>,
    /// Outbound listener, when configured.
    pub outbound: Option<TcpListener>,
}

/// Addresses the listeners are bound to.
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    /// Admin.
    pub admin: SocketAddr,
    /// Inbound.
    pub inbound: Option<SocketAddr>,
    /// Outbound.
    pub outbound: Option<SocketAddr>,
}

impl Listeners {
    /// Binds every listener the config names.
    pub async fn bind(c: &Compiled) -> Result<Self, BindError> {
        async fn one(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { what, addr, source })
        }
        Ok(Self {
            admin: one("admin", c.admin).await?,
            inbound: match &c.inbound {
                Some(i) => Some(one("inbound", i.listen).await?),
                None => None,
            },
            outbound: match &c.outbound {
                Some(o) => Some(one("outbound", o.listen).await?),
                None => None,
            },
        })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> BoundAddrs {
        BoundAddrs {
            admin: server::local_addr(&self.admin),
            inbound: self.inbound.as_ref().map(server::local_addr),
            outbound: self.outbound.as_ref().map(server::local_addr),
        }
    }
}

/// The file a config was read from, so that it can be reloaded.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The control file's path.
    pub path: PathBuf,
    /// The content that `compiled` was made from.
    pub text: Vec<u8>,
}

/// Serves `compiled` on `listeners` until `signal` resolves, then stops gracefully. With a
/// `source`, the file is reloaded when it changes, on SIGHUP and on `POST /reload`.
pub async fn run(
    compiled: Compiled,
    listeners: Listeners,
    source: Option<ConfigSource>,
    signal: impl Future<Output = ()>,
) {
    let limits = compiled.limits;
    let rt = Runtime::new(compiled);
    let addrs = listeners.addrs();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (drained_tx, mut drained_rx) = mpsc::channel::<()>(1);
    let life = server::Lifecycle {
        stop: stop_rx.clone(),
        drained: drained_tx,
    };

    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let reloader = source.map(|s| Reloader::new(s.path, &s.text, rt.clone()));
    if let Some(r) = &reloader {
        r.spawn_triggers(admin_stop_rx.clone());
    }
    tracing::info!(addr = %addrs.admin, "admin listener bound");
    let admin_task = tokio::spawn(admin::serve(
        listeners.admin,
        rt.clone(),
        reloader,
        admin_stop_rx,
    ));

    let mut tasks = Vec::new();
    for (listener, direction) in [
        (listeners.inbound, Direction::Inbound),
        (listeners.outbound, Direction::Outbound),
    ] {
        let Some(listener) = listener else { continue };
        let local = server::local_addr(&listener);
        tracing::info!(addr = %local, direction = direction.as_str(), "listener bound");
        let meta = ConnMeta {
            peer: local,
            local,
            direction,
        };
        let (rt, life) = (rt.clone(), life.clone());
        tasks.push(tokio::spawn(async move {
            let metrics = rt.metrics.clone();
            match direction {
                Direction::Inbound => {
                    let h = move |conn, req| inbound::handle(rt.clone(), conn, req);
                    server::serve(listener, limits, meta, &metrics, life, h).await;
                }
                Direction::Outbound => {
                    let h = move |conn, req| outbound::handle(rt.clone(), conn, req);
                    server::serve(listener, limits, meta, &metrics, life, h).await;
                }
            }
        }));
    }
    drop(life);
    rt.set_ready(true);
    tracing::info!("ready");

    signal.await;
    // The timing of the config in force now, which may have been reloaded.
    let shutdown = rt.snapshot().shutdown;
    rt.set_ready(false);
    tracing::info!(grace = ?shutdown.grace, drain_timeout = ?shutdown.drain_timeout, "stopping: readiness off");
    tokio::time::sleep(shutdown.grace).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    // Every connection task holds a sender; `recv` returns `None` once all have finished.
    match tokio::time::timeout(shutdown.drain_timeout, drained_rx.recv()).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
    let _ = admin_stop_tx.send(true);
    let _ = admin_task.await;
}

/// Resolves on SIGTERM or SIGINT.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
