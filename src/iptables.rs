//! `remora iptables`: the init step of transparent mode (like istio-iptables or
//! linkerd-proxy-init), run as root in the pod's network namespace before the app starts.
//!
//! In the `nat` table it installs four chains of its own and two jumps to them:
//! - `PREROUTING → REMORA_INBOUND`: the pod's inbound TCP, except the skipped ports (the
//!   admin port, Remora's own listeners, `--skip-inbound-ports`), goes to
//!   `REMORA_IN_REDIRECT`, which redirects it to the inbound listener.
//! - `OUTPUT → REMORA_OUTPUT`: the app's outbound TCP goes to `REMORA_REDIRECT`, which
//!   redirects it to the outbound listener, except: everything the proxy's uid (or gid)
//!   sends, loopback destinations (traffic to `127.0.0.0/8` or `::1` stays local; the app
//!   calling its own pod IP is redirected like any other call), `--skip-outbound-ports` and
//!   `--skip-outbound-cidrs`.
//!
//! Each family (IPv4 with `iptables`, IPv6 with `ip6tables`) is changed in one
//! `iptables-restore --noflush` transaction, which also deletes jumps an earlier run left,
//! so running it twice leaves the same rules as running it once. `--dry-run` prints that
//! input instead of applying it; `--remove` deletes exactly these chains and jumps. The nft
//! and legacy backends are both supported; `auto` takes the one the namespace already has
//! rules in (the one kube-proxy or the CNI uses), nft when neither has.

use std::{
    fmt::Write as _,
    io::Write as _,
    process::{Command, Stdio},
};

use crate::routing::tcp::Cidr;

/// The chains this tool owns; nothing else is touched.
pub const CHAINS: [&str; 4] = [
    "REMORA_INBOUND",
    "REMORA_IN_REDIRECT",
    "REMORA_OUTPUT",
    "REMORA_REDIRECT",
];

/// What to redirect, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// The uid Remora runs as; its own traffic is never redirected.
    pub proxy_uid: u32,
    /// The gid Remora runs as, when its traffic is to be told by group too.
    pub proxy_gid: Option<u32>,
    /// The inbound listener's port.
    pub inbound_port: u16,
    /// The outbound listener's port.
    pub outbound_port: u16,
    /// The admin listener's port, never redirected.
    pub admin_port: u16,
    /// Inbound ports left alone (SSH, a metrics port scraped directly).
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub skip_outbound_ports: Vec<u16>,
    /// Outbound destination ranges left alone.
    pub skip_outbound_cidrs: Vec<Cidr>,
}

/// Which iptables implementation to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-nft` (nf_tables underneath).
    Nft,
    /// `iptables-legacy` (x_tables).
    Legacy,
    /// Plain `iptables`, whatever the system's alternative points at.
    System,
}

/// An address family and its tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4: `iptables`.
    V4,
    /// IPv6: `ip6tables`.
    V6,
}

impl Family {
    fn tool(self, backend: Backend, verb: &str) -> String {
        let base = match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        match backend {
            Backend::Nft => format!("{base}-nft-{verb}"),
            Backend::Legacy => format!("{base}-legacy-{verb}"),
            Backend::System => format!("{base}-{verb}"),
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// Why the rules could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No iptables tools were found.
    #[error("no iptables-restore found (install Debian's `iptables` package)")]
    NoTools,
    /// A tool could not be run or failed.
    #[error("{tool}: {message}")]
    Tool {
        /// The command.
        tool: String,
        /// What it said.
        message: String,
    },
}

/// The `nat` table as `iptables-save` prints it, reduced to what this tool needs.
#[derive(Debug, Default, Clone)]
pub struct Current {
    /// Rules (`-A CHAIN ...`) in the built-in chains that jump to one of ours.
    pub jumps: Vec<String>,
    /// Our chains that exist.
    pub chains: Vec<String>,
}

impl Current {
    /// Reads what `save` printed for the `nat` table.
    pub fn parse(save: &str) -> Self {
        let mut current = Current::default();
        for line in save.lines() {
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or("");
                if CHAINS.contains(&name) {
                    current.chains.push(name.to_owned());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split_whitespace().next().unwrap_or("");
                let target = rule.split(" -j ").nth(1).unwrap_or("");
                let target = target.split_whitespace().next().unwrap_or("");
                if !CHAINS.contains(&chain) && CHAINS.contains(&target) {
                    current.jumps.push(rule.to_owned());
                }
            }
        }
        current
    }

    /// Whether anything of ours is installed.
    pub fn is_empty(&self) -> bool {
        self.jumps.is_empty() && self.chains.is_empty()
    }
}

/// The `iptables-restore --noflush` input that installs the rules for `family`, replacing
/// whatever of ours `current` holds.
pub fn install(opts: &Options, family: Family, current: &Current) -> String {
    let mut out = String::from("*nat\n");
    // Declaring a chain creates it, or empties it when it exists.
    for chain in CHAINS {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for jump in &current.jumps {
        let _ = writeln!(out, "-D {jump}");
    }
    let _ = writeln!(
        out,
        "-A REMORA_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        opts.inbound_port
    );
    let _ = writeln!(
        out,
        "-A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        opts.outbound_port
    );
    let mut skip_in: Vec<u16> = Vec::new();
    for &port in [opts.admin_port, opts.inbound_port, opts.outbound_port]
        .iter()
        .chain(&opts.skip_inbound_ports)
    {
        if !skip_in.contains(&port) {
            skip_in.push(port);
        }
    }
    for port in skip_in {
        let _ = writeln!(out, "-A REMORA_INBOUND -p tcp --dport {port} -j RETURN");
    }
    out.push_str("-A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT\n");
    let _ = writeln!(
        out,
        "-A REMORA_OUTPUT -m owner --uid-owner {} -j RETURN",
        opts.proxy_uid
    );
    if let Some(gid) = opts.proxy_gid {
        let _ = writeln!(out, "-A REMORA_OUTPUT -m owner --gid-owner {gid} -j RETURN");
    }
    let _ = writeln!(out, "-A REMORA_OUTPUT -d {} -j RETURN", family.loopback());
    for port in &opts.skip_outbound_ports {
        let _ = writeln!(out, "-A REMORA_OUTPUT -p tcp --dport {port} -j RETURN");
    }
    for cidr in &opts.skip_outbound_cidrs {
        if cidr.is_ipv4() == (family == Family::V4) {
            let _ = writeln!(out, "-A REMORA_OUTPUT -d {cidr} -j RETURN");
        }
    }
    out.push_str("-A REMORA_OUTPUT -p tcp -j REMORA_REDIRECT\n");
    out.push_str("-A PREROUTING -p tcp -j REMORA_INBOUND\n");
    out.push_str("-A OUTPUT -p tcp -j REMORA_OUTPUT\n");
    out.push_str("COMMIT\n");
    out
}

/// The `iptables-restore --noflush` input that deletes what of ours `current` holds; `None`
/// when there is nothing.
pub fn uninstall(current: &Current) -> Option<String> {
    if current.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for jump in &current.jumps {
        let _ = writeln!(out, "-D {jump}");
    }
    // Our chains jump to each other: empty them all before deleting any.
    for chain in &current.chains {
        let _ = writeln!(out, "-F {chain}");
    }
    for chain in &current.chains {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// The backend to use: the one whose `nat` table has rules, nft on a tie, or the system's
/// `iptables` when the variants are not installed.
pub fn detect_backend() -> Result<Backend, Error> {
    let rules = |b: Backend| {
        save(Family::V4, b)
            .ok()
            .map(|s| s.lines().filter(|l| l.starts_with("-A ")).count())
    };
    match (rules(Backend::Nft), rules(Backend::Legacy)) {
        (Some(n), Some(l)) if l > n => Ok(Backend::Legacy),
        (Some(_), _) => Ok(Backend::Nft),
        (None, Some(_)) => Ok(Backend::Legacy),
        (None, None) if save(Family::V4, Backend::System).is_ok() => Ok(Backend::System),
        (None, None) => Err(Error::NoTools),
    }
}

/// The `nat` table of `family` as `iptables-save` prints it.
pub fn save(family: Family, backend: Backend) -> Result<String, Error> {
    let tool = family.tool(backend, "save");
    let out = Command::new(&tool)
        .args(["-t", "nat"])
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::Tool {
            tool: tool.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Feeds `input` to `iptables-restore --noflush` for `family`.
pub fn restore(family: Family, backend: Backend, input: &str) -> Result<(), Error> {
    let tool = family.tool(backend, "restore");
    let fail = |message: String| Error::Tool {
        tool: tool.clone(),
        message,
    };
    let mut child = Command::new(&tool)
        // `--wait`: another writer (kube-proxy, a parallel init) holds the xtables lock.
        .args(["--noflush", "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    child
        .stdin
        .take()
        .ok_or_else(|| fail("no stdin".into()))?
        .write_all(input.as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{} (input:\n{input})",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// What one run did or would do, per family.
#[derive(Debug)]
pub struct Report {
    /// The backend used.
    pub backend: Backend,
    /// Per family: the restore input (`None`: nothing to do), or why the family was skipped.
    pub families: Vec<(Family, Result<Option<String>, Error>)>,
}

/// Installs (or with `remove`, deletes) the rules in every family the namespace supports.
/// With `dry_run` nothing changes; the report holds the inputs that would be applied.
/// IPv6 is skipped, and said so, when `ip6tables` cannot read its `nat` table; IPv4 must
/// work.
pub fn run(
    opts: &Options,
    backend: Option<Backend>,
    remove: bool,
    dry_run: bool,
) -> Result<Report, Error> {
    let backend = match backend {
        Some(b) => b,
        None => detect_backend()?,
    };
    let mut families = Vec::new();
    for family in [Family::V4, Family::V6] {
        let current = match save(family, backend) {
            Ok(text) => Current::parse(&text),
            Err(e) if family == Family::V6 => {
                families.push((family, Err(e)));
                continue;
            }
            Err(e) => return Err(e),
        };
        let input = if remove {
            uninstall(&current)
        } else {
            Some(install(opts, family, &current))
        };
        if let (Some(input), false) = (&input, dry_run) {
            restore(family, backend, input)?;
        }
        families.push((family, Ok(input)));
    }
    Ok(Report { backend, families })
}

impl Report {
    /// What to print: the inputs (dry run) or a summary of what changed.
    pub fn render(&self, dry_run: bool, remove: bool) -> String {
        let mut out = String::new();
        for (family, result) in &self.families {
            match result {
                Ok(Some(input)) if dry_run => {
                    let tool = family.tool(self.backend, "restore");
                    let _ = writeln!(out, "# {} ({tool} --noflush)\n{input}", family.name());
                }
                Ok(Some(_)) if remove => {
                    let _ = writeln!(out, "{}: removed Remora's chains", family.name());
                }
                Ok(Some(_)) => {
                    let _ = writeln!(out, "{}: redirect rules installed", family.name());
                }
                Ok(None) => {
                    let _ = writeln!(out, "{}: no Remora rules to remove", family.name());
                }
                Err(e) => {
                    let _ = writeln!(out, "{}: skipped: {e}", family.name());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            proxy_uid: 1337,
            proxy_gid: None,
            inbound_port: 15006,
            outbound_port: 15001,
            admin_port: 15090,
            skip_inbound_ports: vec![22],
            skip_outbound_ports: vec![25],
            skip_outbound_cidrs: vec![
                Cidr::parse("10.96.0.0/12").unwrap(),
                Cidr::parse("fd00::/8").unwrap(),
            ],
        }
    }

    #[test]
    fn install_redirects_all_but_the_exceptions() {
        let input = install(&opts(), Family::V4, &Current::default());
        assert_eq!(
            input,
            "*nat
:REMORA_INBOUND - [0:0]
:REMORA_IN_REDIRECT - [0:0]
:REMORA_OUTPUT - [0:0]
:REMORA_REDIRECT - [0:0]
-A REMORA_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A REMORA_INBOUND -p tcp --dport 15090 -j RETURN
-A REMORA_INBOUND -p tcp --dport 15006 -j RETURN
-A REMORA_INBOUND -p tcp --dport 15001 -j RETURN
-A REMORA_INBOUND -p tcp --dport 22 -j RETURN
-A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT
-A REMORA_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A REMORA_OUTPUT -d 127.0.0.0/8 -j RETURN
-A REMORA_OUTPUT -p tcp --dport 25 -j RETURN
-A REMORA_OUTPUT -d 10.96.0.0/12 -j RETURN
-A REMORA_OUTPUT -p tcp -j REMORA_REDIRECT
-A PREROUTING -p tcp -j REMORA_INBOUND
-A OUTPUT -p tcp -j REMORA_OUTPUT
COMMIT
"
        );
        let v6 = install(&opts(), Family::V6, &Current::default());
        assert!(v6.contains("-A REMORA_OUTPUT -d ::1/128 -j RETURN\n"));
        assert!(v6.contains("-A REMORA_OUTPUT -d fd00::/8 -j RETURN\n"));
        assert!(!v6.contains("10.96.0.0/12"));
    }

    #[test]
    fn our_jumps_and_chains_are_found_and_nothing_else() {
        let save = "*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:REMORA_INBOUND - [0:0]
:REMORA_OUTPUT - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -p tcp -j REMORA_INBOUND
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -p tcp -j REMORA_OUTPUT
-A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT
COMMIT
";
        let current = Current::parse(save);
        assert_eq!(
            current.jumps,
            [
                "PREROUTING -p tcp -j REMORA_INBOUND",
                "OUTPUT -p tcp -j REMORA_OUTPUT"
            ]
        );
        assert_eq!(current.chains, ["REMORA_INBOUND", "REMORA_OUTPUT"]);
        let again = install(&opts(), Family::V4, &current);
        assert!(again.contains("-D PREROUTING -p tcp -j REMORA_INBOUND\n"));
        assert_eq!(
            uninstall(&current).unwrap(),
            "*nat
-D PREROUTING -p tcp -j REMORA_INBOUND
-D OUTPUT -p tcp -j REMORA_OUTPUT
-F REMORA_INBOUND
-F REMORA_OUTPUT
-X REMORA_INBOUND
-X REMORA_OUTPUT
COMMIT
"
        );
        assert!(uninstall(&Current::default()).is_none());
    }
}
