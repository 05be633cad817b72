//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1 and 2) that a
//! TCP load balancer sends before the client's own bytes, so that the relay learns the
//! client's address rather than the balancer's.
//!
//! Incremental and sans-IO: [`parse`] takes the bytes received so far and answers
//! `Ok(None)` until the whole header is there, then the header and its length; what
//! follows it is the client's stream (TURN framing, or a TLS ClientHello). A header is
//! bounded ([`V1_MAX`], [`V2_MAX`]): a sender that goes past the bound without
//! finishing one is refused, so a connection cannot make the relay buffer without end.
//! Errors are decided only once the bytes they depend on are there, so feeding a header
//! in pieces gives the same answer as feeding it whole.
//!
//! - v1: one text line, `PROXY TCP4|TCP6|UNKNOWN src dst sport dport\r\n`.
//! - v2: a 12-byte signature, version/command, family/transport, a length, the address
//!   block, then TLVs (type, length, value), which are bounds-checked and skipped.
//!
//! `LOCAL` (v2) and `UNKNOWN`/`UNSPEC` carry no client address: the balancer's own
//! connection (a health check); the receiver uses the real peer address.

mod encode;
#[cfg(test)]
mod tests;

pub use encode::{encode_v1, encode_v2};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// The longest v1 line, CRLF included (the spec's own bound: `TCP6` with two full
/// addresses and ports).
pub const V1_MAX: usize = 107;
/// The longest v2 header accepted: the 16 fixed bytes, the largest address block (216,
/// AF_UNIX) and 304 bytes of TLVs, enough for what load balancers send (an AWS VPC
/// endpoint id, a GCP connection id, haproxy's SSL summary).
pub const V2_MAX: usize = 536;
/// The v2 signature; `\r\n\r\n\0\r\nQUIT\n` cannot begin a v1 line, a TLS record or STUN.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// How every v1 line begins.
pub const V1_PREFIX: &[u8] = b"PROXY ";
/// The fixed part of a v2 header: signature, version/command, family/transport, length.
const V2_FIXED: usize = 16;
/// Address block lengths of v2 (RFC-less constants of the spec, section 2.2).
const V2_INET: usize = 12;
const V2_INET6: usize = 36;
const V2_UNIX: usize = 216;

/// Which version of the protocol a header used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// What the sender says the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// The sender's own connection (a health check): use the real peer address.
    Local,
    /// Relayed for a client.
    Proxy,
}

/// The client's and the address it connected to, as the balancer saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: Version,
    pub command: Command,
    /// `None` for LOCAL, UNKNOWN (v1), UNSPEC and AF_UNIX (v2): no IP client.
    pub addresses: Option<Addresses>,
}

impl ProxyHeader {
    /// The client address to use instead of the connection's peer, if the header names
    /// one.
    pub fn client(&self) -> Option<SocketAddr> {
        match self.command {
            Command::Local => None,
            Command::Proxy => self.addresses.map(|a| a.source),
        }
    }
}

/// Why bytes are not an acceptable PROXY header; the text is for an operator's log.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error(
        "no PROXY protocol header (neither the v1 `PROXY ` nor the v2 signature): the sender is not a proxy sending one"
    )]
    NotProxy,
    #[error("v1 line without CRLF within {V1_MAX} bytes")]
    V1TooLong,
    #[error("v1 line malformed: {0}")]
    V1Malformed(&'static str),
    #[error("v2 header of {0} bytes is longer than the {V2_MAX} accepted")]
    V2TooLong(usize),
    #[error("v2 version {0} (only 2 exists)")]
    V2Version(u8),
    #[error("v2 command {0} (only LOCAL 0 and PROXY 1 exist)")]
    V2Command(u8),
    #[error("v2 address family/transport byte {0:#04x} is not defined")]
    V2Family(u8),
    #[error("v2 header length {len} is shorter than its address block ({needed} bytes)")]
    V2Short { len: usize, needed: usize },
    #[error("v2 TLV at offset {0} runs past the end of the header")]
    V2Tlv(usize),
}

/// Parses the header at the start of `buf`: `Ok(None)` while more bytes are needed,
/// `Ok(Some((header, length)))` once complete (the client's bytes begin at `length`).
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if starts_like(buf, &V2_SIGNATURE) {
        return if buf.len() < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    if starts_like(buf, V1_PREFIX) {
        return if buf.len() < V1_PREFIX.len() {
            Ok(None)
        } else {
            parse_v1(buf)
        };
    }
    Err(ProxyError::NotProxy)
}

/// `buf` and `prefix` agree on their common length (an empty `buf` agrees with all).
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end])
        .map_err(|_| ProxyError::V1Malformed("not ASCII"))?;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    let v6 = match family {
        // The rest of an UNKNOWN line is to be ignored (spec 2.1).
        "UNKNOWN" => {
            return Ok(Some((
                ProxyHeader {
                    version: Version::V1,
                    command: Command::Proxy,
                    addresses: None,
                },
                end + 2,
            )));
        }
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(ProxyError::V1Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let mut next = |what| fields.next().ok_or(ProxyError::V1Malformed(what));
    let (src, dst) = (next("no source address")?, next("no destination address")?);
    let (sport, dport) = (next("no source port")?, next("no destination port")?);
    if fields.next().is_some() {
        return Err(ProxyError::V1Malformed("more than six fields"));
    }
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        let ip = if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        ip.map_err(|_| ProxyError::V1Malformed("address not of the family named"))
    };
    let addresses = Addresses {
        source: SocketAddr::new(ip(src)?, port(sport)?),
        destination: SocketAddr::new(ip(dst)?, port(dport)?),
    };
    Ok(Some((
        ProxyHeader {
            version: Version::V1,
            command: Command::Proxy,
            addresses: Some(addresses),
        },
        end + 2,
    )))
}

/// A decimal port, 1 to 5 digits and at most 65535 (no sign, no spaces).
fn port(s: &str) -> Result<u16, ProxyError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProxyError::V1Malformed("port is not a decimal number"));
    }
    s.parse()
        .map_err(|_| ProxyError::V1Malformed("port above 65535"))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if buf.len() < V2_FIXED {
        return Ok(None);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(ProxyError::V2Version(version));
    }
    let command = match command {
        0 => Command::Local,
        1 => Command::Proxy,
        c => return Err(ProxyError::V2Command(c)),
    };
    let fam = buf[13];
    // High nibble: UNSPEC, INET, INET6, UNIX; low: UNSPEC, STREAM, DGRAM.
    if fam >> 4 > 3 || fam & 0x0f > 2 {
        return Err(ProxyError::V2Family(fam));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = V2_FIXED + len;
    if total > V2_MAX {
        return Err(ProxyError::V2TooLong(total));
    }
    let needed = match fam >> 4 {
        1 => V2_INET,
        2 => V2_INET6,
        3 => V2_UNIX,
        _ => 0,
    };
    if len < needed {
        return Err(ProxyError::V2Short { len, needed });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let block = &buf[V2_FIXED..total];
    if fam >> 4 != 0 {
        // UNSPEC's block is unspecified (the spec: ignore it), so it is not read as TLVs.
        check_tlvs(&block[needed..], V2_FIXED + needed)?;
    }
    let addresses = match fam >> 4 {
        1 => {
            let ip = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&block[at..at + 4]).unwrap());
            Some(Addresses {
                source: SocketAddr::new(ip(0), be16(block, 8)),
                destination: SocketAddr::new(ip(4), be16(block, 10)),
            })
        }
        2 => {
            let ip = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&block[at..at + 16]).unwrap());
            Some(Addresses {
                source: SocketAddr::new(ip(0), be16(block, 32)),
                destination: SocketAddr::new(ip(16), be16(block, 34)),
            })
        }
        // UNSPEC and AF_UNIX: no IP client to report.
        _ => None,
    };
    let addresses = match command {
        // The spec: a receiver ignores the address block of LOCAL.
        Command::Local => None,
        Command::Proxy => addresses,
    };
    Ok(Some((
        ProxyHeader {
            version: Version::V2,
            command,
            addresses,
        },
        total,
    )))
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Every TLV (1 byte type, 2 bytes length, value) ends inside `tlvs`; `base` is the
/// offset of `tlvs` in the header, for the error.
fn check_tlvs(tlvs: &[u8], base: usize) -> Result<(), ProxyError> {
    let mut at = 0;
    while at < tlvs.len() {
        if tlvs.len() - at < 3 {
            return Err(ProxyError::V2Tlv(base + at));
        }
        let len = usize::from(be16(tlvs, at + 1));
        if tlvs.len() - at - 3 < len {
            return Err(ProxyError::V2Tlv(base + at));
        }
        at += 3 + len;
    }
    Ok(())
}
