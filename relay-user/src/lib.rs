//! The relay daemon: configuration, the userspace data paths and the XDP loader around
//! the sans-IO core in `relay-proto`. The `relay` binary's tool subcommands (stun, load,
//! status) live in `relay-tools`, the admin API's documents in `relay-admin-api`.

pub mod admin;
pub mod check;
pub mod cli;
pub mod config;
mod control;
pub mod core;
mod events;
mod local_routes;
pub mod log_limit;
mod log_window;
mod logging;
mod metrics;
mod privileges;
pub mod serve;
pub mod shard;
pub mod tcp;
pub mod udp;
mod uring;
pub mod xdp;
