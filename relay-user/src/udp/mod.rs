//! The userspace UDP data path: listeners, relay sockets, and one event loop that feeds
//! every datagram to the sans-IO core and carries out what it returns.

mod batch;
mod dataplane;
mod sockaddr;
mod socket;

pub use dataplane::Dataplane;
pub use socket::bind_udp;
