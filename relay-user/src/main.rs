//! `relay`: parses the command line and hands each subcommand to the library (`serve`,
//! `check`, `upgrade`, `stun`, `status`, `load`), turning its outcome into the exit code.

use std::process::ExitCode;

use clap::Parser;
#[cfg(feature = "tools")]
use relay_tools::status::AdminSection;
use relay_user::cli::{Cli, Command};

/// sysexits' EX_USAGE: kept apart from `relay stun`'s 1 (error answer) and 2 (no answer).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if !keeps_sigpipe_ignored(&cli.command) {
        restore_sigpipe();
    }
    let result = match cli.command {
        Command::Serve(args) => relay_user::serve::run(args),
        Command::Check { config } => relay_user::check::run(&config),
        Command::BenchXdp(args) => relay_user::xdp::bench::run(&args).map_err(Into::into),
        Command::Upgrade { config } => upgrade(&config),
        #[cfg(feature = "tools")]
        Command::Stun(args) => {
            return ExitCode::from(relay_tools::probe::run(&args).clamp(0, 255) as u8);
        }
        #[cfg(feature = "tools")]
        Command::Status(args) => {
            let code = relay_tools::status::run(&args, &admin_section);
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
        #[cfg(feature = "tools")]
        Command::Load(cmd) => {
            return ExitCode::from(relay_tools::load::run(*cmd).clamp(0, 255) as u8);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line for the operator.
            eprintln!("relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `relay upgrade`: the summary on stdout, or the reason (as every error) on stderr.
fn upgrade(config: &std::path::Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let summary = relay_user::handover::control_socket::request_upgrade(config, &exe)?;
    println!("upgraded: {summary}");
    Ok(())
}

/// `serve` and `status` write to sockets a peer may reset (see [`restore_sigpipe`]).
fn keeps_sigpipe_ignored(command: &Command) -> bool {
    match command {
        Command::Serve(_) => true,
        #[cfg(feature = "tools")]
        Command::Status(_) => true,
        _ => false,
    }
}

/// `relay status --config FILE`: the admin address and token, from a file the daemon's
/// own loader accepts (an invalid file is refused with the key at fault, as `relay check`).
#[cfg(feature = "tools")]
fn admin_section(path: &std::path::Path) -> Result<AdminSection, String> {
    let c = relay_user::config::load(path).map_err(|e| e.to_string())?;
    Ok(AdminSection {
        address: c.admin.address,
        token: c.admin.token,
        tls: c.admin.tls,
        cluster: c
            .cluster
            .nodes
            .iter()
            .map(|n| n.admin.to_string())
            .collect(),
        ca: c.cluster.ca,
    })
}

/// Rust starts with SIGPIPE ignored, so a write to a closed pipe (`relay check | head -1`)
/// fails and `println!` panics. Commands that only print to stdout and use UDP (check,
/// stun, load) get the default back: the reader went away, so the process ends quietly,
/// as `cat` does. `serve` keeps it ignored (a TCP client that resets would kill the
/// relay), and so does `status`: its HTTP client writes to a TCP socket, and it already
/// treats a closed stdout as done.
fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to the default, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
