//! The `remora` command line: `run`, `check`, `explain`, `test`, `certs`, `iptables`, `inject`,
//! `import`,
//! `--version`. The only place errors become exit codes: 0 success, 64 bad config or
//! arguments, 1 runtime failure.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use remora::{app, config, telemetry};

/// Exit code for a config that cannot be used (EX_USAGE-like, as `sysexits.h` EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "remora",
    version,
    about = "A sidecar service-mesh proxy configured by one YAML file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The control file.
        #[arg(long, short, env = "REMORA_CONFIG")]
        config: PathBuf,
        /// Worker threads for the data path. Default: the CPUs this process may use (its
        /// affinity and cgroup quota). With 1, Remora runs a single-threaded scheduler, the
        /// fastest choice for a sidecar limited to one CPU.
        #[arg(long, env = "REMORA_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
    },
    /// Show which route a request takes and why, the backend split, policies and endpoints.
    Explain {
        /// The control file.
        #[arg(long, short, env = "REMORA_CONFIG")]
        config: PathBuf,
        /// Request method, e.g. GET.
        method: String,
        /// Request URL, e.g. http://inventory/api/items?page=2 (or a path with -H 'host: ...').
        url: String,
        /// A request header, 'name: value'; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run route test cases against a control file (0 all pass, 1 any fails, 64 bad files).
    Test {
        /// The control file.
        file: PathBuf,
        /// The cases: a YAML file with `cases: [{ name, request: { method, url, headers },
        /// expect: { route, backend, status, path, location, passthrough } }]`.
        cases: PathBuf,
        /// Fail unless the cases' requests match at least this percent of the routes.
        #[arg(long, value_name = "PERCENT")]
        min_coverage: Option<f64>,
    },
    /// Validate a control file and exit (0 valid, 64 invalid): every error, and warnings
    /// for what is valid but surely wrong, on stderr.
    Check {
        /// The control file.
        file: PathBuf,
        /// Treat warnings as errors (exit 64), for CI.
        #[arg(long)]
        strict: bool,
        /// `text` (on stderr) or `json` (one object on stdout: `valid`, `errors`, `warnings`,
        /// each problem with `line`, `column`, `path` and `message`).
        #[arg(long, value_enum, default_value = "text")]
        format: CheckFormat,
    },
    /// Show what a reload from OLD to NEW would change: routes, TCP routes and services added,
    /// removed and changed field by field, other sections field by field, route order, and
    /// with --cases the route test cases whose answer changes (0 no change, 1 changes, 64 a
    /// file is invalid).
    Diff {
        /// The control file in force.
        old: PathBuf,
        /// The control file to compare with it.
        new: PathBuf,
        /// Route test cases (as for `remora test`) to answer under both files.
        #[arg(long, value_name = "FILE")]
        cases: Option<PathBuf>,
        /// One JSON object: `changes`, `route_order` and `cases`.
        #[arg(long)]
        json: bool,
    },
    /// Print a JSON Schema of the control file, for editors (a YAML language server checks
    /// and completes the file with it: `# yaml-language-server: $schema=remora.schema.json`).
    Schema,
    /// Create development mTLS certificates: a CA (ca.crt, ca.key; reused when present) and,
    /// per SPIFFE ID, NAME.crt and NAME.key, NAME being the ID's last path segment.
    Certs {
        /// Directory to write into (created if missing).
        #[arg(long, short, default_value = "certs")]
        out: PathBuf,
        /// Days the workload certificates are valid (the CA twice as long).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// SPIFFE IDs, e.g. spiffe://demo.local/ns/shop/sa/web.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Install the transparent-mode redirect rules in this network namespace (run as root,
    /// before the app starts): the pod's inbound TCP to the inbound listener, the app's
    /// outbound TCP to the outbound listener. Idempotent; `--remove` undoes it.
    Iptables {
        /// The uid Remora runs as; its own traffic is never redirected.
        #[arg(long)]
        proxy_uid: u32,
        /// The gid Remora runs as, to exempt its traffic by group too.
        #[arg(long)]
        proxy_gid: Option<u32>,
        /// The inbound listener's port.
        #[arg(long, default_value_t = 15006)]
        inbound_port: u16,
        /// The outbound listener's port.
        #[arg(long, default_value_t = 15001)]
        outbound_port: u16,
        /// The admin listener's port (never redirected).
        #[arg(long, default_value_t = 15090)]
        admin_port: u16,
        /// Inbound ports not redirected, comma-separated.
        #[arg(long, value_delimiter = ',')]
        skip_inbound_ports: Vec<u16>,
        /// Outbound destination ports not redirected, comma-separated.
        #[arg(long, value_delimiter = ',')]
        skip_outbound_ports: Vec<u16>,
        /// Outbound destination ranges not redirected, comma-separated (10.0.0.0/8,fd00::/8).
        #[arg(long, value_delimiter = ',')]
        skip_outbound_cidrs: Vec<String>,
        /// `auto` (the backend that already has rules; nft on a tie), `nft`, `legacy`.
        #[arg(long, default_value = "auto")]
        backend: String,
        /// Print the iptables-restore input instead of applying it.
        #[arg(long)]
        dry_run: bool,
        /// Delete Remora's chains and jumps instead.
        #[arg(long)]
        remove: bool,
    },
    /// Add Remora to every pod template in Kubernetes YAML (Pod, Deployment, StatefulSet,
    /// DaemonSet, ReplicaSet, Job, CronJob, List) and print the result; `--uninject` takes it
    /// out again. Nothing is printed when any document cannot be handled.
    Inject {
        /// The YAML to read; `-` for stdin.
        #[arg(short = 'f', long = "filename", default_value = "-")]
        file: String,
        /// The YAML to read, as `-f` (`remora inject - < app.yaml`).
        #[arg(value_name = "FILE", conflicts_with = "file")]
        input: Option<String>,
        /// The Remora image.
        #[arg(long, default_value = concat!("remora:", env!("CARGO_PKG_VERSION")))]
        image: String,
        /// The init step's image: Remora with iptables (deploy/Dockerfile's `init` target).
        #[arg(long, default_value = concat!("remora-init:", env!("CARGO_PKG_VERSION")))]
        init_image: String,
        /// The ConfigMap with the control file (key `remora.yaml`).
        #[arg(long, default_value = "remora")]
        config_map: String,
        /// The Secret with the workload's mTLS identity (`ca.crt`, `tls.crt`, `tls.key`),
        /// mounted at /etc/remora-tls.
        #[arg(long)]
        identity_secret: Option<String>,
        /// Inject an ordinary container rather than a native sidecar (Kubernetes before 1.29).
        #[arg(long)]
        legacy: bool,
        /// Take out what an earlier `remora inject` added.
        #[arg(long)]
        uninject: bool,
    },
    /// Turn Gateway API HTTPRoutes and GRPCRoutes (and the Services they name) into a control
    /// file on stdout. A field that cannot be mapped is an error with its path.
    Import {
        /// The YAML to read; `-` for stdin.
        #[arg(short = 'f', long = "filename", default_value = "-")]
        file: String,
        /// The YAML to read, as `-f`.
        #[arg(value_name = "FILE", conflicts_with = "file")]
        input: Option<String>,
        /// The namespace of resources that name none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            file,
            strict,
            format,
        } => check(&file, strict, format),
        Command::Test {
            file,
            cases,
            min_coverage,
        } => route_test(&file, &cases, min_coverage),
        Command::Diff {
            old,
            new,
            cases,
            json,
        } => diff(&old, &new, cases.as_deref(), json),
        Command::Schema => {
            emit(format_args!("{}\n", config::schema()));
            ExitCode::SUCCESS
        }
        Command::Import {
            file,
            input,
            namespace,
        } => {
            let file = input.unwrap_or(file);
            let text = match read_input("import", &file) {
                Ok(text) => text,
                Err(code) => return code,
            };
            match remora::import::import(&text, &namespace) {
                Ok(out) => {
                    for n in &out.notes {
                        eprintln!("remora import: note: {n}");
                    }
                    emit(format_args!("{}", out.text));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("remora import: {file}: {e}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
            }
        }
        Command::Inject {
            file,
            input,
            image,
            init_image,
            config_map,
            identity_secret,
            legacy,
            uninject,
        } => {
            let file = input.unwrap_or(file);
            let input = match read_input("inject", &file) {
                Ok(text) => text,
                Err(code) => return code,
            };
            let opts = remora::inject::Options {
                image,
                init_image,
                config_map,
                identity_secret,
                legacy,
            };
            let out = if uninject {
                remora::inject::uninject(&input)
            } else {
                remora::inject::inject(&input, &opts)
            };
            match out {
                Ok(text) => {
                    emit(format_args!("{text}"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("remora inject: {file}: {e}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
            }
        }
        Command::Iptables {
            proxy_uid,
            proxy_gid,
            inbound_port,
            outbound_port,
            admin_port,
            skip_inbound_ports,
            skip_outbound_ports,
            skip_outbound_cidrs,
            backend,
            dry_run,
            remove,
        } => {
            let cidrs: Result<Vec<_>, _> = skip_outbound_cidrs
                .iter()
                .map(|c| remora::routing::tcp::Cidr::parse(c))
                .collect();
            let backend = match backend.as_str() {
                "auto" => None,
                "nft" => Some(remora::iptables::Backend::Nft),
                "legacy" => Some(remora::iptables::Backend::Legacy),
                other => {
                    eprintln!("remora iptables: --backend {other:?}: expected auto, nft or legacy");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            let skip_outbound_cidrs = match cidrs {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("remora iptables: --skip-outbound-cidrs: {e}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            let opts = remora::iptables::Options {
                proxy_uid,
                proxy_gid,
                inbound_port,
                outbound_port,
                admin_port,
                skip_inbound_ports,
                skip_outbound_ports,
                skip_outbound_cidrs,
            };
            match remora::iptables::run(&opts, backend, remove, dry_run) {
                Ok(report) => {
                    emit(format_args!("{}", report.render(dry_run, remove)));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("remora iptables: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Certs { out, days, ids } => {
            match remora::tls::certs::write_dev_certs(&out, &ids, i64::from(days)) {
                Ok(w) => {
                    let ca = if w.new_ca { "created" } else { "reused" };
                    emit(format_args!("{}: CA {ca}\n", out.join("ca.crt").display()));
                    for (id, crt, key) in w.workloads {
                        emit(format_args!("{}, {}: {id}\n", crt.display(), key.display()));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("remora certs: {e}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
            }
        }
        Command::Explain {
            config: path,
            method,
            url,
            headers,
            json,
        } => explain(&path, &method, &url, &headers, json),
        Command::Run {
            config: path,
            workers,
        } => {
            let (text, compiled) = match config::load_with_text(&path) {
                Ok(pair) => pair,
                Err(e) => {
                    let text = remora::files::read_bounded(&path, remora::files::MAX_CONFIG_BYTES)
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok());
                    telemetry::fatal(telemetry::format_of(text.as_deref()), &e.to_string());
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            telemetry::init(&compiled.log);
            for w in &compiled.warnings {
                tracing::warn!("{}", w.warning_in(&path.display().to_string()));
            }
            let format = compiled.log.format;
            let workers = workers
                .map(usize::from)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let runtime = match build_runtime(workers) {
                Ok(r) => r,
                Err(e) => {
                    telemetry::fatal(format, &format!("remora: cannot start the runtime: {e}"));
                    return ExitCode::FAILURE;
                }
            };
            tracing::info!(workers, "starting");
            let code = runtime.block_on(async move {
                // Before anything is bound: from here on, SIGTERM stops gracefully.
                let stop = app::stop_signal();
                let listeners = match app::Listeners::bind(&compiled).await {
                    Ok(l) => l,
                    Err(e) => {
                        telemetry::fatal(format, &format!("remora: {e}"));
                        return ExitCode::FAILURE;
                    }
                };
                let source = app::ConfigSource {
                    path,
                    text: text.into_bytes(),
                };
                app::run(compiled, listeners, Some(source), stop).await;
                ExitCode::SUCCESS
            });
            // Drained and stopped: a reload still compiling on a blocking thread (or a read
            // stuck on a dead file system) must not hold the exit up, as dropping the runtime
            // would, waiting for it.
            runtime.shutdown_background();
            code
        }
    }
}

/// One worker: tokio's current-thread scheduler, which skips the work-stealing machinery
/// (measured: about 13% more requests per second on one core). More: the multi-thread one.
fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

/// `remora explain`: 0 when explained, 2 for a bad request description, 64 for a bad config.
fn explain(
    path: &std::path::Path,
    method: &str,
    url: &str,
    headers: &[String],
    json: bool,
) -> ExitCode {
    let compiled = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let probe = match remora::explain::Probe::new(method, url, headers.iter().map(String::as_str)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("remora explain: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(outbound) = &compiled.outbound else {
        eprintln!(
            "remora explain: {} has no outbound section, so no routes",
            path.display()
        );
        return ExitCode::FAILURE;
    };
    let explanation = remora::explain::explain(
        &probe,
        &outbound.routes,
        outbound.unmatched,
        &compiled.services,
    );
    if json {
        match serde_json::to_string_pretty(&explanation) {
            Ok(text) => emit(format_args!("{text}\n")),
            Err(e) => {
                eprintln!("remora explain: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        emit(format_args!("{explanation}"));
    }
    ExitCode::SUCCESS
}

/// A route test case file, or (its problems printed) the exit code for an unusable file.
fn read_cases(cases: &std::path::Path) -> Result<remora::route_test::CaseFile, ExitCode> {
    std::fs::read_to_string(cases)
        .map_err(|e| format!("{}: cannot read the file: {e}", cases.display()))
        .and_then(|text| {
            config::parse_as(&cases.display().to_string(), &text).map_err(|e| e.to_string())
        })
        .map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(EXIT_BAD_CONFIG)
        })
}

/// `remora diff`.
fn diff(
    old: &std::path::Path,
    new: &std::path::Path,
    cases: Option<&std::path::Path>,
    json: bool,
) -> ExitCode {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map_err(|e| format!("{}: cannot read the file: {e}", p.display()))
    };
    let texts = read(old).and_then(|o| Ok((o, read(new)?)));
    let (old_text, new_text) = match texts {
        Ok(t) => t,
        Err(e) => {
            eprintln!("remora diff: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let (old_name, new_name) = (old.display().to_string(), new.display().to_string());
    let changes = match config::diff((&old_name, &old_text), (&new_name, &new_text)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let mut answers = Vec::new();
    if let Some(cases) = cases {
        let case_file = match read_cases(cases) {
            Ok(c) => c,
            Err(code) => return code,
        };
        let compiled = |name: &str, text: &str| config::parse(name, text).ok();
        if let (Some(a), Some(b)) = (
            compiled(&old_name, &old_text),
            compiled(&new_name, &new_text),
        ) {
            let before = remora::route_test::answers(&a, &case_file);
            let after = remora::route_test::answers(&b, &case_file);
            answers = before
                .into_iter()
                .zip(after)
                .filter(|((_, x), (_, y))| x != y)
                .map(|((name, x), (_, y))| (name, x, y))
                .collect();
        }
    }
    if json {
        let cases: Vec<_> = answers
            .iter()
            .map(|(name, old, new)| serde_json::json!({"name": name, "old": old, "new": new}))
            .collect();
        let mut out = serde_json::to_value(&changes).unwrap_or_default();
        out["cases"] = cases.into();
        emit(format_args!("{out}\n"));
    } else {
        emit(format_args!("{changes}"));
        if !answers.is_empty() {
            emit(format_args!("cases whose answer changes:\n"));
            for (name, old, new) in &answers {
                emit(format_args!(
                    "  {name}:\n    before: {old}\n    after:  {new}\n"
                ));
            }
        }
    }
    if changes.is_empty() && answers.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// How `check` reports.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CheckFormat {
    /// `FILE:LINE:COLUMN: path: message` lines on stderr.
    Text,
    /// One JSON object on stdout.
    Json,
}

/// `remora check`: 0 when the file is valid (and, with `strict`, has no warnings), else 64.
fn check(file: &std::path::Path, strict: bool, format: CheckFormat) -> ExitCode {
    let name = file.display().to_string();
    let (errors, warnings) = match config::load(file) {
        Ok(c) => (Vec::new(), c.warnings),
        Err(e) => (e.problems, Vec::new()),
    };
    let valid = errors.is_empty() && (!strict || warnings.is_empty());
    match format {
        CheckFormat::Json => {
            let out = serde_json::json!({
                "file": name,
                "valid": valid,
                "errors": errors,
                "warnings": warnings,
            });
            emit(format_args!("{out}\n"));
        }
        CheckFormat::Text => {
            if !errors.is_empty() {
                let e = config::ConfigError {
                    file: name.clone(),
                    problems: errors,
                };
                eprintln!("{e}");
            }
            for w in &warnings {
                eprintln!("{}", w.warning_in(&name));
            }
            if valid {
                emit(format_args!("{name}: ok\n"));
            } else if strict && !warnings.is_empty() {
                eprintln!(
                    "{name}: {} warnings, and --strict makes them errors",
                    warnings.len()
                );
            }
        }
    }
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BAD_CONFIG)
    }
}

/// `remora test`: 0 when every case passes, 1 when one fails, 64 when a file is unusable.
fn route_test(
    file: &std::path::Path,
    cases: &std::path::Path,
    min_coverage: Option<f64>,
) -> ExitCode {
    let compiled = match config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let case_file = match read_cases(cases) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match remora::route_test::run(&compiled, &case_file, min_coverage) {
        Ok(report) => {
            emit(format_args!("{report}"));
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("remora test: {}: {e}", file.display());
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

/// A file's text, or stdin's for `-`; when it cannot be read, says so as `remora COMMAND`
/// and gives the exit code.
fn read_input(command: &str, file: &str) -> Result<String, ExitCode> {
    let read = if file == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(file)
    };
    read.map_err(|e| {
        eprintln!("remora {command}: {file}: {e}");
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

/// Writes to stdout. A reader that went away (`remora explain ... | head`) ends the output,
/// not the process with a panic.
fn emit(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("remora: stdout: {e}");
        }
    }
}
