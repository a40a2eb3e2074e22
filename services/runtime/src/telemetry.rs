//! Process-wide `tracing` set-up.

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber once; later calls are no-ops, so tests and
/// the all-in-one mode may call it freely. `RUST_LOG` filters (default
/// `info`); `CHATPIPE_LOG_FORMAT=json` switches to JSON lines. Logs go to
/// stderr, so that a command's stdout carries only its output (e.g.
/// `TOKEN=$(chatpipe token --user alice)`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,scylla=warn,h2=warn,tower=warn"));
    let json = std::env::var("CHATPIPE_LOG_FORMAT").is_ok_and(|format| format == "json");
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(std::io::stderr);
    let _already_installed = if json {
        builder.json().try_init().is_err()
    } else {
        builder.try_init().is_err()
    };
}
