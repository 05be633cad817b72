//! The command line of `relay load` and `relay load echo`.

use std::net::{IpAddr, SocketAddr};

use clap::{Args, Subcommand, ValueEnum};

use crate::probe::{CredentialArgs, TlsArgs, Transport};

/// `relay load [OPTIONS] SERVER` or `relay load echo [OPTIONS]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LoadCommand {
    #[command(subcommand)]
    pub echo: Option<LoadSubcommand>,
    #[command(flatten)]
    pub args: LoadArgs,
}

#[derive(Debug, Subcommand)]
pub enum LoadSubcommand {
    /// Run only the echo peer: every datagram goes back to its sender, from the same port.
    Echo(EchoArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// ChannelBind, then ChannelData (4 bytes of overhead; what browsers use).
    Channel,
    /// CreatePermission, then Send and Data indications.
    Send,
}

/// Load generator options.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// TURN server, IP:PORT or IP (port 3478). With --direct: the echo peer itself.
    #[arg(value_name = "SERVER", required = true)]
    pub server: Option<String>,
    /// How allocations reach the server: one UDP socket, or one TCP or TLS connection,
    /// each (SERVER without a port: 3478, or 5349 for TLS).
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    pub transport: Transport,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// The echo peer as the relay reaches it (default: --echo's address).
    #[arg(long, value_name = "IP:PORT")]
    pub peer: Option<SocketAddr>,
    /// Also run an echo peer in this process, listening here (one host is then enough).
    #[arg(long, value_name = "IP:PORT")]
    pub echo: Option<SocketAddr>,
    /// The built-in echo peer drops every Nth datagram (a known loss).
    #[arg(long = "echo-drop-every", value_name = "N", requires = "echo")]
    pub echo_drop_every: Option<u64>,
    /// Concurrent allocations (one UDP socket, or one TCP or TLS connection, each).
    #[arg(long, short = 'n', value_name = "N", default_value_t = 100)]
    pub allocations: usize,
    /// Allocations started per second (default: as fast as --window allows).
    #[arg(long, value_name = "PER_SEC")]
    pub ramp: Option<f64>,
    /// Setup transactions in flight at once, per thread.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub window: usize,
    #[arg(long, value_enum, default_value_t = ModeArg::Channel)]
    pub mode: ModeArg,
    /// No TURN: send straight to SERVER, the echo peer (the no-relay baseline).
    #[arg(long, conflicts_with_all = ["user", "password", "secret", "peer"])]
    pub direct: bool,
    /// Packets per second sent in total (each comes back once), or "max".
    #[arg(long, value_name = "PPS|max", default_value = "1000")]
    pub rate: String,
    /// Payload bytes per packet (24 to 1400).
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub size: usize,
    /// Seconds of traffic after setup (0: set up, report, delete).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub duration: f64,
    /// Worker threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Packets sent back to back on one allocation (one sendmmsg).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub burst: usize,
    /// How long echoes still in flight are awaited after the traffic window.
    #[arg(long = "drain-ms", value_name = "MS", default_value_t = 1000)]
    pub drain_ms: u64,
    /// Longest wait for one request's answer, retransmissions included.
    #[arg(long = "timeout-ms", value_name = "MS", default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Local address the allocations' sockets bind to.
    #[arg(long, value_name = "IP")]
    pub local: Option<IpAddr>,
    /// Report this process's CPU time and memory too (the server under test).
    #[arg(long = "watch-pid", value_name = "PID")]
    pub watch_pid: Option<u32>,
    /// Add this process's CPU time to the run's own (`group`) figure, e.g. the echo
    /// peer (repeat for several).
    #[arg(long = "count-pid", value_name = "PID")]
    pub count_pid: Vec<u32>,
    /// Once setup is done, write the ready UDP allocations here, one line each: client
    /// address, server, channel, relayed address, peer (for a raw-frame sender).
    #[arg(long = "allocations-file", value_name = "PATH")]
    pub allocations_file: Option<std::path::PathBuf>,
    /// Follow 300 ALTERNATE-SERVER (a full or draining relay of a cluster) as a browser
    /// does: allocate again at the named server, from the same socket (UDP only; at most
    /// 2 hops). Off: a 300 is a failed allocation.
    #[arg(long = "follow-redirects")]
    pub follow_redirects: bool,
    /// Leave the allocations in place at the end (they expire on the server).
    #[arg(long = "no-delete")]
    pub no_delete: bool,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Echo peer options.
#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// Threads, each with its own SO_REUSEPORT socket (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Drop every Nth datagram instead of echoing it (a known loss for tests).
    #[arg(long = "drop-every", value_name = "N")]
    pub drop_every: Option<u64>,
    /// Stop after this many seconds (default: on SIGINT or SIGTERM).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Print the final counts as one JSON object.
    #[arg(long)]
    pub json: bool,
}
