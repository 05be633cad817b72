//! Internet checksum arithmetic (RFC 1071 / RFC 1624): a running one's-complement sum
//! that can add and remove 16-bit words, so the UDP checksum of the output follows from
//! the input's checksum without touching the payload.

use relay_common::Ip;

#[derive(Clone, Copy)]
pub struct Csum(u64);

impl Csum {
    #[inline(always)]
    pub const fn new() -> Self {
        Self(0)
    }

    #[inline(always)]
    pub fn add(&mut self, w: u16) {
        self.0 += w as u64;
    }

    /// One's-complement subtraction: adding the complement.
    #[inline(always)]
    pub fn sub(&mut self, w: u16) {
        self.0 += (!w) as u64;
    }

    #[inline(always)]
    pub fn add_be(&mut self, b: [u8; 2]) {
        self.add(u16::from_be_bytes(b));
    }

    #[inline(always)]
    pub fn sub_be(&mut self, b: [u8; 2]) {
        self.sub(u16::from_be_bytes(b));
    }

    /// The address as it appears in a pseudo-header: 4 bytes for IPv4, 16 for IPv6.
    #[inline(always)]
    pub fn add_ip(&mut self, ip: &Ip, v6: bool) {
        let mut i = if v6 { 0 } else { 12 };
        while i < 16 {
            self.add(u16::from_be_bytes([ip[i], ip[i + 1]]));
            i += 2;
        }
    }

    #[inline(always)]
    pub fn sub_ip(&mut self, ip: &Ip, v6: bool) {
        let mut i = if v6 { 0 } else { 12 };
        while i < 16 {
            self.sub(u16::from_be_bytes([ip[i], ip[i + 1]]));
            i += 2;
        }
    }

    /// Folded 16-bit one's-complement sum.
    #[inline(always)]
    pub fn fold(self) -> u16 {
        let mut s = self.0;
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        s as u16
    }

    /// The checksum field value for this sum (UDP: 0 goes on the wire as 0xffff).
    #[inline(always)]
    pub fn finish_udp(self) -> u16 {
        match !self.fold() {
            0 => 0xffff,
            c => c,
        }
    }
}

/// Pseudo-header and UDP header words (checksum field excluded) of a datagram.
// Always inlined into its callers, whose locals these are: a struct of them would be one
// more copy on the 512-byte BPF stack.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn udp_envelope(
    sum: &mut Csum,
    v6: bool,
    src: &Ip,
    dst: &Ip,
    sport: [u8; 2],
    dport: [u8; 2],
    udp_len: u16,
    add: bool,
) {
    if add {
        sum.add_ip(src, v6);
        sum.add_ip(dst, v6);
        sum.add(17);
        sum.add(udp_len);
        sum.add_be(sport);
        sum.add_be(dport);
        sum.add(udp_len);
    } else {
        sum.sub_ip(src, v6);
        sum.sub_ip(dst, v6);
        sum.sub(17);
        sum.sub(udp_len);
        sum.sub_be(sport);
        sum.sub_be(dport);
        sum.sub(udp_len);
    }
}

/// Sum of the UDP data (everything after the UDP header) recovered from a valid
/// checksum: data = ~csum - pseudo-header - UDP header.
#[inline(always)]
pub fn data_sum(
    csum: u16,
    v6: bool,
    src: &Ip,
    dst: &Ip,
    sport: [u8; 2],
    dport: [u8; 2],
    udp_len: u16,
) -> Csum {
    let mut s = Csum::new();
    s.add(!csum);
    udp_envelope(&mut s, v6, src, dst, sport, dport, udp_len, false);
    s
}

/// IPv4 header checksum over a 20-byte header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(h: &[u8; 20]) -> u16 {
    let mut s = Csum::new();
    let mut i = 0;
    while i < 20 {
        s.add(u16::from_be_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    !s.fold()
}
