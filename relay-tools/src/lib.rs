//! The relay's client-side tools, each a subcommand of the `relay` binary:
//! `relay stun` ([`probe`]: one-shot reachability and credentials check), `relay load`
//! ([`load`]: load generator and its echo peer) and `relay status` ([`status`]: the admin
//! endpoint's usage view). They work against any TURN server, build on stable Rust and
//! share nothing with the daemon but the admin API's document types.

pub mod load;
pub mod probe;
pub mod status;

/// Command lines parsed as the `relay` binary parses a tool's, for the tools' tests.
#[cfg(test)]
mod test_cli {
    use clap::{Args, Parser};

    #[derive(Parser)]
    struct Cli<A: Args> {
        #[command(flatten)]
        args: A,
    }

    /// `v` as the arguments of subcommand `name`.
    pub fn parse<A: Args>(name: &str, v: &[&str]) -> Result<A, clap::Error> {
        Cli::<A>::try_parse_from(std::iter::once(name).chain(v.iter().copied())).map(|c| c.args)
    }
}
