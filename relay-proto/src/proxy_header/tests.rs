//! The spec's examples (haproxy `doc/proxy-protocol.txt`), malformed headers with the
//! error each must give, and properties: encoder round trips, no panic on any bytes, and
//! a header split anywhere parses as it does whole.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use super::*;

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
}

fn proxied(version: Version, source: SocketAddr, destination: SocketAddr) -> ProxyHeader {
    ProxyHeader {
        version,
        command: Command::Proxy,
        addresses: Some(Addresses {
            source,
            destination,
        }),
    }
}

#[test]
fn v1_examples_of_the_spec() {
    // Section 2.1: the example line, and the worst cases it sizes the 107-byte bound by.
    let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
    let (h, n) = parse(line).unwrap().unwrap();
    assert_eq!(n, 47);
    assert_eq!(
        h,
        proxied(
            Version::V1,
            v4([192, 168, 0, 1], 56324),
            v4([192, 168, 0, 11], 443)
        )
    );
    assert_eq!(h.client(), Some(v4([192, 168, 0, 1], 56324)));

    let max4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    assert_eq!(parse(max4).unwrap().unwrap().1, max4.len());
    let f = "ffff:f...f:ffff".replace("f...f", "ffff:ffff:ffff:ffff:ffff:ffff");
    let max6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
    assert_eq!(max6.len(), 104);
    let (h, n) = parse(max6.as_bytes()).unwrap().unwrap();
    assert_eq!(n, 104);
    assert_eq!(
        h.client(),
        Some(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from([0xff; 16])),
            65535
        ))
    );
    let unknown = b"PROXY UNKNOWN\r\n";
    let (h, n) = parse(unknown).unwrap().unwrap();
    assert_eq!((h.addresses, h.client(), n), (None, None, 15));
    let unknown_max = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
    assert_eq!(unknown_max.len(), V1_MAX);
    assert_eq!(parse(unknown_max.as_bytes()).unwrap().unwrap().1, V1_MAX);
}

#[test]
fn v1_malformed_lines_are_refused_with_the_reason() {
    let bad: &[(&[u8], ProxyError)] = &[
        (
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            ProxyError::V1Malformed("protocol is not TCP4, TCP6 or UNKNOWN"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            ProxyError::V1Malformed("no destination port"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            ProxyError::V1Malformed("more than six fields"),
        ),
        (
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            ProxyError::V1Malformed("more than six fields"),
        ),
        (
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            ProxyError::V1Malformed("address not of the family named"),
        ),
        (
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            ProxyError::V1Malformed("address not of the family named"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            ProxyError::V1Malformed("port above 65535"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            ProxyError::V1Malformed("port is not a decimal number"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n",
            ProxyError::V1Malformed("not ASCII"),
        ),
        (b"GET / HTTP/1.1\r\n", ProxyError::NotProxy),
        (b"\x16\x03\x01\x00", ProxyError::NotProxy),
        (b"\x00\x01\x00\x00", ProxyError::NotProxy),
    ];
    for (bytes, want) in bad {
        assert_eq!(
            parse(bytes),
            Err(*want),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    let long = [b"PROXY ".as_slice(), &[b'1'; V1_MAX]].concat();
    assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
    // A CRLF just past the bound is too late.
    let late = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; V1_MAX - 15], b"\r\n"].concat();
    assert_eq!(late.len(), V1_MAX + 1);
    assert_eq!(parse(&late), Err(ProxyError::V1TooLong));
    assert_eq!(parse(b"PROX"), Ok(None));
    assert_eq!(parse(b""), Ok(None));
}

/// The v2 header of section 2.2 for 192.168.0.1:56324 -> 192.168.0.11:443, by hand.
const V2_TCP4: &[u8] = &[
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
    0x21, // version 2, PROXY
    0x11, // AF_INET, STREAM
    0x00, 0x0c, // 12 bytes of addresses
    192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb,
];

#[test]
fn v2_examples() {
    let with_data = [V2_TCP4, b"\x00\x01"].concat();
    let (h, n) = parse(&with_data).unwrap().unwrap();
    assert_eq!(n, 28);
    assert_eq!(
        h,
        proxied(
            Version::V2,
            v4([192, 168, 0, 1], 56324),
            v4([192, 168, 0, 11], 443)
        )
    );
    // LOCAL, as haproxy's health checks send it: no addresses, the real peer is used.
    let local = [&V2_SIGNATURE[..], &[0x20, 0x00, 0x00, 0x00]].concat();
    let (h, n) = parse(&local).unwrap().unwrap();
    assert_eq!(
        (h.command, h.addresses, h.client(), n),
        (Command::Local, None, None, 16)
    );
    // LOCAL with an address block: ignored, as the spec says.
    let mut local4 = V2_TCP4.to_vec();
    local4[12] = 0x20;
    assert_eq!(parse(&local4).unwrap().unwrap().0.client(), None);
    // PROXY, UNSPEC, with bytes that are no TLVs: accepted, no address.
    let unspec = [&V2_SIGNATURE[..], &[0x21, 0x00, 0x00, 0x02, 0xff, 0xff]].concat();
    assert_eq!(
        parse(&unspec).unwrap().unwrap(),
        (
            ProxyHeader {
                version: Version::V2,
                command: Command::Proxy,
                addresses: None
            },
            18
        )
    );
    // IPv6 with an AWS-style TLV (type 0xEA, VPC endpoint id) skipped.
    let src: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
    let dst: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
    let h6 = encode_v2(
        Command::Proxy,
        Some(Addresses {
            source: src,
            destination: dst,
        }),
        &[(0xea, b"\x01vpce-08d2bf15fac5001c9")],
    );
    assert_eq!(h6[13], 0x21);
    assert_eq!(
        parse(&h6).unwrap().unwrap(),
        (proxied(Version::V2, src, dst), h6.len())
    );
    // AF_UNIX: no IP client.
    let mut unix = [&V2_SIGNATURE[..], &[0x21, 0x31, 0x00, 216]].concat();
    unix.resize(16 + 216, 0);
    assert_eq!(parse(&unix).unwrap().unwrap().0.client(), None);
}

#[test]
fn v2_malformed_headers_are_refused_with_the_reason() {
    let with = |i: usize, b: u8| {
        let mut h = V2_TCP4.to_vec();
        h[i] = b;
        h
    };
    assert_eq!(parse(&with(12, 0x11)), Err(ProxyError::V2Version(1)));
    assert_eq!(parse(&with(12, 0x22)), Err(ProxyError::V2Command(2)));
    assert_eq!(parse(&with(13, 0x41)), Err(ProxyError::V2Family(0x41)));
    assert_eq!(parse(&with(13, 0x13)), Err(ProxyError::V2Family(0x13)));
    assert_eq!(
        parse(&with(15, 11)),
        Err(ProxyError::V2Short {
            len: 11,
            needed: 12
        })
    );
    assert_eq!(
        parse(&with(13, 0x21)),
        Err(ProxyError::V2Short {
            len: 12,
            needed: 36
        })
    );
    let long = [&V2_SIGNATURE[..], &[0x21, 0x11, 0x02, 0x09]].concat();
    assert_eq!(parse(&long), Err(ProxyError::V2TooLong(16 + 0x209)));
    // A TLV whose length runs past the header; and a TLV cut inside its own head.
    let mut tlv = V2_TCP4.to_vec();
    tlv[15] = 12 + 4;
    tlv.extend_from_slice(&[0x01, 0x00, 0x02, 0xaa]);
    assert_eq!(parse(&tlv), Err(ProxyError::V2Tlv(28)));
    let mut cut = V2_TCP4.to_vec();
    cut[15] = 12 + 2;
    cut.extend_from_slice(&[0x01, 0x00]);
    assert_eq!(parse(&cut), Err(ProxyError::V2Tlv(28)));
    // Incomplete until the last byte.
    assert_eq!(parse(&V2_TCP4[..27]), Ok(None));
    assert_eq!(parse(&V2_SIGNATURE[..5]), Ok(None));
}

fn addresses() -> impl Strategy<Value = Addresses> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<u16>()
        )
            .prop_map(|(s, sp, d, dp)| {
                Addresses {
                    source: v4(s, sp),
                    destination: v4(d, dp),
                }
            }),
        (
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<[u8; 16]>(),
            any::<u16>()
        )
            .prop_map(|(s, sp, d, dp)| {
                Addresses {
                    source: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(s)), sp),
                    destination: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(d)), dp),
                }
            }),
    ]
}

/// Bytes that look like the start of a header often enough to reach the deep branches.
fn header_like() -> impl Strategy<Value = Vec<u8>> {
    let body = proptest::collection::vec(any::<u8>(), 0..600);
    prop_oneof![
        body.clone(),
        (0usize..13, body.clone()).prop_map(|(n, b)| [&V2_SIGNATURE[..n], &b].concat()),
        (any::<u8>(), any::<u8>(), 0u16..600, body.clone()).prop_map(|(vc, f, len, b)| {
            [&V2_SIGNATURE[..], &[vc, f], &len.to_be_bytes(), &b].concat()
        }),
        (0usize..7, body).prop_map(|(n, b)| [&V1_PREFIX[..n], &b].concat()),
        "PROXY (TCP4|TCP6|UNKNOWN)( [0-9a-f.:]{0,40}){0,6}\r\n.{0,4}".prop_map(String::into_bytes),
    ]
}

/// Every prefix of `bytes` parses as incomplete or as the whole does.
fn prefixes_agree(bytes: &[u8]) -> Result<(), TestCaseError> {
    let whole = parse(bytes);
    for k in 0..bytes.len() {
        let part = parse(&bytes[..k]);
        prop_assert!(
            part == Ok(None) || part == whole,
            "prefix {k}: {part:?} vs {whole:?}"
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn v2_round_trip(cmd in prop_oneof![Just(Command::Local), Just(Command::Proxy)],
                     a in proptest::option::of(addresses()),
                     tlvs in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..6),
                     rest in proptest::collection::vec(any::<u8>(), 0..20)) {
        let tlvs: Vec<(u8, &[u8])> = tlvs.iter().map(|(t, v)| (*t, v.as_slice())).collect();
        let h = encode_v2(cmd, a, &tlvs);
        let (got, n) = parse(&[&h[..], &rest].concat()).unwrap().unwrap();
        prop_assert_eq!(n, h.len());
        prop_assert_eq!(got.command, cmd);
        prop_assert_eq!(got.addresses, if cmd == Command::Proxy { a } else { None });
        prefixes_agree(&h)?;
    }

    #[test]
    fn v1_round_trip(a in proptest::option::of(addresses()), rest in proptest::collection::vec(any::<u8>(), 0..20)) {
        let h = encode_v1(a);
        prop_assert!(h.len() <= V1_MAX);
        let (got, n) = parse(&[&h[..], &rest].concat()).unwrap().unwrap();
        prop_assert_eq!((got.addresses, got.client(), n), (a, a.map(|a| a.source), h.len()));
        prefixes_agree(&h)?;
    }

    #[test]
    fn any_bytes_parse_without_panic_within_bounds_and_split_anywhere_as_whole(b in header_like()) {
        match parse(&b) {
            Ok(Some((_, n))) => prop_assert!(n <= b.len() && n <= V2_MAX),
            Ok(None) => prop_assert!(b.len() < V2_MAX),
            Err(_) => {}
        }
        prefixes_agree(&b)?;
    }
}
