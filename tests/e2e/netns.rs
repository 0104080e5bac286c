//! Network namespaces for the transparent-mode tests: each test makes its own pods (a
//! namespace with loopback up), joins two with a veth pair on a /24 of its own, runs real
//! programs inside with `ip netns exec`, and deletes everything when dropped. Needs root (CI
//! runs as root); where namespaces cannot be made at all, `Netns::new` says why and the test
//! is skipped.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use super::support::DEADLINE;

/// The uid (and gid) Remora runs as in the tests' pods, as in a Kubernetes pod.
pub const PROXY_UID: u32 = 1337;

static NEXT: AtomicU32 = AtomicU32::new(1);

/// A network namespace; deleted, with every process in it, when dropped.
pub struct Netns {
    pub name: String,
    children: Vec<Child>,
}

impl Netns {
    /// A new namespace with loopback up, or why none can be made here.
    pub fn new() -> Result<Netns, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("remora-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run `ip`: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let ns = Netns {
            name,
            children: Vec::new(),
        };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        Ok(ns)
    }

    /// `args` as a command inside the namespace.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs `args` inside and returns its output, whatever its exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Runs `args` inside; fails the test unless it succeeds. Returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} in {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `args` inside, in the background, until the namespace is dropped. Its output
    /// goes to `log`.
    pub fn spawn(&mut self, args: &[&str], log: &Path) {
        let file = std::fs::File::create(log).unwrap();
        let child = self
            .cmd(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        self.children.push(child);
    }

    /// Starts `args` inside as the proxy's uid and gid.
    pub fn spawn_as_proxy(&mut self, args: &[&str], log: &Path) {
        let (uid, gid) = (PROXY_UID.to_string(), PROXY_UID.to_string());
        let mut full = vec![
            "setpriv",
            "--reuid",
            &uid,
            "--regid",
            &gid,
            "--clear-groups",
            "--",
        ];
        full.extend_from_slice(args);
        self.spawn(&full, log);
    }

    /// Polls `args` inside until it succeeds, failing the test after `DEADLINE`.
    pub fn wait_ok(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let out = self.run(args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{args:?} in {} never succeeded: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until something listens on TCP `port` inside.
    pub fn wait_listening(&self, port: u16) {
        let filter = format!("sport = :{port}");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let out = self.ok(&["ss", "-Hltn", &filter]);
            if !out.trim().is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nothing listens on {port} in {}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Remora's `/metrics` inside (its admin listener on 127.0.0.1:15090).
    pub fn metrics(&self) -> String {
        self.ok(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://127.0.0.1:15090/metrics",
        ])
    }

    /// Polls Remora's `/metrics` inside until `sample` is `value`, failing the test after
    /// `DEADLINE`.
    pub fn wait_metric(&self, sample: &str, value: f64) {
        let deadline = Instant::now() + DEADLINE;
        while self.metric(sample) != Some(value) {
            assert!(
                Instant::now() < deadline,
                "{sample} never became {value}: {}",
                self.metrics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of one sample in Remora's `/metrics` inside.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Anything the children started (nats-server forks nothing, but be sure).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            let pids = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            if !pids.is_empty() {
                // The shell's own `kill`: Debian's base may lack procps.
                let _ = Command::new("sh")
                    .args(["-c", &format!("kill -9 {pids}")])
                    .status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Joins `a` and `b` with a veth pair: `a` gets `10.N.0.1/24` and `fd77:N::1/64`, `b`
/// `10.N.0.2/24` and `fd77:N::2/64` (`N` unique to this pair), and each routes everything
/// else through the other. Returns both IPv4 addresses.
pub fn link(a: &Netns, b: &Netns) -> (String, String) {
    let n = 100 + NEXT.fetch_add(1, Ordering::Relaxed) % 100;
    let (va, vb) = (
        format!("va{n}x{}", std::process::id() % 10000),
        format!("vb{n}x{}", std::process::id() % 10000),
    );
    host(&[
        "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
    ]);
    for (dev, ns) in [(&va, a), (&vb, b)] {
        host(&["ip", "link", "set", dev, "netns", &ns.name]);
    }
    let (ip_a, ip_b) = (format!("10.{n}.0.1"), format!("10.{n}.0.2"));
    let (v6_a, v6_b) = (format!("fd77:{n}::1"), format!("fd77:{n}::2"));
    for (dev, ns, ip, peer, v6, peer6) in [
        (&va, a, &ip_a, &ip_b, &v6_a, &v6_b),
        (&vb, b, &ip_b, &ip_a, &v6_b, &v6_a),
    ] {
        ns.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", dev]);
        // `nodad`: usable at once, without duplicate address detection's wait.
        ns.ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            dev,
            "nodad",
        ]);
        ns.ok(&["ip", "link", "set", dev, "up"]);
        // A pod joined twice keeps the last link as its way out.
        ns.ok(&["ip", "route", "replace", "default", "via", peer]);
        ns.ok(&["ip", "-6", "route", "replace", "default", "via", peer6]);
    }
    (ip_a, ip_b)
}

/// The IPv6 address `link` gave the second pod of the pair whose IPv4 address is `ip_b`.
pub fn v6_of(ip_b: &str) -> String {
    let n = ip_b.split('.').nth(1).unwrap();
    format!("fd77:{n}::2")
}

/// Runs `args` in the test's own (root) namespace; fails the test unless it succeeds.
pub fn host(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Development certificates for `ids` in `dir` (`remora certs`), owned by the proxy's uid so
/// that sidecars running as it can read the 0600 keys, as in a pod.
pub fn dev_certs(dir: &Path, ids: &[&str]) {
    let dir = dir.to_str().unwrap();
    host(&[&[remora(), "certs", "-o", dir][..], ids].concat());
    let owner = format!("{0}:{0}", PROXY_UID);
    host(&["chown", "-R", &owner, dir]);
}

/// A directory for one test's files, readable by the proxy's uid.
pub fn workdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("remora-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The path of the Remora binary under test.
pub fn remora() -> &'static str {
    env!("CARGO_BIN_EXE_remora")
}

/// A fixture script's path.
pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// Makes a pod of `ns`: writes `config`, installs the redirect rules, and starts Remora as
/// the proxy's uid; returns once it is ready.
pub fn start_sidecar(ns: &mut Netns, dir: &Path, config: &str) {
    let file = dir.join(format!("{}.yaml", ns.name));
    std::fs::write(&file, config).unwrap();
    ns.ok(&[remora(), "iptables", "--proxy-uid", &PROXY_UID.to_string()]);
    let log = dir.join(format!("{}.log", ns.name));
    ns.spawn_as_proxy(&[remora(), "run", "-c", file.to_str().unwrap()], &log);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = ns.run(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:15090/ready",
        ]);
        if String::from_utf8_lossy(&out.stdout) == "200" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Remora in {} never got ready: {}",
            ns.name,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
