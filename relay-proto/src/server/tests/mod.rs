//! Server tests: a harness driving [`Server`](super::Server) with a fake clock and a small
//! client built on the codec's `MessageWriter`.

mod harness;

mod abuse;
mod allocate;
mod auth;
mod bandwidth;
mod data;
mod expiry;
mod lifecycle;
mod peer_ports;
mod permission;
mod props;
mod quota;
mod responses;
mod shards;
mod snapshot;
mod tcp_relay;
