//! Writing PROXY headers as a load balancer does: for tests (the parser's round trip,
//! the relay's end-to-end tests) and for tools that stand in for a balancer.

use std::net::IpAddr;

use super::{Addresses, Command, V2_SIGNATURE};

/// A v1 line: `TCP4`/`TCP6` for `addresses` (both of one family, else `UNKNOWN`), or
/// `PROXY UNKNOWN\r\n` for `None`.
pub fn encode_v1(addresses: Option<Addresses>) -> Vec<u8> {
    let line = match addresses.map(|a| (a.source, a.destination)) {
        Some((s, d)) if s.is_ipv4() == d.is_ipv4() => {
            let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
            let (sip, dip, sp, dp) = (s.ip(), d.ip(), s.port(), d.port());
            format!("PROXY {family} {sip} {dip} {sp} {dp}\r\n")
        }
        _ => "PROXY UNKNOWN\r\n".to_owned(),
    };
    line.into_bytes()
}

/// A v2 header over a stream: `command`, the address block of `addresses` (UNSPEC for
/// `None` or mixed families), then `tlvs` as (type, value).
pub fn encode_v2(command: Command, addresses: Option<Addresses>, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    let family = match addresses {
        Some(Addresses {
            source: s,
            destination: d,
        }) if s.is_ipv4() == d.is_ipv4() => {
            // Source and destination addresses, then their ports (spec 2.2).
            for ip in [s.ip(), d.ip()] {
                match ip {
                    IpAddr::V4(v4) => block.extend_from_slice(&v4.octets()),
                    IpAddr::V6(v6) => block.extend_from_slice(&v6.octets()),
                }
            }
            block.extend_from_slice(&s.port().to_be_bytes());
            block.extend_from_slice(&d.port().to_be_bytes());
            // INET or INET6, STREAM
            if s.is_ipv4() { 0x11 } else { 0x21 }
        }
        _ => 0x00,
    };
    for (t, v) in tlvs {
        block.push(*t);
        block.extend_from_slice(&(v.len() as u16).to_be_bytes());
        block.extend_from_slice(v);
    }
    let mut out = Vec::with_capacity(16 + block.len());
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(
        0x20 | match command {
            Command::Local => 0,
            Command::Proxy => 1,
        },
    );
    out.push(family);
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(&block);
    out
}
