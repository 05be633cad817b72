//! TURN attributes (RFC 8656 §18, RFC 6062 §6.2).

use super::{Attr, AttrType, expect_len, fixed, put};
use crate::stun::error::AttrError;
use crate::stun::header::TransactionId;

/// Address family code used by REQUESTED-/ADDITIONAL-ADDRESS-FAMILY and ADDRESS-ERROR-CODE.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum AddressFamily {
    V4 = 1,
    V6 = 2,
}

impl AddressFamily {
    pub(crate) fn from_wire(typ: AttrType, family: u8) -> Result<Self, AttrError> {
        match family {
            1 => Ok(AddressFamily::V4),
            2 => Ok(AddressFamily::V6),
            family => Err(AttrError::UnknownFamily { typ, family }),
        }
    }
}

/// Implements `Attr` for a newtype over a big-endian integer with a fixed-size value.
macro_rules! int_attr {
    ($(#[$doc:meta])* $name:ident($int:ty), $typ:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub struct $name(pub $int);

        impl<'a> Attr<'a> for $name {
            const TYPE: AttrType = AttrType::$typ;
            fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
                const N: usize = size_of::<$int>();
                fixed::<N>(Self::TYPE, value, if N == 8 { "8" } else { "4" }).map(|b| $name(<$int>::from_be_bytes(b)))
            }
            fn encoded_len(&self) -> usize {
                size_of::<$int>()
            }
            fn encode(&self, out: &mut [u8], _: &TransactionId) {
                put(out, 0, &self.0.to_be_bytes())
            }
        }
    };
}
pub(super) use int_attr;

int_attr!(
    /// LIFETIME in seconds.
    Lifetime(u32), LIFETIME
);
int_attr!(
    /// CONNECTION-ID (RFC 6062) naming a peer TCP connection.
    ConnectionId(u32), CONNECTION_ID
);

/// Implements `Attr` for a zero-length flag attribute.
macro_rules! flag_attr {
    ($(#[$doc:meta])* $name:ident, $typ:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
        pub struct $name;

        impl<'a> Attr<'a> for $name {
            const TYPE: AttrType = AttrType::$typ;
            fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
                expect_len(Self::TYPE, value, 0, "0").map(|()| $name)
            }
            fn encoded_len(&self) -> usize {
                0
            }
            fn encode(&self, _: &mut [u8], _: &TransactionId) {}
        }
    };
}
pub(super) use flag_attr;

flag_attr!(
    /// DONT-FRAGMENT: set DF on the relayed datagrams.
    DontFragment, DONT_FRAGMENT
);

/// CHANNEL-NUMBER: channel(16) RFFU(16).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ChannelNumber(pub u16);

impl<'a> Attr<'a> for ChannelNumber {
    const TYPE: AttrType = AttrType::CHANNEL_NUMBER;
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        // RFFU is ignored on receipt; range checks are the server's (it answers 400).
        let [a, b, _, _] = fixed::<4>(Self::TYPE, value, "4")?;
        Ok(ChannelNumber(u16::from_be_bytes([a, b])))
    }
    fn encoded_len(&self) -> usize {
        4
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        let [a, b] = self.0.to_be_bytes();
        put(out, 0, &[a, b, 0, 0]);
    }
}

/// DATA: the relayed payload, borrowed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Data<'a>(pub &'a [u8]);

impl<'a> Attr<'a> for Data<'a> {
    const TYPE: AttrType = AttrType::DATA;
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        Ok(Data(value))
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        put(out, 0, self.0)
    }
}

/// REQUESTED-TRANSPORT: IP protocol number (17 UDP, 6 TCP) then RFFU(24).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RequestedTransport(pub u8);

impl RequestedTransport {
    pub const UDP: RequestedTransport = RequestedTransport(17);
    pub const TCP: RequestedTransport = RequestedTransport(6);
}

impl<'a> Attr<'a> for RequestedTransport {
    const TYPE: AttrType = AttrType::REQUESTED_TRANSPORT;
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        fixed::<4>(Self::TYPE, value, "4").map(|[p, ..]| RequestedTransport(p))
    }
    fn encoded_len(&self) -> usize {
        4
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        put(out, 0, &[self.0, 0, 0, 0])
    }
}

/// EVEN-PORT: one byte whose top bit (R) asks to reserve the next port too.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct EvenPort(pub bool);

impl<'a> Attr<'a> for EvenPort {
    const TYPE: AttrType = AttrType::EVEN_PORT;
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        fixed::<1>(Self::TYPE, value, "1").map(|[b]| EvenPort(b & 0x80 != 0))
    }
    fn encoded_len(&self) -> usize {
        1
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        put(out, 0, &[if self.0 { 0x80 } else { 0 }])
    }
}

/// RESERVATION-TOKEN: opaque 8 bytes naming a reserved relay port.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ReservationToken(pub [u8; 8]);

impl<'a> Attr<'a> for ReservationToken {
    const TYPE: AttrType = AttrType::RESERVATION_TOKEN;
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        fixed(Self::TYPE, value, "8").map(ReservationToken)
    }
    fn encoded_len(&self) -> usize {
        8
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        put(out, 0, &self.0)
    }
}

/// family(8) RFFU(24), shared by the two address-family attributes.
macro_rules! family_attr {
    ($(#[$doc:meta])* $name:ident, $typ:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub struct $name(pub AddressFamily);

        impl<'a> Attr<'a> for $name {
            const TYPE: AttrType = AttrType::$typ;
            fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
                let [f, ..] = fixed::<4>(Self::TYPE, value, "4")?;
                AddressFamily::from_wire(Self::TYPE, f).map($name)
            }
            fn encoded_len(&self) -> usize {
                4
            }
            fn encode(&self, out: &mut [u8], _: &TransactionId) {
                put(out, 0, &[self.0 as u8, 0, 0, 0])
            }
        }
    };
}

family_attr!(
    /// REQUESTED-ADDRESS-FAMILY: the family of the relayed address wanted.
    RequestedAddressFamily, REQUESTED_ADDRESS_FAMILY
);
family_attr!(
    /// ADDITIONAL-ADDRESS-FAMILY: ask for a second (IPv6) relayed address.
    AdditionalAddressFamily, ADDITIONAL_ADDRESS_FAMILY
);

/// ICMP: reserved(16) type(8) code(8) error-data(32), reported in Data indications.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Icmp {
    pub typ: u8,
    pub code: u8,
    pub data: u32,
}

impl<'a> Attr<'a> for Icmp {
    const TYPE: AttrType = AttrType::ICMP;
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        let [_, _, typ, code, d0, d1, d2, d3] = fixed::<8>(Self::TYPE, value, "8")?;
        Ok(Icmp {
            typ,
            code,
            data: u32::from_be_bytes([d0, d1, d2, d3]),
        })
    }
    fn encoded_len(&self) -> usize {
        8
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        put(out, 0, &[0, 0, self.typ, self.code]);
        put(out, 4, &self.data.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const T: TransactionId = TransactionId([0; 12]);

    fn enc<'a, A: Attr<'a>>(a: &A) -> Vec<u8> {
        let mut v = vec![0xAA; a.encoded_len()];
        a.encode(&mut v, &T);
        v
    }

    #[test]
    fn fixed_values() {
        assert_eq!(
            Lifetime::decode(&[0, 0, 0x0e, 0x10], &T),
            Ok(Lifetime(3600))
        );
        assert_eq!(enc(&Lifetime(600)), [0, 0, 2, 0x58]);
        assert_eq!(
            ChannelNumber::decode(&[0x40, 0x01, 0xff, 0xff], &T),
            Ok(ChannelNumber(0x4001))
        );
        assert_eq!(enc(&ChannelNumber(0x4001)), [0x40, 0x01, 0, 0]);
        assert_eq!(
            RequestedTransport::decode(&[17, 0, 0, 0], &T),
            Ok(RequestedTransport::UDP)
        );
        assert_eq!(enc(&RequestedTransport::TCP), [6, 0, 0, 0]);
        assert_eq!(EvenPort::decode(&[0x80], &T), Ok(EvenPort(true)));
        assert_eq!(EvenPort::decode(&[0x7f], &T), Ok(EvenPort(false)));
        assert_eq!(enc(&EvenPort(true)), [0x80]);
        assert_eq!(DontFragment::decode(&[], &T), Ok(DontFragment));
        assert_eq!(
            ReservationToken::decode(&[1; 8], &T),
            Ok(ReservationToken([1; 8]))
        );
        assert_eq!(ConnectionId::decode(&[0, 0, 0, 9], &T), Ok(ConnectionId(9)));
        assert_eq!(
            RequestedAddressFamily::decode(&[2, 0, 0, 0], &T),
            Ok(RequestedAddressFamily(AddressFamily::V6))
        );
        assert_eq!(
            enc(&AdditionalAddressFamily(AddressFamily::V6)),
            [2, 0, 0, 0]
        );
        let icmp = Icmp {
            typ: 3,
            code: 4,
            data: 1400,
        };
        assert_eq!(Icmp::decode(&enc(&icmp), &T), Ok(icmp));
        assert_eq!(Data::decode(b"xyz", &T), Ok(Data(b"xyz")));
    }

    #[test]
    fn wrong_lengths_and_values() {
        for (got, len) in [
            (Lifetime::decode(&[0; 5], &T).err(), 5),
            (ChannelNumber::decode(&[0; 2], &T).err(), 2),
            (RequestedTransport::decode(&[17], &T).err(), 1),
            (EvenPort::decode(&[0; 4], &T).err(), 4),
            (ReservationToken::decode(&[0; 7], &T).err(), 7),
            (Icmp::decode(&[0; 4], &T).err(), 4),
        ] {
            assert!(
                matches!(got, Some(AttrError::BadLength { len: l, .. }) if l == len),
                "{got:?}"
            );
        }
        assert!(matches!(
            DontFragment::decode(&[0], &T),
            Err(AttrError::BadLength {
                typ: AttrType::DONT_FRAGMENT,
                len: 1,
                ..
            })
        ));
        assert_eq!(
            RequestedAddressFamily::decode(&[3, 0, 0, 0], &T),
            Err(AttrError::UnknownFamily {
                typ: AttrType::REQUESTED_ADDRESS_FAMILY,
                family: 3
            })
        );
    }
}
