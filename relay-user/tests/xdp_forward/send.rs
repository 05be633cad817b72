//! Send indications from UDP clients, forwarded to the peer in the kernel, and every way
//! one can be something the kernel leaves to userspace.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};

use relay_common::Reason;
use relay_proto::stun::{
    AttrType, Class, Data, MessageWriter, Method, TransactionId, XorPeerAddress,
};

use super::{
    CLIENT_MAC, Env, Family, PEER_MAC, XDP_PASS, XDP_TX, channel_data, frame, in_netns, parse, sa,
    v4, v6,
};

/// One attribute of a crafted Send indication.
#[derive(Clone, Copy)]
pub enum A<'a> {
    Peer(SocketAddr),
    Data(&'a [u8]),
    DontFragment,
    Raw(u16, &'a [u8]),
    Fingerprint,
}

/// A Send indication with `attrs` in order, DATA padded with `pad` (receivers ignore the
/// padding's value, so the kernel must not assume zeros). Each has its own transaction id.
pub fn send_indication(attrs: &[A<'_>], pad: u8) -> Vec<u8> {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let mut txid = [0x3c; 12];
    txid[11] = NEXT.fetch_add(1, Ordering::Relaxed);
    txid[0] = txid[11].wrapping_mul(31);
    let mut buf = vec![0u8; 2048];
    let mut w = MessageWriter::new(
        &mut buf,
        Class::Indication,
        Method::SEND,
        TransactionId(txid),
    )
    .unwrap();
    w.padding_byte(pad);
    for a in attrs {
        match *a {
            A::Peer(p) => w.attr(&XorPeerAddress(p)).unwrap(),
            A::Data(d) => w.attr(&Data(d)).unwrap(),
            A::DontFragment => w.raw_attr(AttrType(0x001a), &[]).unwrap(),
            A::Raw(t, v) => w.raw_attr(AttrType(t), v).unwrap(),
            A::Fingerprint => w.fingerprint().unwrap(),
        };
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

/// A UDP client's allocation with a permission for the peer (shared with `shield.rs`).
pub fn setup(env: &mut Env, f: &Family) {
    env.maps
        .add_udp_allocation(f.client, f.listener, f.relay, f.relay)
        .unwrap();
    env.maps
        .add_permission(f.client, f.listener, f.relay, f.peer.ip())
        .unwrap();
}

fn client_to_peer(f: Family) {
    in_netns(move |env| {
        setup(env, &f);
        let mut sent = 0u64;
        let mut packets = 0u64;
        for len in [0usize, 1, 2, 3, 4, 5, 7, 333, 1200] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 11 + 3) as u8).collect();
            let shapes: [&[A<'_>]; 4] = [
                &[A::Peer(f.peer), A::Data(&payload)],
                &[A::Peer(f.peer), A::Data(&payload), A::Fingerprint],
                &[
                    A::Data(&payload),
                    A::DontFragment,
                    A::Peer(f.peer),
                    A::Fingerprint,
                ],
                &[A::DontFragment, A::Peer(f.peer), A::Data(&payload)],
            ];
            for (shape, attrs) in shapes.iter().enumerate() {
                let msg = send_indication(attrs, 0xa5 ^ shape as u8);
                let input = frame(f.client, f.listener, &msg, CLIENT_MAC, env.mac);
                let before = env.reason(Reason::SendIndication);
                let (action, out) = env.run(&input);
                assert_eq!(action, XDP_TX, "len {len} shape {shape}");
                let p = parse(&out);
                assert_eq!(p.src, f.relay);
                assert_eq!(p.dst, f.peer);
                assert_eq!(p.payload, payload, "len {len} shape {shape}");
                assert_eq!(p.dst_mac, PEER_MAC);
                assert_eq!(env.reason(Reason::SendIndication), before + 1);
                sent += len as u64;
                packets += 1;
            }
        }
        let c = env.maps.allocation_counters(f.relay).unwrap();
        assert_eq!((c.to_peer_packets, c.to_peer_bytes), (packets, sent));
    });
}

#[test]
fn send_indication_client_to_peer_ipv4() {
    client_to_peer(v4());
}

#[test]
fn send_indication_client_to_peer_ipv6() {
    client_to_peer(v6());
}

#[test]
fn send_indication_without_udp_checksum_stays_without() {
    in_netns(|env| {
        let f = v4();
        setup(env, &f);
        let msg = send_indication(&[A::Peer(f.peer), A::Data(b"odd"), A::Fingerprint], 0x77);
        let mut input = frame(f.client, f.listener, &msg, CLIENT_MAC, env.mac);
        input[40] = 0;
        input[41] = 0;
        let (action, out) = env.run(&input);
        assert_eq!(action, XDP_TX);
        let p = parse(&out);
        assert_eq!(p.payload, b"odd");
        assert_eq!(&out[40..42], &[0, 0]);
    });
}

#[test]
fn send_indications_the_kernel_does_not_take_pass_up() {
    in_netns(|env| {
        let f = v4();
        setup(env, &f);
        let mac = env.mac;
        let up = |env: &mut Env, msg: &[u8], why: Reason| {
            let input = frame(f.client, f.listener, msg, CLIENT_MAC, mac);
            env.assert_pass(&input, why);
        };
        let data: &[u8] = b"payload";
        let good = send_indication(&[A::Peer(f.peer), A::Data(data), A::Fingerprint], 0);

        // Attributes left to userspace: comprehension-required unknown, comprehension-
        // optional (SOFTWARE), MESSAGE-INTEGRITY, repeats, anything after FINGERPRINT.
        for attrs in [
            &[A::Peer(f.peer), A::Raw(0x0030, b"abcd"), A::Data(data)][..],
            &[
                A::Peer(f.peer),
                A::Data(data),
                A::Raw(0x8022, b"client 1.0"),
            ],
            &[A::Peer(f.peer), A::Data(data), A::Raw(0x0008, &[9; 20])],
            &[A::Peer(f.peer), A::Peer(f.peer), A::Data(data)],
            &[A::Peer(f.peer), A::Data(data), A::Data(data)],
            &[A::Peer(f.peer), A::Fingerprint, A::Data(data)],
            &[
                A::Peer(f.peer),
                A::DontFragment,
                A::DontFragment,
                A::DontFragment,
                A::Data(data),
            ],
        ] {
            up(env, &send_indication(attrs, 0), Reason::UnhandledAttribute);
        }

        // Missing XOR-PEER-ADDRESS or DATA; DONT-FRAGMENT with a value.
        up(
            env,
            &send_indication(&[A::Data(data)], 0),
            Reason::Malformed,
        );
        up(
            env,
            &send_indication(&[A::Peer(f.peer)], 0),
            Reason::Malformed,
        );
        let df = send_indication(&[A::Peer(f.peer), A::Raw(0x001a, b"x"), A::Data(data)], 0);
        up(env, &df, Reason::Malformed);
        // XOR-PEER-ADDRESS whose family does not match its length, or of unknown length.
        let mut bad_family = good.clone();
        bad_family[25] = 0x02;
        up(env, &bad_family, Reason::Malformed);
        let odd_peer = send_indication(&[A::Raw(0x0012, &[0, 1, 2, 3, 4, 5]), A::Data(data)], 0);
        up(env, &odd_peer, Reason::Malformed);
        // Message length longer or shorter than the datagram, or not a multiple of 4.
        for delta in [4i16, -4, 1] {
            let mut m = good.clone();
            let len = u16::from_be_bytes([m[2], m[3]]) as i16 + delta;
            m[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            up(env, &m, Reason::Malformed);
        }
        // An attribute length running past the end.
        let mut long_attr = good.clone();
        long_attr[34..36].copy_from_slice(&200u16.to_be_bytes());
        up(env, &long_attr, Reason::Malformed);
        // Trailing bytes after the message.
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0; 4]);
        up(env, &trailing, Reason::Malformed);
        // Not STUN (no magic cookie), another method, a Send request.
        let mut no_cookie = good.clone();
        no_cookie[4] = 0;
        up(env, &no_cookie, Reason::NotChannelData);
        let mut binding = good.clone();
        binding[1] = 0x11;
        up(env, &binding, Reason::NotChannelData);
        let mut request = good.clone();
        request[1] = 0x06;
        up(env, &request, Reason::NotChannelData);

        // No permission for the peer; a client without an allocation; a peer of a family
        // the allocation has no relayed address for.
        let far = send_indication(&[A::Peer(sa("10.0.0.7:9")), A::Data(data)], 0);
        up(env, &far, Reason::NoPermission);
        let stranger = frame(sa("10.0.0.3:50001"), f.listener, &good, CLIENT_MAC, mac);
        env.assert_pass(&stranger, Reason::NoAllocation);
        let to_v6 = send_indication(&[A::Peer(sa("[fd00::2]:40000")), A::Data(data)], 0);
        up(env, &to_v6, Reason::NoAllocation);

        // Every truncation of a frame the kernel would forward.
        let input = frame(f.client, f.listener, &good, CLIENT_MAC, mac);
        for len in 14..input.len() {
            let (action, out) = env.run(&input[..len]);
            assert_eq!(action, super::XDP_PASS, "truncated to {len}");
            assert_eq!(out, &input[..len]);
        }
        assert_eq!(env.run(&input).0, XDP_TX);
    });
}

/// An IPv4-mapped peer in an IPv6 XOR-PEER-ADDRESS: its map form is the IPv4 one, which
/// the kernel must not send from the IPv6 relayed address.
#[test]
fn v4_mapped_peer_of_an_ipv6_relay_passes_up() {
    in_netns(|env| {
        let f = v4();
        let relay6 = sa("[fd00::1]:24002");
        let mapped = sa("[::ffff:10.0.0.2]:40000");
        env.maps
            .add_udp_allocation(f.client, f.listener, relay6, relay6)
            .unwrap();
        env.maps
            .add_permission(f.client, f.listener, relay6, mapped.ip())
            .unwrap();
        let msg = send_indication(&[A::Peer(mapped), A::Data(b"x")], 0);
        let input = frame(f.client, f.listener, &msg, CLIENT_MAC, env.mac);
        env.assert_pass(&input, Reason::FamilyMismatch);
    });
}

/// A permission the policy limits to some ports of the peer: the kernel cannot check the
/// port a Send indication names, so the indication goes up (userspace checks it), while
/// a bound channel (its port checked at bind) and the peer's data still go in the kernel.
#[test]
fn send_indication_for_a_port_limited_permission_passes_up() {
    in_netns(|env| {
        let f = v4();
        env.maps
            .add_udp_allocation(f.client, f.listener, f.relay, f.relay)
            .unwrap();
        env.maps
            .add_permission_for(f.client, f.listener, f.relay, f.peer.ip(), false)
            .unwrap();
        env.maps
            .add_channel(f.client, f.listener, f.relay, f.peer, 0x4002)
            .unwrap();
        let to_port_22 = SocketAddr::new(f.peer.ip(), 22);
        let msg = send_indication(&[A::Peer(to_port_22), A::Data(b"ssh?")], 0);
        let input = frame(f.client, f.listener, &msg, CLIENT_MAC, env.mac);
        let before = env.reason(Reason::SendPortCheck);
        let (action, out) = env.run(&input);
        assert_eq!(
            action, XDP_PASS,
            "a Send indication to any port went out in the kernel"
        );
        assert_eq!(out, input, "passed up unchanged");
        assert_eq!(env.reason(Reason::SendPortCheck), before + 1);

        let input = frame(
            f.client,
            f.listener,
            &channel_data(0x4002, b"rtp", 1),
            CLIENT_MAC,
            env.mac,
        );
        let (action, out) = env.run(&input);
        assert_eq!(action, XDP_TX, "the bound channel stays in the kernel");
        assert_eq!(parse(&out).dst, f.peer);

        let input = frame(f.peer, f.relay, b"back", PEER_MAC, env.mac);
        let (action, out) = env.run(&input);
        assert_eq!(action, XDP_TX, "peer data stays in the kernel");
        assert_eq!(parse(&out).dst, f.client);
    });
}
