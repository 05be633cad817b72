//! The relay daemon (binary `relay`) around the sans-IO core in `relay-proto`: the
//! configuration (`config`, a leaf) and the cores built from it (`cores`), the userspace
//! data paths (`udp`, `tcp`, `shard`), the XDP fast path (`xdp`: loading, attaching, the
//! map writer), the control plane and admin endpoint (`control`, `admin`, `metrics`,
//! `events`), and the operator tools (`check`, `status`, `probe`, `load`).

pub mod admin;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod cores;
pub mod events;
pub mod load;
pub mod local_routes;
pub mod log_limit;
pub mod log_window;
pub mod logging;
pub mod metrics;
pub mod privileges;
pub mod probe;
pub mod serve;
pub mod shard;
pub mod status;
pub mod tcp;
pub mod udp;
pub mod uring;
pub mod xdp;
