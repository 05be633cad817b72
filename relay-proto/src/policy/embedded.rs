//! IPv4 addresses carried inside IPv6 addresses, so the policy can judge the IPv4 address a
//! packet would really reach (through the kernel's v4-mapped sockets, a 6to4 or Teredo relay,
//! or a NAT64 translator) and no encoding slips past the IPv4 deny list.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::reason::EmbeddingForm;

/// At most four readings (local-use NAT64); fixed capacity, no heap.
#[derive(Debug, Clone, Copy)]
pub(super) struct Embedded {
    items: [(EmbeddingForm, Ipv4Addr); 4],
    len: usize,
}

impl Embedded {
    /// No embedded address (any IPv4 peer).
    pub(super) fn none() -> Self {
        Self {
            items: [(EmbeddingForm::Ipv4Mapped, Ipv4Addr::UNSPECIFIED); 4],
            len: 0,
        }
    }

    fn push(&mut self, form: EmbeddingForm, a: [u8; 4]) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (form, Ipv4Addr::from(a));
            self.len += 1;
        }
    }

    pub(super) fn as_slice(&self) -> &[(EmbeddingForm, Ipv4Addr)] {
        &self.items[..self.len]
    }
}

/// Every IPv4 address `a` may carry, with the form that carries it.
pub(super) fn embedded_v4(a: Ipv6Addr) -> Embedded {
    let o = a.octets();
    let s = a.segments();
    let last = [o[12], o[13], o[14], o[15]];
    let mut out = Embedded::none();
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => out.push(EmbeddingForm::Ipv4Mapped, last),
        [0, 0, 0, 0, 0xffff, 0, _, _] => out.push(EmbeddingForm::Ipv4Translated, last),
        // :: and ::1 are the unspecified and loopback addresses, not IPv4-compatible ones.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => {}
        [0, 0, 0, 0, 0, 0, _, _] => out.push(EmbeddingForm::Ipv4Compatible, last),
        [0x2002, ..] => out.push(EmbeddingForm::SixToFour, [o[2], o[3], o[4], o[5]]),
        [0x2001, 0, ..] => {
            out.push(EmbeddingForm::TeredoServer, [o[4], o[5], o[6], o[7]]);
            out.push(EmbeddingForm::TeredoClient, last.map(|b| !b));
        }
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => out.push(EmbeddingForm::Nat64, last),
        [0x64, 0xff9b, 1, ..] => {
            // RFC 6052 §2.2 layouts for prefixes inside the /48; octet 8 (bits 64..71) is
            // skipped. All readings are judged: a translator may ignore the u-octet and
            // suffix, so "well-formedness" cannot rule a layout out.
            let nat = |prefix_len| EmbeddingForm::Nat64Local { prefix_len };
            out.push(nat(48), [o[6], o[7], o[9], o[10]]);
            out.push(nat(56), [o[7], o[9], o[10], o[11]]);
            out.push(nat(64), [o[9], o[10], o[11], o[12]]);
            out.push(nat(96), last);
        }
        _ => {}
    }
    out
}
