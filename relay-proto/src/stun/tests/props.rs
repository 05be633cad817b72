//! Property round trips: write → parse → same values.

use super::*;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use proptest::prelude::*;

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p)),
    ]
}

/// Writes `f`'s attributes, then parses the result.
fn roundtrip(
    txid: [u8; 12],
    buf: &mut [u8],
    f: impl FnOnce(&mut MessageWriter<'_>),
) -> Message<'_> {
    let mut w =
        MessageWriter::new(buf, Class::Success, Method::ALLOCATE, TransactionId(txid)).unwrap();
    f(&mut w);
    w.fingerprint().unwrap();
    let n = w.finish();
    Message::parse(&buf[..n]).unwrap()
}

proptest! {
    #[test]
    fn addresses(txid in any::<[u8; 12]>(), a in addr(), b in addr(), c in addr(), d in addr(), e in addr()) {
        let mut buf = [0u8; 256];
        let m = roundtrip(txid, &mut buf, |w| {
            w.attr(&XorMappedAddress(a)).unwrap().attr(&XorPeerAddress(b)).unwrap()
                .attr(&XorRelayedAddress(c)).unwrap().attr(&MappedAddress(d)).unwrap()
                .attr(&AlternateServer(e)).unwrap();
        });
        prop_assert_eq!(m.attr::<XorMappedAddress>(), Some(Ok(XorMappedAddress(a))));
        prop_assert_eq!(m.attr::<XorPeerAddress>(), Some(Ok(XorPeerAddress(b))));
        prop_assert_eq!(m.attr::<XorRelayedAddress>(), Some(Ok(XorRelayedAddress(c))));
        prop_assert_eq!(m.attr::<MappedAddress>(), Some(Ok(MappedAddress(d))));
        prop_assert_eq!(m.attr::<AlternateServer>(), Some(Ok(AlternateServer(e))));
    }

    #[test]
    fn strings(
        user in "\\PC{0,100}", realm in "\\PC{0,127}", nonce in "[ -~]{0,127}",
        software in "\\PC{0,127}", code in 300u16..700, reason in "\\PC{0,127}",
        key in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut buf = [0u8; 4096];
        let m = roundtrip([1; 12], &mut buf, |w| {
            w.attr(&Username(&user)).unwrap().attr(&Realm(&realm)).unwrap()
                .attr(&Nonce(&nonce)).unwrap().attr(&Software(&software)).unwrap()
                .attr(&ErrorCode { code, reason: &reason }).unwrap()
                .attr(&AddressErrorCode { family: AddressFamily::V6, code, reason: &reason }).unwrap()
                .integrity_sha256(&key).unwrap();
        });
        prop_assert_eq!(m.attr::<Username>(), Some(Ok(Username(&user))));
        prop_assert_eq!(m.attr::<Realm>(), Some(Ok(Realm(&realm))));
        prop_assert_eq!(m.attr::<Nonce>(), Some(Ok(Nonce(&nonce))));
        prop_assert_eq!(m.attr::<Software>(), Some(Ok(Software(&software))));
        prop_assert_eq!(m.attr::<ErrorCode>(), Some(Ok(ErrorCode { code, reason: &reason })));
        prop_assert_eq!(
            m.attr::<AddressErrorCode>(),
            Some(Ok(AddressErrorCode { family: AddressFamily::V6, code, reason: &reason }))
        );
        prop_assert_eq!(m.verify_integrity(&key), Ok(()));
    }

    #[test]
    fn lists(types in proptest::collection::vec(any::<u16>(), 0..=16), algs in proptest::collection::vec(any::<u16>(), 0..=8)) {
        let types: Vec<AttrType> = types.into_iter().map(AttrType).collect();
        let algs: Vec<PasswordAlgorithm> = algs.into_iter().map(PasswordAlgorithm::from_code).collect();
        let mut buf = [0u8; 256];
        let m = roundtrip([2; 12], &mut buf, |w| {
            w.attr(&UnknownAttributes::from_slice(&types)).unwrap()
                .attr(&PasswordAlgorithms::from_slice(&algs)).unwrap();
        });
        let u = m.attr::<UnknownAttributes>().unwrap().unwrap();
        prop_assert_eq!(u.as_slice(), &types[..]);
        let p = m.attr::<PasswordAlgorithms>().unwrap().unwrap();
        prop_assert_eq!(p.as_slice(), &algs[..]);
    }

    #[test]
    fn numbers(ch in any::<u16>(), life in any::<u32>(), proto in any::<u8>(), even in any::<bool>(),
               token in any::<[u8; 8]>(), cid in any::<u32>(), prio in any::<u32>(), tie in any::<u64>(),
               icmp in any::<(u8, u8, u32)>(), data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut buf = [0u8; 1024];
        let m = roundtrip([3; 12], &mut buf, |w| {
            w.attr(&ChannelNumber(ch)).unwrap().attr(&Lifetime(life)).unwrap()
                .attr(&RequestedTransport(proto)).unwrap().attr(&EvenPort(even)).unwrap()
                .attr(&ReservationToken(token)).unwrap().attr(&ConnectionId(cid)).unwrap()
                .attr(&Priority(prio)).unwrap().attr(&IceControlling(tie)).unwrap()
                .attr(&IceControlled(tie)).unwrap().attr(&UseCandidate).unwrap()
                .attr(&DontFragment).unwrap()
                .attr(&Icmp { typ: icmp.0, code: icmp.1, data: icmp.2 }).unwrap()
                .attr(&Data(&data)).unwrap();
        });
        prop_assert_eq!(m.attr::<ChannelNumber>(), Some(Ok(ChannelNumber(ch))));
        prop_assert_eq!(m.attr::<Lifetime>(), Some(Ok(Lifetime(life))));
        prop_assert_eq!(m.attr::<RequestedTransport>(), Some(Ok(RequestedTransport(proto))));
        prop_assert_eq!(m.attr::<EvenPort>(), Some(Ok(EvenPort(even))));
        prop_assert_eq!(m.attr::<ReservationToken>(), Some(Ok(ReservationToken(token))));
        prop_assert_eq!(m.attr::<ConnectionId>(), Some(Ok(ConnectionId(cid))));
        prop_assert_eq!(m.attr::<Priority>(), Some(Ok(Priority(prio))));
        prop_assert_eq!(m.attr::<IceControlling>(), Some(Ok(IceControlling(tie))));
        prop_assert_eq!(m.attr::<IceControlled>(), Some(Ok(IceControlled(tie))));
        prop_assert_eq!(m.attr::<UseCandidate>(), Some(Ok(UseCandidate)));
        prop_assert_eq!(m.attr::<DontFragment>(), Some(Ok(DontFragment)));
        prop_assert_eq!(m.attr::<Icmp>(), Some(Ok(Icmp { typ: icmp.0, code: icmp.1, data: icmp.2 })));
        prop_assert_eq!(m.attr::<Data>(), Some(Ok(Data(&data))));
    }

    #[test]
    fn channel_data(ch in CHANNEL_MIN..=CHANNEL_MAX, payload in proptest::collection::vec(any::<u8>(), 0..600), pad in any::<bool>()) {
        let mut out = [0u8; 700];
        let n = write_channel_data(&mut out, ch, &payload, pad).unwrap();
        prop_assert_eq!(n.is_multiple_of(4), pad || (payload.len() % 4 == 0));
        prop_assert_eq!(classify(&out[..n]), PacketKind::ChannelData);
        let cd = ChannelData::parse(&out[..n]).unwrap();
        prop_assert_eq!(cd.channel(), ch);
        prop_assert_eq!(cd.payload(), &payload[..]);
        if pad {
            prop_assert_eq!(frame_len(&out[..n]), Ok(Some(n)));
        }
    }

    /// A TCP stream of mixed frames, delivered in arbitrary pieces, is cut back into exactly
    /// the frames that were sent.
    #[test]
    fn frame_len_on_split_points(
        frames in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..80)), 1..8),
        cuts in proptest::collection::vec(1usize..40, 1..50),
    ) {
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        for (i, (stun, payload)) in frames.iter().enumerate() {
            let mut buf = [0u8; 256];
            let n = if *stun {
                let mut w = MessageWriter::new(&mut buf, Class::Indication, Method::DATA, TransactionId([i as u8; 12])).unwrap();
                w.attr(&Data(payload)).unwrap();
                w.finish()
            } else {
                write_channel_data(&mut buf, 0x4000 + i as u16, payload, true).unwrap()
            };
            stream.extend_from_slice(&buf[..n]);
            sent.push(buf[..n].to_vec());
        }
        // Feed the stream piecewise into a reassembly buffer, cutting frames as they complete.
        let mut pending: Vec<u8> = Vec::new();
        let mut got = Vec::new();
        let mut pos = 0;
        let mut cut = cuts.iter().cycle();
        while pos < stream.len() {
            let step = (*cut.next().unwrap()).min(stream.len() - pos);
            pending.extend_from_slice(&stream[pos..pos + step]);
            pos += step;
            while let Some(n) = frame_len(&pending).unwrap() {
                let frame: Vec<u8> = pending.drain(..n).collect();
                match classify(&frame) {
                    PacketKind::Stun => prop_assert!(Message::parse(&frame).is_ok()),
                    _ => prop_assert!(ChannelData::parse(&frame).is_ok()),
                }
                got.push(frame);
            }
        }
        prop_assert!(pending.is_empty());
        prop_assert_eq!(got, sent);
    }
}
