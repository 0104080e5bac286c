//! Logs: `tracing` with JSON or text lines; the level comes from `RUST_LOG` when set, else
//! from the config. The access log is target `remora::access`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::file::{LogFile, LogFormat};

/// Installs the global subscriber (once; later calls do nothing).
pub fn init(log: &LogFile) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
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
