//! The relay daemon: configuration, the userspace data paths and the XDP loader around
//! the sans-IO core in `relay-proto`.

pub mod admin;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod core;
pub mod epoll;
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
