//! The userspace UDP data path: listeners, relay sockets, and event loops (one per worker,
//! sharing the listeners through SO_REUSEPORT) that feed every datagram to their shard's
//! sans-IO core and carry out what it returns.

mod batch;
mod dataplane;
mod epoll;
mod plane;
mod socket;
mod uring;

pub use dataplane::{Dataplane, ENGINE_ENV, choose_engine};
pub use socket::{bind_udp, bind_udp_reuseport, claim_listener, with_bind_hint};
