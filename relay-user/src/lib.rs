//! The relay daemon (binary `relay`) around the sans-IO core in `relay-proto`: the
//! configuration (`config`, a leaf) and the cores built from it (`cores`), the userspace
//! data paths (`udp`, `tcp`, `shard`), the XDP fast path (`xdp`: loading, attaching, the
//! map writer), the control plane and admin endpoint (`control`, `admin`, `metrics`,
//! `events`) and `check`. The `relay` binary's tool subcommands (stun, load, status) live
//! in `relay-tools`, the admin API's documents in `relay-admin-api`.

pub mod admin;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
mod control;
pub mod cores;
mod event_loop;
mod events;
pub mod handover;
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

// The fallback loops' epoll calls, shared with the tools.
use relay_sys::epoll;
