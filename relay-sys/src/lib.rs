//! The Linux calls the daemon (relay-user) and the tools (relay-tools) both need beyond
//! std, in one place so a fix reaches both: an owned epoll set registered by token
//! ([`epoll`]), recvmmsg/sendmmsg slots ([`mmsg`]), socket options and buffer sizes
//! ([`sockopt`]), socket addresses as the kernel takes them and a sendto that never
//! blocks ([`sockaddr`]), and lifting the open-files limit ([`limits`]); and the CPU and memory
//! readings from /proc the load generator, the benches and the tests take ([`procfs`]).
//! Stable Rust and libc only, so the tools build without the kernel program's toolchain.

pub mod epoll;
pub mod limits;
pub mod mmsg;
pub mod procfs;
pub mod sockaddr;
pub mod sockopt;
