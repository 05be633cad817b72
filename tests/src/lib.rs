//! Test harness: the real deployment shape of ../shared/CONTEXT.md built from network
//! namespaces, veth pairs and nftables, so end-to-end tests run real clients through a
//! static-NAT firewall to a dual-NIC relay host. Needs root (CI is root).

pub mod cmd;
pub mod netns;
pub mod topology;

pub use netns::Netns;
pub use topology::{Addresses, Topology, TopologyOptions};
