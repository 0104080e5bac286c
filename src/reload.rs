//! Live reloads of the control file. Triggers: the file changing (polled), SIGHUP, and
//! `POST /reload` on the admin listener. A reload reads, validates and compiles the file off
//! the request path, binds it to live services (a service whose definition did not change
//! keeps its pools and state), and publishes it atomically: a request sees the old config or
//! the new one, never a mix, and in-flight requests finish on the one they started with. A
//! file that does not compile changes nothing; the error is logged, counted, and shown by
//! `GET /reload`.
//!
//! The file is polled rather than watched with inotify: reading a small file twice a second
//! is cheap, and one mechanism then covers in-place writes, rename-over, and the Kubernetes
//! ConfigMap `..data` symlink swap (which inotify on the file itself misses). A change is
//! applied once the content has held still for one poll, so a half-written file is not read.

use std::{
    collections::BTreeMap,
    fmt,
    hash::{DefaultHasher, Hash, Hasher},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use tokio::sync::{watch, Mutex};

use crate::{
    config,
    routing::RouteSpec,
    runtime::{Runtime, Snapshot},
    upstream::ServiceSpec,
};

/// How often the file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The longest a read of the control file may take (a file on a hung network mount).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest reading and compiling the control file may take on a reload. A file under the
/// size and nesting caps compiles in about a second at worst (20,000 routes); one that takes
/// longer is refused, and no reload starts until its compile has ended.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(15);

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The file's content changed.
    File,
    /// SIGHUP.
    Signal,
    /// `POST /reload`.
    Admin,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::File => "file",
            Trigger::Signal => "sighup",
            Trigger::Admin => "admin",
        })
    }
}

/// The outcome of the last reload, for `GET /reload`.
#[derive(Debug, Clone)]
pub struct Status {
    /// When it finished.
    pub at: SystemTime,
    /// What started it.
    pub trigger: Option<Trigger>,
    /// What changed, or every problem (one `FILE:LINE:COLUMN: path: message` per line).
    pub result: Result<Changes, String>,
}

/// What a reload needs of the process's listeners, which the wiring (`app`) provides: bind
/// what a new config needs while nothing changes yet (`prepare`), then switch (`commit`).
pub trait Listeners: Send + Sync + std::fmt::Debug {
    /// Binds every new address `next` needs; on an error nothing has changed.
    fn prepare<'a>(&'a self, next: &'a config::Startup) -> BoxFuture<'a, Result<Plan, String>>;
    /// Puts `next` in force: the data path's stacks are assembled from it, then both are
    /// published, so that every request after this sees the new config.
    fn publish(&self, next: Snapshot);
    /// Applies a prepared plan; says what changed, for the reload's summary.
    fn commit(&self, plan: Plan) -> BoxFuture<'_, Vec<String>>;
}

/// A future a `Listeners` returns.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Listeners bound for a reload that has not been applied yet, as the wiring made them.
pub struct Plan(pub Box<dyn std::any::Any + Send>);

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Plan")
    }
}

/// Reloads one control file into one runtime.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    rt: Arc<Runtime>,
    listeners: Arc<dyn Listeners>,
    /// The longest a reload's read and compile may take (`COMPILE_TIMEOUT`).
    compile_timeout: Duration,
    /// One reload at a time; holds the compile of one that ran out of time until it ends.
    serial: Mutex<Option<tokio::task::AbortHandle>>,
    /// Hash of the content last read by a reload (or at start).
    loaded: AtomicU64,
    status: ArcSwap<Status>,
}

impl Reloader {
    /// A reloader for `path`, whose content `loaded_text` is in force now.
    pub fn new(
        path: PathBuf,
        loaded_text: &[u8],
        rt: Arc<Runtime>,
        listeners: Arc<dyn Listeners>,
    ) -> Arc<Self> {
        Arc::new(Self {
            path,
            rt,
            listeners,
            compile_timeout: COMPILE_TIMEOUT,
            serial: Mutex::new(None),
            loaded: AtomicU64::new(digest(loaded_text)),
            status: ArcSwap::from_pointee(Status {
                at: SystemTime::now(),
                trigger: None,
                result: Ok(Changes::default()),
            }),
        })
    }

    /// The last reload's outcome.
    pub fn status(&self) -> Arc<Status> {
        self.status.load_full()
    }

    /// What a reload would change, read and compiled off the workers and applied to nothing:
    /// the semantic diff against the config in force, and whether the reload would be
    /// refused for changes that need a restart. `Err` lists the file's problems.
    pub async fn dry_run(&self) -> Result<(config::diff::Diff, Vec<&'static str>), String> {
        let path = self.path.clone();
        let current = self.rt.snapshot();
        let running = current.effective.clone();
        let startup = current.startup.clone();
        tokio::task::spawn_blocking(move || {
            let name = path.display().to_string();
            let text = crate::files::read_bounded(&path, crate::files::MAX_CONFIG_BYTES)
                .map_err(|e| format!("{name}: {e}"))?;
            let utf8 = String::from_utf8_lossy(&text);
            let compiled = config::parse(&name, &utf8).map_err(|e| e.to_string())?;
            let restart = startup.restart_only(&compiled.startup());
            let diff = config::diff(("running", running.text()), (&name, &utf8))
                .map_err(|e| e.to_string())?;
            Ok((diff, restart))
        })
        .await
        .map_err(|e| format!("dry run failed: {e}"))?
    }

    /// Reads, validates and publishes the file. `Err` lists every problem; nothing changed.
    pub async fn reload(&self, trigger: Trigger) -> Result<Changes, String> {
        let mut overdue = self.serial.lock().await;
        tracing::debug!(%trigger, "config reload started");
        let result = match overdue.as_ref() {
            Some(compile) if !compile.is_finished() => Err(format!(
                "{}: the compile of an earlier reload, refused for taking longer than {:?}, is still running",
                self.path.display(),
                self.compile_timeout
            )),
            _ => {
                *overdue = None;
                self.try_reload(&mut overdue).await
            }
        };
        let ok = result.is_ok();
        self.rt.shared.metrics.reload(ok);
        match &result {
            Ok(changes) => tracing::info!(%trigger, changes = %changes, "config reloaded"),
            Err(e) => {
                tracing::error!(%trigger, errors = %e, "config reload refused; the running config is unchanged")
            }
        }
        self.status.store(Arc::new(Status {
            at: SystemTime::now(),
            trigger: Some(trigger),
            result: result.clone(),
        }));
        result
    }

    async fn try_reload(
        &self,
        overdue: &mut Option<tokio::task::AbortHandle>,
    ) -> Result<Changes, String> {
        let path = self.path.clone();
        // Reading and compiling may take a while for a large file: keep it off the workers.
        let mut compile = tokio::task::spawn_blocking(move || {
            let name = path.display().to_string();
            let text = crate::files::read_bounded(&path, crate::files::MAX_CONFIG_BYTES)
                .map_err(|e| format!("{name}: {e}"))?;
            let utf8 = String::from_utf8_lossy(&text);
            let compiled = config::parse(&name, &utf8).map_err(|e| e.to_string())?;
            Ok::<_, String>((text, compiled))
        });
        let (text, compiled) = match tokio::time::timeout(self.compile_timeout, &mut compile).await
        {
            Ok(done) => done.map_err(|e| format!("reload task failed: {e}"))??,
            Err(_) => {
                *overdue = Some(compile.abort_handle());
                return Err(format!(
                    "{}: reading and compiling took longer than {:?}",
                    self.path.display(),
                    self.compile_timeout
                ));
            }
        };
        self.loaded.store(digest(&text), Ordering::Release);
        for w in &compiled.warnings {
            tracing::warn!("{}", w.warning_in(&self.path.display().to_string()));
        }

        let current = self.rt.snapshot();
        let startup = compiled.startup();
        let fixed = current.startup.restart_only(&startup);
        if !fixed.is_empty() {
            return Err(format!(
                "{}: changes need a restart and were not applied: {}",
                self.path.display(),
                fixed.join(", ")
            ));
        }
        // New addresses are bound before anything changes, so a bind error changes nothing.
        let plan = self
            .listeners
            .prepare(&startup)
            .await
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let next = Snapshot::build(compiled, &self.rt.shared, Some(&current));
        let mut changes = Changes::between(&current, &next);
        self.listeners.publish(next);
        changes.other.extend(self.listeners.commit(plan).await);
        // The compile's garbage, and the snapshot replaced unless a request still holds it.
        drop(current);
        crate::memory::return_freed_pages();
        Ok(changes)
    }

    /// Starts the file poller and the SIGHUP handler; both end when `stop` turns true. The
    /// handler is installed before this returns, so a SIGHUP from then on reloads (one
    /// arriving before would end the process, SIGHUP's default).
    pub fn spawn_triggers(self: &Arc<Self>, stop: watch::Receiver<bool>) {
        tokio::spawn(self.clone().poll_file(stop.clone()));
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::hangup()) {
                Ok(hup) => {
                    tokio::spawn(self.clone().on_sighup(hup, stop));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the SIGHUP handler; reload with POST /reload");
                }
            }
        }
    }

    async fn poll_file(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut pending = None;
        let mut refused = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = stop.changed() => return,
            }
            // A missing file (mid-swap) is skipped; the next poll sees the new one. One too
            // large, or no regular file, is reported by one reload per new error.
            let path = self.path.clone();
            let read = tokio::task::spawn_blocking(move || {
                crate::files::read_bounded(&path, crate::files::MAX_CONFIG_BYTES)
            });
            let text = match tokio::time::timeout(READ_TIMEOUT, read).await {
                Ok(Ok(Ok(text))) => text,
                Ok(Ok(Err(e))) if !e.contains("No such file") => {
                    if refused.as_ref() != Some(&e) {
                        refused = Some(e);
                        let _ = self.reload(Trigger::File).await;
                    }
                    continue;
                }
                _ => continue,
            };
            refused = None;
            let d = digest(&text);
            if d == self.loaded.load(Ordering::Acquire) {
                pending = None;
            } else if pending == Some(d) {
                pending = None;
                let _ = self.reload(Trigger::File).await;
            } else {
                pending = Some(d);
            }
        }
    }

    #[cfg(unix)]
    async fn on_sighup(
        self: Arc<Self>,
        mut hup: tokio::signal::unix::Signal,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                Some(()) = hup.recv() => { let _ = self.reload(Trigger::Signal).await; }
                _ = stop.changed() => return,
            }
        }
    }
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// What a reload changed, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Routes added.
    pub routes_added: Vec<String>,
    /// Routes removed.
    pub routes_removed: Vec<String>,
    /// Routes whose definition changed.
    pub routes_changed: Vec<String>,
    /// Services added.
    pub services_added: Vec<String>,
    /// Services removed (drained: dropped once their last request ends).
    pub services_removed: Vec<String>,
    /// Services whose definition changed (they start with fresh state).
    pub services_changed: Vec<String>,
    /// Other changes (inbound, shutdown, access log, listeners moved or restarted).
    pub other: Vec<String>,
}

impl Changes {
    fn between(old: &Snapshot, new: &Snapshot) -> Self {
        let mut c = Changes::default();
        diff(
            &routes(old),
            &routes(new),
            &mut c.routes_added,
            &mut c.routes_removed,
            &mut c.routes_changed,
        );
        fn services(s: &Snapshot) -> BTreeMap<&str, &ServiceSpec> {
            s.services.iter().map(|(k, v)| (&**k, v.spec())).collect()
        }
        diff(
            &services(old),
            &services(new),
            &mut c.services_added,
            &mut c.services_removed,
            &mut c.services_changed,
        );
        if old.inbound_spec != new.inbound_spec {
            c.other.push("inbound".to_owned());
        }
        if old.identity != new.identity {
            c.other.push("identity".to_owned());
        }
        if old.shutdown != new.shutdown {
            c.other.push("shutdown".to_owned());
        }
        if old.access_log != new.access_log {
            c.other.push("log.access_log".to_owned());
        }
        c
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no changes");
        }
        let mut parts = Vec::new();
        for (label, names) in [
            ("routes added", &self.routes_added),
            ("routes removed", &self.routes_removed),
            ("routes changed", &self.routes_changed),
            ("services added", &self.services_added),
            ("services removed", &self.services_removed),
            ("services changed", &self.services_changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{label}: {}", names.join(", ")));
            }
        }
        if !self.other.is_empty() {
            parts.push(format!("changed: {}", self.other.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Each route's compiled spec by name.
fn routes(s: &Snapshot) -> BTreeMap<&str, &RouteSpec> {
    s.outbound
        .iter()
        .flat_map(|o| o.table.routes.iter())
        .map(|r| (&*r.spec.name, &r.spec))
        .collect()
}

fn diff<T: PartialEq>(
    old: &BTreeMap<&str, T>,
    new: &BTreeMap<&str, T>,
    added: &mut Vec<String>,
    removed: &mut Vec<String>,
    changed: &mut Vec<String>,
) {
    for (k, v) in new {
        match old.get(k) {
            None => added.push(k.to_string()),
            Some(o) if o != v => changed.push(k.to_string()),
            Some(_) => {}
        }
    }
    removed.extend(
        old.keys()
            .filter(|k| !new.contains_key(*k))
            .map(|k| k.to_string()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Shared;

    const BASE: &str = r#"version: 1
inbound: { listen: 127.0.0.1:0, app: 127.0.0.1:1, timeout: 5s }
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: api
      match: { host: api, path: { regex: "/v[0-9]+/.*" } }
      backends: [{ service: one }]
    - name: web
      match: { host: web }
      backends: [{ service: two }]
      timeout: 2s
services:
  one: { endpoints: ["127.0.0.1:2"] }
  two: { endpoints: ["127.0.0.1:3"] }
"#;

    fn snap(text: &str, shared: &Shared, previous: Option<&Snapshot>) -> Snapshot {
        Snapshot::build(config::parse("t.yaml", text).unwrap(), shared, previous)
    }

    /// Listeners that bind nothing and take what they are given.
    #[derive(Debug)]
    struct NoListeners;

    impl Listeners for NoListeners {
        fn prepare<'a>(&'a self, _: &'a config::Startup) -> BoxFuture<'a, Result<Plan, String>> {
            Box::pin(async { Ok(Plan(Box::new(()))) })
        }
        fn publish(&self, _: Snapshot) {}
        fn commit(&self, _: Plan) -> BoxFuture<'_, Vec<String>> {
            Box::pin(async { Vec::new() })
        }
    }

    #[tokio::test]
    async fn a_compile_past_its_deadline_is_refused_and_holds_off_the_next_reload() {
        let path = std::env::temp_dir().join(format!("remora-slow-{}.yaml", std::process::id()));
        let mut big = String::from("version: 1\nservices:\n");
        for i in 0..2_000 {
            big.push_str(&format!(
                "  s{i}: {{ endpoints: [\"127.0.0.1:{}\"] }}\n",
                1000 + i
            ));
        }
        std::fs::write(&path, &big).unwrap();
        let rt = Runtime::new(config::parse("t.yaml", BASE).unwrap());
        let mut reloader = Reloader::new(path.clone(), BASE.as_bytes(), rt, Arc::new(NoListeners));
        Arc::get_mut(&mut reloader).unwrap().compile_timeout = Duration::from_micros(1);

        let e = reloader.reload(Trigger::Admin).await.unwrap_err();
        assert!(e.contains("took longer than"), "{e}");
        let e = reloader.reload(Trigger::Admin).await.unwrap_err();
        assert!(e.contains("is still running"), "{e}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !reloader.serial.lock().await.as_ref().unwrap().is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the overdue compile ends"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Err(e) = reloader.reload(Trigger::Admin).await {
            assert!(!e.contains("is still running"), "{e}");
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn changes_are_told_from_the_compiled_config_not_its_text() {
        let shared = Shared::new();
        let old = snap(BASE, &shared, None);
        // The same config written differently: comments, flow style, a default spelled out.
        let same = r#"version: 1   # reformatted
inbound:
  listen: 127.0.0.1:0
  app: 127.0.0.1:1
  timeout: 5000ms
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: api
      match:
        host: api
        path: { regex: "/v[0-9]+/.*" }
      backends: [{ service: one, weight: 1 }]
    - { name: web, match: { host: web }, backends: [{ service: two }], timeout: 2s }
services:
  one: { endpoints: ["127.0.0.1:2"], protocol: auto }
  two: { endpoints: ["127.0.0.1:3"] }
"#;
        let c = Changes::between(&old, &snap(same, &shared, Some(&old)));
        assert!(c.is_empty(), "{c}");

        let changed = BASE
            .replace("timeout: 2s", "timeout: 3s")
            .replace("127.0.0.1:3\"", "127.0.0.1:4\"")
            .replace("timeout: 5s", "timeout: 6s")
            .replace(
                "services:",
                "    - name: extra\n      direct_response: { status: 200 }\nservices:",
            );
        let c = Changes::between(&old, &snap(&changed, &shared, Some(&old)));
        assert_eq!(c.routes_changed, ["web"]);
        assert_eq!(c.routes_added, ["extra"]);
        assert_eq!(c.services_changed, ["two"]);
        assert_eq!(c.other, ["inbound"]);
        assert!(c.routes_removed.is_empty() && c.services_added.is_empty());

        let regex = BASE.replace("[0-9]+", "[0-9]*");
        let c = Changes::between(&old, &snap(&regex, &shared, Some(&old)));
        assert_eq!(
            c.routes_changed,
            ["api"],
            "a regex is compared by its pattern"
        );
    }
}
