//! Hairpin in the kernel: client A's ChannelData or Send indication to allocation B's
//! relayed address reaches B's client directly, as if from A's public relayed address.

use std::net::SocketAddr;

use relay_common::Reason;
use relay_proto::stun::{ChannelData, Class, Data, Message, Method, XorPeerAddress};

use super::core_driver::Core;
use super::send::{A, send_indication};
use super::{CLIENT_MAC, Env, PEER_MAC, XDP_TX, channel_data, frame, in_netns, parse, sa};

/// Two UDP clients of one listener, each with an allocation whose relayed address is
/// advertised on a public (static NAT) IP, as CONTEXT.md's deployment has it.
pub struct Pair {
    pub listener: SocketAddr,
    pub a_client: SocketAddr,
    pub a_relay: SocketAddr,
    pub a_public: SocketAddr,
    pub b_client: SocketAddr,
    pub b_relay: SocketAddr,
    pub b_public: SocketAddr,
    /// B's client's MAC (the FIB's neighbour entry for its IP).
    b_mac: [u8; 6],
}

pub fn pair_v4() -> Pair {
    Pair {
        listener: sa("10.0.0.1:3478"),
        a_client: sa("10.0.0.3:50000"),
        a_relay: sa("10.0.0.1:24000"),
        a_public: sa("203.0.113.50:24000"),
        b_client: sa("10.0.0.2:50002"),
        b_relay: sa("10.0.0.1:24001"),
        b_public: sa("203.0.113.50:24001"),
        b_mac: PEER_MAC,
    }
}

fn pair_v6() -> Pair {
    Pair {
        listener: sa("[fd00::1]:3478"),
        a_client: sa("[fd00::3]:50000"),
        a_relay: sa("[fd00::1]:24000"),
        a_public: sa("[2001:db8::50]:24000"),
        b_client: sa("[fd00::2]:50002"),
        b_relay: sa("[fd00::1]:24001"),
        b_public: sa("[2001:db8::50]:24001"),
        b_mac: PEER_MAC,
    }
}

/// Both allocations in the maps; A may send to B's public address (permission and
/// channel 0x4001); B has no permission yet.
pub fn setup(env: &mut Env, p: &Pair) {
    for (client, relay, public) in [
        (p.a_client, p.a_relay, p.a_public),
        (p.b_client, p.b_relay, p.b_public),
    ] {
        env.maps.add_public_ip(public.ip()).unwrap();
        env.maps.add_public_ip(relay.ip()).unwrap();
        env.maps
            .add_udp_allocation(client, p.listener, relay, public)
            .unwrap();
    }
    env.maps
        .add_permission(p.a_client, p.listener, p.a_relay, p.b_public.ip())
        .unwrap();
    env.maps
        .add_channel(p.a_client, p.listener, p.a_relay, p.b_public, 0x4001)
        .unwrap();
}

pub fn permit_b(env: &mut Env, p: &Pair) {
    env.maps
        .add_permission(p.b_client, p.listener, p.b_relay, p.a_public.ip())
        .unwrap();
}

/// Runs `msg` from A's client; asserts it reached B's client and returns its UDP payload.
fn hairpinned(env: &mut Env, p: &Pair, msg: &[u8]) -> Vec<u8> {
    let input = frame(p.a_client, p.listener, msg, CLIENT_MAC, env.mac);
    let before = env.reason(Reason::Hairpinned);
    let (action, out) = env.run(&input);
    assert_eq!(action, XDP_TX);
    let out = parse(&out);
    assert_eq!(out.src, p.listener, "from the listener B's client uses");
    assert_eq!(out.dst, p.b_client);
    assert_eq!(out.dst_mac, p.b_mac);
    assert_eq!(env.reason(Reason::Hairpinned), before + 1);
    out.payload
}

/// A Data indication from A's public relayed address carrying `payload`.
fn assert_data_indication(bytes: &[u8], from: SocketAddr, payload: &[u8]) {
    assert_eq!(bytes.len() % 4, 0, "STUN message padded");
    let msg = Message::parse(bytes).expect("valid STUN message");
    assert_eq!(
        (msg.class(), msg.method()),
        (Class::Indication, Method::DATA)
    );
    assert_eq!(msg.attr::<XorPeerAddress>(), Some(Ok(XorPeerAddress(from))));
    assert_eq!(msg.attr::<Data>(), Some(Ok(Data(payload))));
}

fn with_data_indication(p: Pair) {
    in_netns(move |env| {
        setup(env, &p);
        permit_b(env, &p);
        let mut bytes = 0;
        let mut packets = 0;
        for len in [0usize, 1, 2, 3, 4, 5, 401] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 5 + 1) as u8).collect();
            // ChannelData (with TCP-style padding) and a Send indication to B's public
            // address both reach B's client.
            for msg in [
                channel_data(0x4001, &payload, (4 - len % 4) % 4),
                send_indication(
                    &[A::Peer(p.b_public), A::Data(&payload), A::Fingerprint],
                    0x5c,
                ),
            ] {
                let out = hairpinned(env, &p, &msg);
                assert_data_indication(&out, p.a_public, &payload);
                bytes += len as u64;
                packets += 1;
            }
        }
        env.maps
            .add_permission(p.a_client, p.listener, p.a_relay, p.b_relay.ip())
            .unwrap();
        let to_bind = send_indication(&[A::Peer(p.b_relay), A::Data(b"via bind")], 0);
        let out = hairpinned(env, &p, &to_bind);
        assert_data_indication(&out, p.a_public, b"via bind");
        bytes += 8;
        packets += 1;

        let a = env.maps.allocation_counters(p.a_relay).unwrap();
        let b = env.maps.allocation_counters(p.b_relay).unwrap();
        assert_eq!((a.to_peer_packets, a.to_peer_bytes), (packets, bytes));
        assert_eq!((b.to_client_packets, b.to_client_bytes), (packets, bytes));
        assert_eq!((a.to_client_packets, b.to_peer_packets), (0, 0));
    });
}

#[test]
fn hairpin_as_data_indication_ipv4() {
    with_data_indication(pair_v4());
}

#[test]
fn hairpin_as_data_indication_ipv6() {
    with_data_indication(pair_v6());
}

fn with_channel(p: Pair) {
    in_netns(move |env| {
        setup(env, &p);
        permit_b(env, &p);
        env.maps
            .add_channel(p.b_client, p.listener, p.b_relay, p.a_public, 0x7ff0)
            .unwrap();
        for len in [0usize, 3, 64, 1000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 9 + 2) as u8).collect();
            for msg in [
                channel_data(0x4001, &payload, 0),
                send_indication(
                    &[A::DontFragment, A::Data(&payload), A::Peer(p.b_public)],
                    1,
                ),
            ] {
                let out = hairpinned(env, &p, &msg);
                assert_eq!(out, channel_data(0x7ff0, &payload, 0));
            }
        }
    });
}

#[test]
fn hairpin_as_channel_data_ipv4() {
    with_channel(pair_v4());
}

#[test]
fn hairpin_as_channel_data_ipv6() {
    with_channel(pair_v6());
}

#[test]
fn hairpin_the_kernel_cannot_resolve_passes_up() {
    in_netns(|env| {
        let p = pair_v4();
        setup(env, &p);
        let mac = env.mac;
        let from_a = |msg: &[u8]| frame(p.a_client, p.listener, msg, CLIENT_MAC, mac);

        // B has no permission for A's public address.
        let cd = from_a(&channel_data(0x4001, b"knock", 0));
        env.assert_pass(&cd, Reason::HairpinNoPermission);
        let send = from_a(&send_indication(&[A::Peer(p.b_public), A::Data(b"x")], 0));
        env.assert_pass(&send, Reason::HairpinNoPermission);
        // A port of our public address nobody holds (or a TCP allocation's).
        let nobody = sa("203.0.113.50:24005");
        let send = from_a(&send_indication(&[A::Peer(nobody), A::Data(b"x")], 0));
        env.assert_pass(&send, Reason::Hairpin);
        // A to its own relayed address.
        let own = from_a(&send_indication(&[A::Peer(p.a_public), A::Data(b"x")], 0));
        env.assert_pass(&own, Reason::Hairpin);
        // B's permission arrives: the same ChannelData goes through.
        permit_b(env, &p);
        assert_eq!(env.run(&cd).0, XDP_TX);
        let a = env.maps.allocation_counters(p.a_relay).unwrap();
        assert_eq!(a.to_peer_packets, 1, "only the delivered packet counts");
    });
}

/// The whole chain: the protocol core's own commands populate the maps (public and bind
/// addresses, clients, permissions, channels), and the kernel's hairpin output is the one
/// the core's userspace data path produces for the same packet.
#[test]
fn core_commands_drive_kernel_hairpin() {
    in_netns(|env| {
        let listener = sa("10.0.0.1:3478");
        let (a_client, b_client) = (sa("10.0.0.3:50000"), sa("10.0.0.2:50002"));
        let mut core = Core::new("10.0.0.1".parse().unwrap(), "203.0.113.50".parse().unwrap());
        let a_public = core.allocate(a_client, listener);
        let b_public = core.allocate(b_client, listener);
        assert_eq!(a_public.ip().to_string(), "203.0.113.50");
        core.permit(a_client, listener, b_public);
        core.bind(a_client, listener, 0x4001, b_public);
        core.permit(b_client, listener, a_public);
        for cmd in core.commands() {
            env.maps.apply(&cmd).unwrap();
        }

        // A's ChannelData and Send indication: B has no channel, so a Data indication.
        for msg in [
            channel_data(0x4001, b"from a", 2),
            send_indication(
                &[A::Peer(b_public), A::Data(b"from a, sent"), A::Fingerprint],
                0,
            ),
        ] {
            let (to, expected) = core
                .hairpin(a_client, listener, &msg)
                .expect("core hairpins");
            assert_eq!(to, b_client);
            let out = hairpinned_to(env, a_client, listener, b_client, &msg);
            let (want, got) = (
                Message::parse(&expected).unwrap(),
                Message::parse(&out).unwrap(),
            );
            assert_eq!(got.attr::<XorPeerAddress>(), want.attr::<XorPeerAddress>());
            assert_eq!(got.attr::<Data>(), want.attr::<Data>());
            assert_eq!(out.len(), expected.len());
        }
        // B answers with a Send indication to A's public address; A has channel 0x4001
        // bound to B's public address, so A gets ChannelData: byte for byte the core's.
        let msg = send_indication(&[A::Peer(a_public), A::Data(b"from b")], 0);
        let (to, expected) = core
            .hairpin(b_client, listener, &msg)
            .expect("core hairpins");
        assert_eq!(to, a_client);
        assert_eq!(ChannelData::parse(&expected).unwrap().channel(), 0x4001);
        assert_eq!(
            hairpinned_to(env, b_client, listener, a_client, &msg),
            expected
        );

        let a = env.maps.allocation_counters(bind_of(a_public)).unwrap();
        let b = env.maps.allocation_counters(bind_of(b_public)).unwrap();
        assert_eq!((a.to_peer_packets, a.to_client_packets), (2, 1));
        assert_eq!((b.to_peer_packets, b.to_client_packets), (1, 2));

        // B's allocation ends: its entries leave the maps, A's data to it goes up.
        core.release(b_client, listener);
        for cmd in core.commands() {
            env.maps.apply(&cmd).unwrap();
        }
        let cd = frame(
            a_client,
            listener,
            &channel_data(0x4001, b"gone", 0),
            CLIENT_MAC,
            env.mac,
        );
        env.assert_pass(&cd, Reason::Hairpin);
        let back = frame(b_client, listener, &msg, PEER_MAC, env.mac);
        env.assert_pass(&back, Reason::NoAllocation);
        assert!(env.maps.allocation_counters(bind_of(b_public)).is_err());
        // And A's: nothing of it is left either.
        core.release(a_client, listener);
        for cmd in core.commands() {
            env.maps.apply(&cmd).unwrap();
        }
        env.assert_pass(&cd, Reason::UnknownChannel);
        let send = frame(a_client, listener, &msg, CLIENT_MAC, env.mac);
        env.assert_pass(&send, Reason::NoAllocation);
        assert!(env.maps.allocation_counters(bind_of(a_public)).is_err());
    });
}

/// The bind address behind a public relayed address of [`Core`]: same port, 10.0.0.1.
fn bind_of(public: SocketAddr) -> SocketAddr {
    SocketAddr::new("10.0.0.1".parse().unwrap(), public.port())
}

fn hairpinned_to(
    env: &mut Env,
    from: SocketAddr,
    listener: SocketAddr,
    to: SocketAddr,
    msg: &[u8],
) -> Vec<u8> {
    let input = frame(from, listener, msg, CLIENT_MAC, env.mac);
    let (action, out) = env.run(&input);
    assert_eq!(action, XDP_TX);
    let out = parse(&out);
    assert_eq!((out.src, out.dst), (listener, to));
    out.payload
}
