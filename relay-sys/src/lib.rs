//! The Linux calls the daemon (relay-user) and the tools (relay-tools) both need beyond
//! std, in one place so a fix reaches both: an owned epoll set registered by token
//! ([`epoll`]), recvmmsg/sendmmsg slots ([`mmsg`]), socket options and buffer sizes
//! ([`sockopt`]), and lifting the open-files limit ([`limits`]). Stable Rust and libc
//! only, so the tools build without the kernel program's toolchain.

pub mod epoll;
pub mod limits;
pub mod mmsg;
pub mod sockopt;
