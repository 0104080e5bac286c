//! Logs: `tracing` with JSON or text lines; the level comes from `RUST_LOG` when set, else
//! from the config. The access log is target `remora::access`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How logs are written, compiled from `log:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// A `tracing` filter whose every level is known (checked when the config is compiled).
    pub filter: String,
    /// Line format.
    pub format: LogFormat,
    /// One line per request, target `remora::access`.
    pub access_log: bool,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, fields flattened.
    Json,
    /// Human-readable text.
    Text,
}

/// The levels a filter may name.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a `tracing` filter as `log.level` takes it: comma-separated directives, each a
/// level (`info`) or `target=level` (`remora=debug`). A bare word that is no level (such
/// as `warning`) would be read by `tracing` as a target to log at every level, with every
/// other line off, so it is refused here.
pub fn check_filter(filter: &str) -> Result<(), String> {
    for directive in filter.split(',').map(str::trim) {
        if directive.is_empty() {
            continue;
        }
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => level,
            None => directive,
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            let hint = match level.to_ascii_lowercase().as_str() {
                "warning" => " (did you mean \"warn\"?)",
                "err" => " (did you mean \"error\"?)",
                "information" | "inf" => " (did you mean \"info\"?)",
                _ => "",
            };
            return Err(format!(
                "unknown log level {level:?} in {filter:?}{hint}: use trace, debug, info, warn, error or off, alone or as target=level"
            ));
        }
    }
    EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|e| format!("invalid log filter {filter:?}: {e}"))
}

/// Installs the global subscriber (once; later calls do nothing).
pub fn init(log: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(std::io::stdout().is_terminal());
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The log format a control file asks for, read leniently from `text` (a file that failed to
/// load can still say how its errors should look): `text` when `log.format: text`, else JSON,
/// the default.
pub fn format_of(text: Option<&str>) -> LogFormat {
    let asked = text
        .and_then(|t| serde_yaml::from_str::<serde_yaml::Value>(t).ok())
        .and_then(|v| v.get("log")?.get("format")?.as_str().map(str::to_owned));
    match asked.as_deref() {
        Some("text") => LogFormat::Text,
        _ => LogFormat::Json,
    }
}

/// Reports an error that stops Remora from starting: as an `error` log line in `format` (so a
/// log pipeline that parses JSON sees it, with the logs' usual fields), and in plain text on
/// stderr (for a person at a terminal, and `kubectl logs` of a crash loop).
pub fn fatal(format: LogFormat, message: &str) {
    init(&LogSettings {
        filter: "error".into(),
        format,
        access_log: false,
    });
    tracing::error!(target: "remora", error = message, "cannot start");
    eprintln!("{message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_file_still_names_its_log_format() {
        assert_eq!(
            format_of(Some("log: { format: text }\nversion: [")),
            LogFormat::Json
        );
        assert_eq!(
            format_of(Some("log: { format: text }\nversion: x\n")),
            LogFormat::Text
        );
        assert_eq!(format_of(Some("not: [yaml")), LogFormat::Json);
        assert_eq!(format_of(None), LogFormat::Json);
    }

    #[test]
    fn filters_name_known_levels() {
        for ok in [
            "info",
            "warn",
            "info,remora=debug",
            "remora::access=off, error",
            "TRACE",
        ] {
            assert!(check_filter(ok).is_ok(), "{ok}");
        }
        let err = check_filter("warning").unwrap_err();
        assert!(err.contains("did you mean \"warn\""), "{err}");
        assert!(check_filter("info,remora=loud").is_err());
        assert!(check_filter("remora").is_err(), "a bare target is no level");
    }
}
