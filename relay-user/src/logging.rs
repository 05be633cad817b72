//! Operator logs: tracing to stderr, with `log` records (aya, kernel program) bridged in.

use tracing_subscriber::{EnvFilter, fmt};

/// `level` is the `[log] level` setting (error, warn, info, debug, trace or a full
/// filter such as `info,relay_user=debug`); `RUST_LOG` overrides it.
pub fn init(level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env),
        _ => EnvFilter::try_new(level),
    }
    .map_err(|e| format!("bad log level `{level}`: {e}"))?;
    fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init()
        .map_err(|e| e.to_string())
}
