//! Operator logs: tracing to stderr, with `log` records (aya, kernel program) bridged in.

use std::{ffi::OsStr, io::IsTerminal as _};

use tracing_subscriber::{EnvFilter, fmt};

/// `level` is the `[log] level` setting or `--log-level` (a level, or directives such as
/// `info,relay_user=debug`); `RUST_LOG` overrides it with tracing's full filter syntax.
pub fn init(level: &str) -> Result<(), String> {
    // The flag never went through the config checks: a typo would silence the relay.
    crate::config::check_log_filter(level)
        .map_err(|m| format!("log.level (or --log-level): {m}"))?;
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => {
            EnvFilter::try_new(&env).map_err(|e| format!("RUST_LOG `{env}`: {e}"))
        }
        _ => EnvFilter::try_new(level).map_err(|e| format!("bad log level `{level}`: {e}")),
    }?;
    let ansi = use_ansi(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init()
        .map_err(|e| e.to_string())
}

/// Colour only for a person at a terminal: escapes in a file or the journal are noise.
/// NO_COLOR (no-color.org) turns it off when set to anything but the empty string.
fn use_ansi(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::use_ansi;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_ansi(true, None));
        assert!(use_ansi(true, Some(OsStr::new(""))));
        assert!(!use_ansi(true, Some(OsStr::new("1"))));
        assert!(!use_ansi(false, None));
        assert!(!use_ansi(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn a_misspelt_level_is_refused_before_logging_starts() {
        let e = super::init("infoo").unwrap_err();
        assert!(
            e.contains("--log-level") && e.contains("error, warn, info"),
            "{e}"
        );
    }
}
