//! Wires a process together: binds (or takes pre-bound) listeners, starts the admin and data
//! listeners on one runtime state, and runs the graceful stop (`/ready` 503 at once, accept
//! for `shutdown.grace`, then drain in-flight requests for at most `shutdown.drain_timeout`).

use std::{future::Future, io, net::SocketAddr, path::PathBuf, sync::Arc};

use arc_swap::ArcSwap;

use tokio::{
    net::TcpListener,
    sync::{mpsc, watch, Mutex},
    task::JoinHandle,
};

use crate::{
    admin,
    body::ProxyBody,
    config::{Compiled, Limits, Startup},
    metrics::Direction,
    proxy::{self, server, ConnMeta, Stacks},
    reload::Reloader,
    runtime::{Runtime, Snapshot},
    tls::{self, accept::Terminator},
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

/// Serves `compiled` on `listeners` until `signal` resolves (or `POST /shutdown` on the admin
/// listener), then stops gracefully. With a
/// `source`, the file is reloaded when it changes, on SIGHUP and on `POST /reload`.
pub async fn run(
    compiled: Compiled,
    listeners: Listeners,
    source: Option<ConfigSource>,
    signal: impl Future<Output = ()>,
) {
    let startup = compiled.startup();
    let rt = Runtime::new(compiled);
    tls::watch::spawn(&rt.shared.tls, tls::watch::PERIOD);
    let addrs = listeners.addrs();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (drained_tx, mut drained_rx) = mpsc::channel::<()>(1);
    let life = server::Lifecycle {
        stop: stop_rx.clone(),
        drained: drained_tx,
    };
    let data = DataListeners::new(rt.clone(), life);
    data.start(
        Direction::Inbound,
        listeners.inbound,
        startup.inbound,
        startup.limits,
    )
    .await;
    data.start(
        Direction::Outbound,
        listeners.outbound,
        startup.outbound,
        startup.limits,
    )
    .await;

    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let reloader = source.map(|s| Reloader::new(s.path, &s.text, rt.clone(), data.clone()));
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
    // Reading and compiling the file left megabytes of garbage behind.
    crate::memory::return_freed_pages();
    rt.set_ready(true);
    tracing::info!("ready");

    tokio::select! {
        _ = signal => {}
        _ = rt.stop_requested() => tracing::info!("stop requested on the admin listener"),
    }
    // The timing of the config in force now, which may have been reloaded.
    let shutdown = rt.snapshot().shutdown;
    rt.set_ready(false);
    tracing::info!(grace = ?shutdown.grace, drain_timeout = ?shutdown.drain_timeout, "stopping: readiness off");
    tokio::time::sleep(shutdown.grace).await;
    let _ = stop_tx.send(true);
    data.close().await;
    // Every connection task holds a sender; `recv` returns `None` once all have finished.
    match tokio::time::timeout(shutdown.drain_timeout, drained_rx.recv()).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
    let _ = admin_stop_tx.send(true);
    let _ = admin_task.await;
}

/// TLS termination for the inbound listener, in the mode of the config in force.
fn inbound_terminator(rt: &Arc<Runtime>) -> Terminator {
    let weak = Arc::downgrade(rt);
    Terminator::new(rt.shared.tls.clone(), move || {
        weak.upgrade()
            .and_then(|rt| rt.snapshot().inbound.as_ref().map(|ib| ib.tls))
            .unwrap_or(tls::Mode::Disabled)
    })
}

/// A listener's handler: the stacks in force for its direction, taken at every request and
/// every opaque connection.
#[derive(Debug, Clone)]
struct Wired {
    stacks: Arc<ArcSwap<Stacks>>,
    d: Direction,
}

impl server::Handler for Wired {
    fn http(
        self,
        conn: ConnMeta,
        req: http::Request<hyper::body::Incoming>,
    ) -> impl Future<Output = http::Response<ProxyBody>> + Send + 'static {
        proxy::handle(self.stacks.load().get(self.d), conn, req)
    }

    fn tcp(
        &self,
        conn: ConnMeta,
        io: Box<dyn server::Io>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let tcp = self.stacks.load().tcp(self.d);
        Box::pin(async move {
            if let Some(tcp) = tcp {
                tcp.serve(conn, io).await;
            }
        })
    }

    fn opaque_port(&self, port: u16) -> bool {
        self.stacks.load().opaque_port(self.d, port)
    }
}

/// The inbound and outbound accept loops, which a reload may move to a new address, add,
/// remove, or restart with new limits. A new address is bound before the old listener stops
/// accepting; connections already open stay on the loop that accepted them until they end.
#[derive(Debug)]
pub struct DataListeners {
    rt: Arc<Runtime>,
    /// The stacks of the snapshot in force; every request takes its listener's from here.
    stacks: Arc<ArcSwap<Stacks>>,
    /// Dropped at close, so the process can see every connection end.
    life: std::sync::Mutex<Option<server::Lifecycle>>,
    slots: Mutex<[Option<Slot>; 2]>,
}

#[derive(Debug)]
struct Slot {
    /// The address as configured (port 0 stays 0 here).
    configured: SocketAddr,
    limits: Limits,
    accept_stop: watch::Sender<bool>,
    task: JoinHandle<TcpListener>,
}

/// Listeners bound for a reload that has not been applied yet.
#[derive(Debug, Default)]
pub struct Plan {
    changes: Vec<(Direction, Change)>,
}

#[derive(Debug)]
enum Change {
    /// Start accepting on a new listener (replacing any current one).
    Bind(TcpListener, SocketAddr, Limits),
    /// Keep the listener; accept with new limits.
    Limits(Limits),
    /// Stop accepting.
    Remove,
}

impl crate::reload::Listeners for DataListeners {
    fn prepare<'a>(
        &'a self,
        next: &'a Startup,
    ) -> crate::reload::BoxFuture<'a, Result<crate::reload::Plan, String>> {
        Box::pin(async move {
            let plan = DataListeners::prepare(self, next).await?;
            Ok(crate::reload::Plan(Box::new(plan)))
        })
    }

    fn publish(&self, next: Snapshot) {
        let next = Arc::new(next);
        let previous = self.stacks.load_full();
        let stacks = Stacks::build(&next, &self.rt.shared, Some(&previous));
        self.stacks.store(Arc::new(stacks));
        self.rt.publish(next);
    }

    fn commit(&self, plan: crate::reload::Plan) -> crate::reload::BoxFuture<'_, Vec<String>> {
        Box::pin(async move {
            match plan.0.downcast::<Plan>() {
                Ok(plan) => DataListeners::commit(self, *plan).await,
                Err(_) => vec![],
            }
        })
    }
}

impl DataListeners {
    fn new(rt: Arc<Runtime>, life: server::Lifecycle) -> Arc<Self> {
        let stacks = Stacks::build(&rt.snapshot(), &rt.shared, None);
        Arc::new(Self {
            rt,
            stacks: Arc::new(ArcSwap::from_pointee(stacks)),
            life: std::sync::Mutex::new(Some(life)),
            slots: Mutex::new([None, None]),
        })
    }

    async fn start(
        &self,
        d: Direction,
        listener: Option<TcpListener>,
        configured: Option<SocketAddr>,
        limits: Limits,
    ) {
        if let (Some(l), Some(addr)) = (listener, configured) {
            let slot = self.spawn(d, l, addr, limits);
            self.slots.lock().await[index(d)] = slot;
        }
    }

    fn spawn(
        &self,
        d: Direction,
        listener: TcpListener,
        configured: SocketAddr,
        limits: Limits,
    ) -> Option<Slot> {
        let life = self
            .life
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let local = server::local_addr(&listener);
        tracing::info!(addr = %local, direction = d.as_str(), "listener bound");
        let meta = ConnMeta::plain(local, local, d);
        let (accept_stop, accept_rx) = watch::channel(false);
        let (rt, stacks) = (self.rt.clone(), self.stacks.clone());
        let task = tokio::spawn(async move {
            let metrics = rt.shared.metrics.clone();
            let tls = match d {
                Direction::Inbound => Some(Arc::new(inbound_terminator(&rt))),
                Direction::Outbound => None,
            };
            let h = Wired { stacks, d };
            server::serve(listener, limits, meta, &metrics, life, accept_rx, tls, h).await
        });
        Some(Slot {
            configured,
            limits,
            accept_stop,
            task,
        })
    }

    /// Binds every new address `next` needs. Nothing changes until `commit`; on an error the
    /// listeners bound so far are closed again.
    async fn prepare(&self, next: &Startup) -> Result<Plan, String> {
        let slots = self.slots.lock().await;
        let mut plan = Plan::default();
        for (d, want) in [
            (Direction::Inbound, next.inbound),
            (Direction::Outbound, next.outbound),
        ] {
            let current = slots[index(d)].as_ref();
            let change = match (current, want) {
                (None, None) => None,
                (Some(_), None) => Some(Change::Remove),
                (Some(cur), Some(addr)) if cur.configured == addr => {
                    (cur.limits != next.limits).then_some(Change::Limits(next.limits))
                }
                (_, Some(addr)) => {
                    let listener = TcpListener::bind(addr)
                        .await
                        .map_err(|e| format!("cannot listen on {addr} ({}): {e}", d.as_str()))?;
                    Some(Change::Bind(listener, addr, next.limits))
                }
            };
            plan.changes.extend(change.map(|c| (d, c)));
        }
        Ok(plan)
    }

    /// Applies a prepared plan; returns what changed, for the reload's summary.
    async fn commit(&self, plan: Plan) -> Vec<String> {
        let mut slots = self.slots.lock().await;
        let mut done = Vec::new();
        for (d, change) in plan.changes {
            let slot = &mut slots[index(d)];
            match change {
                Change::Bind(listener, addr, limits) => {
                    let old = slot.take();
                    *slot = self.spawn(d, listener, addr, limits);
                    if let Some(old) = old {
                        let _ = old.accept_stop.send(true);
                    }
                    done.push(format!("{} listener on {addr}", d.as_str()));
                }
                Change::Limits(limits) => {
                    if let Some(old) = slot.take() {
                        let _ = old.accept_stop.send(true);
                        // Connections arriving meanwhile wait in the accept queue.
                        if let Ok(listener) = old.task.await {
                            *slot = self.spawn(d, listener, old.configured, limits);
                        }
                    }
                    done.push(format!("{} limits", d.as_str()));
                }
                Change::Remove => {
                    if let Some(old) = slot.take() {
                        let _ = old.accept_stop.send(true);
                    }
                    done.push(format!("{} listener removed", d.as_str()));
                }
            }
        }
        done
    }

    /// Stops every accept loop and lets go of the drain handle.
    async fn close(&self) {
        self.life.lock().unwrap_or_else(|p| p.into_inner()).take();
        let slots = std::mem::take(&mut *self.slots.lock().await);
        for slot in slots.into_iter().flatten() {
            let _ = slot.accept_stop.send(true);
            let _ = slot.task.await;
        }
    }
}

fn index(d: Direction) -> usize {
    match d {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled, so a signal during start-up stops the process gracefully
/// rather than by the signal's default action.
#[cfg(unix)]
pub fn stop_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn stop_signal() -> impl Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
