//! Address attributes (RFC 8489 §14.1/§14.2/§14.15, RFC 8656 §18.3/§18.5).
//!
//! Value: reserved(8) family(8) port(16) address(32 or 128). The XOR-* forms XOR the port with
//! the cookie's top half and the address with cookie‖txid, so NATs rewriting addresses found in
//! payloads leave them alone.

use super::{Attr, AttrType};
use crate::stun::error::AttrError;
use crate::stun::header::{MAGIC_COOKIE, TransactionId};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

mod field {
    pub const FAMILY: usize = 1;
    pub const PORT: usize = 2;
    pub const ADDR: usize = 4;
}
const FAMILY_V4: u8 = 0x01;
const FAMILY_V6: u8 = 0x02;
const LEN_V4: usize = 8;
const LEN_V6: usize = 20;

/// cookie‖txid: the XOR pad for the address bytes.
fn pad(txid: &TransactionId) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    p[4..].copy_from_slice(&txid.0);
    p
}

fn decode(
    typ: AttrType,
    value: &[u8],
    xor: Option<&TransactionId>,
) -> Result<SocketAddr, AttrError> {
    // Fixed-size patterns: lengths checked by the match, no variable-length copies.
    let (port, ip) = match *value {
        [_, FAMILY_V4, p0, p1, a0, a1, a2, a3] => {
            let mut a = [a0, a1, a2, a3];
            if let Some(txid) = xor {
                for (b, p) in a.iter_mut().zip(pad(txid)) {
                    *b ^= p;
                }
            }
            (u16::from_be_bytes([p0, p1]), IpAddr::V4(Ipv4Addr::from(a)))
        }
        [_, FAMILY_V6, p0, p1, ref rest @ ..] if rest.len() == LEN_V6 - field::ADDR => {
            let mut a = [0u8; 16];
            a.copy_from_slice(rest);
            if let Some(txid) = xor {
                for (b, p) in a.iter_mut().zip(pad(txid)) {
                    *b ^= p;
                }
            }
            (u16::from_be_bytes([p0, p1]), IpAddr::V6(Ipv6Addr::from(a)))
        }
        [_, fam @ (FAMILY_V4 | FAMILY_V6), ..] => {
            return Err(AttrError::BadLength {
                typ,
                len: value.len(),
                expected: if fam == FAMILY_V4 {
                    "8 for IPv4"
                } else {
                    "20 for IPv6"
                },
            });
        }
        [_, family, _, _, ..] => return Err(AttrError::UnknownFamily { typ, family }),
        _ => {
            return Err(AttrError::BadLength {
                typ,
                len: value.len(),
                expected: "8 (IPv4) or 20 (IPv6)",
            });
        }
    };
    let port = if xor.is_some() {
        port ^ (MAGIC_COOKIE >> 16) as u16
    } else {
        port
    };
    Ok(SocketAddr::new(ip, port))
}

fn encoded_len(addr: &SocketAddr) -> usize {
    if addr.is_ipv4() { LEN_V4 } else { LEN_V6 }
}

fn encode(addr: &SocketAddr, out: &mut [u8], xor: Option<&TransactionId>) {
    let (fam, mut bytes) = match addr.ip() {
        IpAddr::V4(ip) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&ip.octets());
            (FAMILY_V4, b)
        }
        IpAddr::V6(ip) => (FAMILY_V6, ip.octets()),
    };
    let mut port = addr.port();
    if let Some(txid) = xor {
        port ^= (MAGIC_COOKIE >> 16) as u16;
        for (b, p) in bytes.iter_mut().zip(pad(txid)) {
            *b ^= p;
        }
    }
    let n = encoded_len(addr) - field::ADDR;
    let mut head = [0u8; 4];
    head[field::FAMILY] = fam;
    head[field::PORT..].copy_from_slice(&port.to_be_bytes());
    super::put(out, 0, &head);
    super::put(out, field::ADDR, &bytes[..n]);
}

macro_rules! address_attr {
    ($(#[$doc:meta])* $name:ident, $typ:ident, $xor:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub struct $name(pub SocketAddr);

        impl<'a> Attr<'a> for $name {
            const TYPE: AttrType = AttrType::$typ;
            fn decode(value: &'a [u8], txid: &TransactionId) -> Result<Self, AttrError> {
                decode(Self::TYPE, value, $xor.then_some(txid)).map($name)
            }
            fn encoded_len(&self) -> usize {
                encoded_len(&self.0)
            }
            fn encode(&self, out: &mut [u8], txid: &TransactionId) {
                encode(&self.0, out, $xor.then_some(txid))
            }
        }
    };
}

address_attr!(
    /// MAPPED-ADDRESS: plain address, kept for RFC 3489 clients.
    MappedAddress, MAPPED_ADDRESS, false
);
address_attr!(
    /// XOR-MAPPED-ADDRESS: the client's reflexive address.
    XorMappedAddress, XOR_MAPPED_ADDRESS, true
);
address_attr!(
    /// XOR-PEER-ADDRESS: a peer of the allocation.
    XorPeerAddress, XOR_PEER_ADDRESS, true
);
address_attr!(
    /// XOR-RELAYED-ADDRESS: the allocated relay address.
    XorRelayedAddress, XOR_RELAYED_ADDRESS, true
);
address_attr!(
    /// ALTERNATE-SERVER: plain address for 300 redirects.
    AlternateServer, ALTERNATE_SERVER, false
);

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: TransactionId = TransactionId([
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ]);

    #[test]
    fn rfc5769_xor_values() {
        // §2.2 and §2.3 XOR-MAPPED-ADDRESS values.
        let v4 = [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        let a = XorMappedAddress::decode(&v4, &TXID).unwrap();
        assert_eq!(a.0, "192.0.2.1:32853".parse().unwrap());
        let v6 = [
            0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
            0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        ];
        let a = XorMappedAddress::decode(&v6, &TXID).unwrap();
        assert_eq!(
            a.0,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap()
        );
        let mut out = [0xffu8; 20];
        a.encode(&mut out, &TXID);
        assert_eq!(out, v6);
    }

    #[test]
    fn plain_address() {
        let v = [0xff, 0x01, 0x0d, 0x96, 10, 0, 0, 1]; // reserved byte ignored
        let a = MappedAddress::decode(&v, &TXID).unwrap();
        assert_eq!(a.0, "10.0.0.1:3478".parse().unwrap());
        let mut out = [0u8; 8];
        a.encode(&mut out, &TXID);
        assert_eq!(out, [0x00, 0x01, 0x0d, 0x96, 10, 0, 0, 1]);
    }

    #[test]
    fn bad_values() {
        let t = AttrType::XOR_PEER_ADDRESS;
        assert!(matches!(
            XorPeerAddress::decode(&[0, 1, 0], &TXID),
            Err(AttrError::BadLength { len: 3, .. })
        ));
        assert_eq!(
            XorPeerAddress::decode(&[0, 3, 0, 0, 0, 0, 0, 0], &TXID),
            Err(AttrError::UnknownFamily { typ: t, family: 3 })
        );
        // IPv4 family with an IPv6-sized value and the reverse.
        assert!(matches!(
            XorPeerAddress::decode(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &TXID),
            Err(AttrError::BadLength { len: 12, .. })
        ));
        assert!(matches!(
            XorPeerAddress::decode(&[0, 2, 0, 0, 0, 0, 0, 0], &TXID),
            Err(AttrError::BadLength { len: 8, .. })
        ));
    }
}
