//! The relay's client-side tools, each a subcommand of the `relay` binary:
//! `relay stun` ([`probe`]: one-shot reachability and credentials check), `relay load`
//! ([`load`]: load generator and its echo peer) and `relay status` ([`status`]: the admin
//! endpoint's usage view). They work against any TURN server, build on stable Rust and
//! share nothing with the daemon but the admin API's document types.

pub mod load;
pub mod probe;
pub mod status;
