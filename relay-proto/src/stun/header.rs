//! The fixed 20-byte STUN header (RFC 8489 §5) and the message type's interleaved
//! class/method bits.

/// Fixed value in every RFC 5389+ header; tells STUN apart from other protocols on a port.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 20;

/// Byte offsets inside the header.
pub(crate) mod field {
    use core::ops::Range;
    pub const TYPE: Range<usize> = 0..2;
    pub const LENGTH: Range<usize> = 2..4;
    pub const COOKIE: Range<usize> = 4..8;
    pub const TXID: Range<usize> = 8..20;
}

/// The 96-bit transaction id; also the IPv6 XOR pad.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TransactionId(pub [u8; 12]);

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    /// The two class bits C1 C0.
    const fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }

    const fn from_bits(bits: u16) -> Class {
        match bits & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        }
    }
}

/// 12-bit STUN method.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Method = Method(0x001);
    pub const ALLOCATE: Method = Method(0x003);
    pub const REFRESH: Method = Method(0x004);
    pub const SEND: Method = Method(0x006);
    pub const DATA: Method = Method(0x007);
    pub const CREATE_PERMISSION: Method = Method(0x008);
    pub const CHANNEL_BIND: Method = Method(0x009);
    pub const CONNECT: Method = Method(0x00A);
    pub const CONNECTION_BIND: Method = Method(0x00B);
    pub const CONNECTION_ATTEMPT: Method = Method(0x00C);

    /// The RFC name, for operator logs; None for methods this codec does not know.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Method::BINDING => "Binding",
            Method::ALLOCATE => "Allocate",
            Method::REFRESH => "Refresh",
            Method::SEND => "Send",
            Method::DATA => "Data",
            Method::CREATE_PERMISSION => "CreatePermission",
            Method::CHANNEL_BIND => "ChannelBind",
            Method::CONNECT => "Connect",
            Method::CONNECTION_BIND => "ConnectionBind",
            Method::CONNECTION_ATTEMPT => "ConnectionAttempt",
            _ => return None,
        })
    }
}

impl core::fmt::Display for Method {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "method {:#05x}", self.0),
        }
    }
}

/// Message type = M11..M7 C1 M6..M4 C0 M3..M0 (RFC 8489 §5, figure 3).
/// Methods wider than 12 bits are truncated: the wire has no room for them.
#[inline]
pub const fn encode_type(class: Class, method: Method) -> u16 {
    let m = method.0 & 0x0FFF;
    let c = class.bits();
    ((m & 0x0F80) << 2) | ((m & 0x0070) << 1) | (m & 0x000F) | ((c & 0b10) << 7) | ((c & 0b01) << 4)
}

/// Inverse of [`encode_type`]; the top two bits must already be known to be zero.
#[inline]
pub const fn decode_type(typ: u16) -> (Class, Method) {
    let m = ((typ & 0x3E00) >> 2) | ((typ & 0x00E0) >> 1) | (typ & 0x000F);
    let c = ((typ >> 7) & 0b10) | ((typ >> 4) & 0b01);
    (Class::from_bits(c), Method(m))
}

/// Big-endian u16 at `at`; callers have checked the bounds (returns 0 otherwise, never panics).
#[inline]
pub(crate) fn be16(buf: &[u8], at: usize) -> u16 {
    match at.checked_add(2).and_then(|end| buf.get(at..end)) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

#[inline]
pub(crate) fn be32(buf: &[u8], at: usize) -> u32 {
    match at.checked_add(4).and_then(|end| buf.get(at..end)) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn method_names_for_logs() {
        assert_eq!(Method::ALLOCATE.to_string(), "Allocate");
        assert_eq!(Method::CREATE_PERMISSION.to_string(), "CreatePermission");
        assert_eq!(Method(0x0FF).to_string(), "method 0x0ff");
    }

    use super::*;

    #[test]
    fn well_known_types() {
        // Values from RFC 8489 §6 and RFC 8656 §17.
        assert_eq!(encode_type(Class::Request, Method::BINDING), 0x0001);
        assert_eq!(encode_type(Class::Success, Method::BINDING), 0x0101);
        assert_eq!(encode_type(Class::Error, Method::BINDING), 0x0111);
        assert_eq!(encode_type(Class::Indication, Method::BINDING), 0x0011);
        assert_eq!(encode_type(Class::Request, Method::ALLOCATE), 0x0003);
        assert_eq!(encode_type(Class::Success, Method::ALLOCATE), 0x0103);
        assert_eq!(encode_type(Class::Error, Method::ALLOCATE), 0x0113);
        assert_eq!(encode_type(Class::Indication, Method::SEND), 0x0016);
        assert_eq!(encode_type(Class::Indication, Method::DATA), 0x0017);
        assert_eq!(
            encode_type(Class::Request, Method::CONNECTION_ATTEMPT),
            0x000C
        );
    }

    #[test]
    fn every_type_round_trips() {
        for m in 0..0x1000u16 {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let t = encode_type(c, Method(m));
                assert_eq!(t & 0xC000, 0);
                assert_eq!(decode_type(t), (c, Method(m)));
            }
        }
    }

    #[test]
    fn be_helpers_never_panic() {
        assert_eq!(be16(&[1], 0), 0);
        assert_eq!(be32(&[1, 2, 3], 0), 0);
        assert_eq!(be16(&[1, 2], usize::MAX - 1), 0);
        assert_eq!(be32(&[0, 0, 1, 2, 3, 4], 2), 0x0102_0304);
    }
}
