//! Criterion benchmarks of `relay-proto`, in `benches/`: `codec` (per-packet STUN and
//! ChannelData costs on the hot paths) and `server` (an authenticated Allocate, and the
//! userspace data path's lookups). This crate has no library code.
