//! Sans-IO TURN core: the STUN/TURN wire codecs (`stun`), long-term and TURN REST
//! credentials (`auth`), the peer policy (`policy`), the PROXY protocol header a load
//! balancer puts before a TCP client's bytes (`proxy_header`) and the TURN server state
//! machine (`server`).
//!
//! No sockets, no clock, no randomness: every input carries `now`, secrets are injected,
//! and the outputs are replies written into caller-owned buffers plus [`server`] commands
//! that the data paths (userspace UDP, io_uring TCP, XDP maps) carry out.

pub mod auth;
pub mod fast_map;
pub mod policy;
pub mod proxy_header;
pub mod server;
pub mod stun;
