//! The shield (`relay_common::shield`): every drop reason, each beside the traffic of a
//! correct client or peer that must still be forwarded or passed up.

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use relay_proto::server::{ClientOutput, FiveTuple, Transport};

use relay_common::{Reason, SHIELD_ALL_CLIENTS_KNOWN, SHIELD_ON, ShieldConfig, bucket_params};

use super::core_driver::Core;
use super::send::{A, send_indication};
use super::{
    CLIENT_MAC, Env, Family, PEER_MAC, XDP_PASS, XDP_TX, channel_data, frame, in_netns, parse, sa,
    v4, v6,
};

const XDP_DROP: u32 = 1;
const PORTS: (u16, u16) = (24000, 24999);

/// Turns the shield on: listeners 10.0.0.1:3478 and [fd00::1]:3478, relay IPs 10.0.0.1 and fd00::1, relay ports
/// [`PORTS`], per-source bucket `source` (rate, burst), global bucket `global`.
fn shield(env: &mut Env, flags: u32, source: (u32, u32), global: (u32, u32)) {
    env.maps
        .set_shield_addresses(
            &[sa("10.0.0.1:3478"), sa("[fd00::1]:3478")],
            &[sa("10.0.0.1:0").ip(), sa("[fd00::1]:0").ip()],
        )
        .unwrap();
    let (source_interval_ns, source_burst_ns) = bucket_params(source.0, source.1);
    let (global_interval_ns, global_burst_ns) = bucket_params(global.0, global.1);
    env.maps
        .set_shield(ShieldConfig {
            flags: SHIELD_ON | flags,
            relay_port_min: PORTS.0,
            relay_port_max: PORTS.1,
            source_interval_ns,
            source_burst_ns,
            global_interval_ns,
            global_burst_ns,
        })
        .unwrap();
}

impl Env {
    /// Asserts the frame is dropped, counted under `why`.
    fn assert_drop(&mut self, frame: &[u8], why: Reason) {
        let before = self.reason(why);
        let (action, _) = self.run(frame);
        assert_eq!(action, XDP_DROP, "expected drop ({why:?})");
        assert_eq!(self.reason(why), before + 1, "reason {why:?} not counted");
    }
}

/// A UDP client's allocation, flagged complete (everything it has is in the maps), with a
/// permission for the peer and channel 0x4001 to it.
fn complete_allocation(env: &mut Env, f: &Family) {
    super::send::setup(env, f);
    env.maps
        .add_channel(f.client, f.listener, f.relay, f.peer, 0x4001)
        .unwrap();
}

/// A STUN message of type `type_` (0x0001 Binding request, 0x0011 Binding indication)
/// with `cookie` and `extra` zero bytes of body.
fn stun(type_: u16, cookie: [u8; 4], extra: usize) -> Vec<u8> {
    let mut m = type_.to_be_bytes().to_vec();
    m.extend_from_slice(&(extra as u16).to_be_bytes());
    m.extend_from_slice(&cookie);
    m.extend_from_slice(&[0x5a; 12]);
    m.extend(std::iter::repeat_n(0, extra));
    m
}

const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const BINDING_REQUEST: u16 = 0x0001;

fn relay_port_unused(f: Family, other_relay_port: SocketAddr) {
    in_netns(move |env| {
        shield(env, 0, (0, 0), (0, 0));
        let mac = env.mac;
        let unused = SocketAddr::new(f.relay.ip(), 24500);
        env.assert_drop(
            &frame(f.peer, unused, b"junk", PEER_MAC, mac),
            Reason::RelayPortUnused,
        );
        // A socket holds the port (userspace bound a relay the maps do not know yet, or a
        // TCP allocation's): up it goes.
        let _sock = UdpSocket::bind(other_relay_port).unwrap();
        env.assert_pass(
            &frame(f.peer, other_relay_port, b"\x01ata", PEER_MAC, mac),
            Reason::NotChannelData,
        );
        // Outside the relay port range: not the shield's business.
        let outside = SocketAddr::new(f.relay.ip(), 30000);
        env.assert_pass(
            &frame(f.peer, outside, b"\x01ata", PEER_MAC, mac),
            Reason::NotChannelData,
        );
        // A known allocation's peer data is forwarded as before.
        complete_allocation(env, &f);
        let (action, out) = env.run(&frame(f.peer, f.relay, b"media", PEER_MAC, mac));
        assert_eq!(action, XDP_TX);
        assert_eq!(parse(&out).payload, channel_data(0x4001, b"media", 0));
    });
}

#[test]
fn datagrams_to_unused_relay_ports_are_dropped_ipv4() {
    relay_port_unused(v4(), sa("10.0.0.1:24501"));
}

#[test]
fn datagrams_to_unused_relay_ports_are_dropped_ipv6() {
    relay_port_unused(v6(), sa("[fd00::1]:24501"));
}

#[test]
fn peers_without_a_permission_are_dropped_only_for_complete_allocations() {
    in_netns(|env| {
        let f = v4();
        shield(env, 0, (0, 0), (0, 0));
        let mac = env.mac;
        complete_allocation(env, &f);
        let stranger = sa("10.0.0.7:1000");
        env.assert_drop(
            &frame(stranger, f.relay, b"data", PEER_MAC, mac),
            Reason::PeerNotPermitted,
        );
        // Any port of a permitted peer still reaches the client.
        let other_port = SocketAddr::new(f.peer.ip(), 41000);
        let (action, out) = env.run(&frame(other_port, f.relay, b"data", PEER_MAC, mac));
        assert_eq!(action, XDP_TX);
        assert_eq!(parse(&out).dst, f.client);
        // An allocation the daemon did not flag complete (some permissions in userspace
        // only): passed up for userspace to decide.
        let partial = sa("10.0.0.1:24002");
        env.maps.add_allocation(partial).unwrap();
        env.assert_pass(
            &frame(stranger, partial, b"data", PEER_MAC, mac),
            Reason::NoPermission,
        );
    });
}

#[test]
fn unbound_channel_data_is_dropped_when_the_kernel_knows_every_channel() {
    in_netns(|env| {
        let f = v4();
        shield(env, 0, (0, 0), (0, 0));
        let mac = env.mac;
        complete_allocation(env, &f);
        // The bound channel goes out.
        let (action, out) = env.run(&frame(
            f.client,
            f.listener,
            &channel_data(0x4001, b"media", 0),
            CLIENT_MAC,
            mac,
        ));
        assert_eq!(action, XDP_TX);
        assert_eq!(parse(&out).dst, f.peer);
        // Another channel of the same client: it has none.
        env.assert_drop(
            &frame(
                f.client,
                f.listener,
                &channel_data(0x4002, b"x", 0),
                CLIENT_MAC,
                mac,
            ),
            Reason::ChannelUnbound,
        );
        // A 5-tuple without an allocation: up, unless every client is known to the kernel.
        let stranger = sa("10.0.0.3:50001");
        let cd = frame(
            stranger,
            f.listener,
            &channel_data(0x4001, b"x", 0),
            CLIENT_MAC,
            mac,
        );
        env.assert_pass(&cd, Reason::UnknownChannel);
        shield(env, SHIELD_ALL_CLIENTS_KNOWN, (0, 0), (0, 0));
        env.assert_drop(&cd, Reason::ChannelUnbound);
        // What only looks like ChannelData, to another port of this host, is not ours.
        let elsewhere = frame(
            stranger,
            sa("10.0.0.1:53"),
            &channel_data(0x4001, b"x", 0),
            CLIENT_MAC,
            mac,
        );
        env.assert_pass(&elsewhere, Reason::UnknownChannel);
        // Send indications of the allocation still leave for the peer.
        let msg = send_indication(&[A::Peer(f.peer), A::Data(b"hi")], 0);
        let (action, out) = env.run(&frame(f.client, f.listener, &msg, CLIENT_MAC, mac));
        assert_eq!(action, XDP_TX);
        assert_eq!(parse(&out).payload, b"hi");
    });
}

#[test]
fn send_indications_from_unknown_clients_are_dropped_when_every_client_is_known() {
    in_netns(|env| {
        let f = v4();
        shield(env, 0, (0, 0), (0, 0));
        let mac = env.mac;
        complete_allocation(env, &f);
        let msg = send_indication(&[A::Peer(f.peer), A::Data(b"hi")], 0);
        // A 5-tuple without an allocation: up, unless every client is known to the kernel.
        let stranger = sa("10.0.0.3:50001");
        let unknown = frame(stranger, f.listener, &msg, CLIENT_MAC, mac);
        env.assert_pass(&unknown, Reason::NoAllocation);
        shield(env, SHIELD_ALL_CLIENTS_KNOWN, (0, 0), (0, 0));
        env.assert_drop(&unknown, Reason::SendNoAllocation);
        // Also one the kernel does not read to the end (an attribute it leaves to
        // userspace): userspace drops it before reading, for want of an allocation.
        let odd = send_indication(&[A::Peer(f.peer), A::Raw(0x8022, b"sw"), A::Data(b"x")], 0);
        env.assert_drop(
            &frame(stranger, f.listener, &odd, CLIENT_MAC, mac),
            Reason::SendNoAllocation,
        );
        // The allocation's own: to the peer as before, and an odd one still goes up.
        let (action, out) = env.run(&frame(f.client, f.listener, &msg, CLIENT_MAC, mac));
        assert_eq!(action, XDP_TX);
        assert_eq!(parse(&out).payload, b"hi");
        env.assert_pass(
            &frame(f.client, f.listener, &odd, CLIENT_MAC, mac),
            Reason::UnhandledAttribute,
        );
        // The same bytes to another port of this host are not ours to judge.
        env.assert_pass(
            &frame(stranger, sa("10.0.0.1:53"), &msg, CLIENT_MAC, mac),
            Reason::NoAllocation,
        );
    });
}

#[test]
fn what_cannot_be_stun_or_channel_data_is_dropped_at_the_listener() {
    in_netns(|env| {
        let f = v4();
        shield(env, 0, (0, 0), (0, 0));
        let mac = env.mac;
        let to_listener =
            |payload: &[u8]| frame(sa("10.0.0.7:1000"), f.listener, payload, CLIENT_MAC, mac);
        for junk in [
            &b""[..],
            b"\x00\x01\x00",
            b"\x80\x01\x00\x00 random bytes",
            b"\xc0\x00\x00\x00",
        ] {
            env.assert_drop(&to_listener(junk), Reason::Unparsable);
        }
        // Too short for a STUN header; the wrong magic cookie (RFC 3489 STUN).
        env.assert_drop(
            &to_listener(&stun(BINDING_REQUEST, COOKIE, 0)[..19]),
            Reason::Unparsable,
        );
        env.assert_drop(
            &to_listener(&stun(BINDING_REQUEST, [1, 2, 3, 4], 0)),
            Reason::Unparsable,
        );
        // A well-formed request goes up.
        env.assert_pass(
            &to_listener(&stun(BINDING_REQUEST, COOKIE, 8)),
            Reason::NotChannelData,
        );
        // The same port on another address is not ours to judge.
        let elsewhere = frame(
            sa("10.0.0.7:1000"),
            sa("10.0.0.2:3478"),
            b"\x80junk",
            CLIENT_MAC,
            mac,
        );
        env.assert_pass(&elsewhere, Reason::NotChannelData);
    });
}

#[test]
fn unauthenticated_requests_meet_the_source_and_global_buckets() {
    in_netns(|env| {
        let f = v4();
        shield(env, 0, (1, 3), (0, 0));
        let mac = env.mac;
        complete_allocation(env, &f);
        let request = stun(BINDING_REQUEST, COOKIE, 0);
        let from = |s: &str| frame(sa(s), f.listener, &request, CLIENT_MAC, mac);
        // The burst, then nothing; other ports of the address share its bucket.
        for _ in 0..3 {
            env.assert_pass(&from("10.0.0.7:1000"), Reason::NotChannelData);
        }
        env.assert_drop(&from("10.0.0.7:1001"), Reason::UnauthenticatedRate);
        // Another source has its own.
        env.assert_pass(&from("10.0.0.8:1000"), Reason::NotChannelData);
        // Indications are not requests.
        let indication = stun(0x0011, COOKIE, 0);
        env.assert_pass(
            &frame(
                sa("10.0.0.7:1000"),
                f.listener,
                &indication,
                CLIENT_MAC,
                mac,
            ),
            Reason::NotChannelData,
        );
        // A 5-tuple holding an allocation is never limited.
        for _ in 0..20 {
            env.assert_pass(
                &frame(f.client, f.listener, &request, CLIENT_MAC, mac),
                Reason::NotChannelData,
            );
        }

        // Global: many sources, each under its own rate, share 5.
        shield(env, 0, (0, 0), (1, 5));
        for n in 0..5 {
            env.assert_pass(&from(&format!("10.0.1.{n}:1000")), Reason::NotChannelData);
        }
        env.assert_drop(&from("10.0.1.99:1000"), Reason::UnauthenticatedRate);
        env.assert_pass(
            &frame(f.client, f.listener, &request, CLIENT_MAC, mac),
            Reason::NotChannelData,
        );
    });
}

#[test]
fn with_the_shield_off_nothing_is_dropped() {
    in_netns(|env| {
        let f = v4();
        let mac = env.mac;
        complete_allocation(env, &f);
        env.assert_pass(
            &frame(sa("10.0.0.7:1000"), f.relay, b"data", PEER_MAC, mac),
            Reason::NoPermission,
        );
        let (action, _) = env.run(&frame(
            sa("10.0.0.7:1000"),
            f.listener,
            b"\x80junk",
            CLIENT_MAC,
            mac,
        ));
        assert_eq!(action, XDP_PASS);
    });
}

/// Packets to a listener from a 5-tuple without an allocation: random bytes, and STUN
/// headers with random damage. Whatever the kernel drops as `unparsable`, the core
/// would not have answered either.
#[test]
fn what_the_kernel_calls_unparsable_the_core_never_answers() {
    in_netns(|env| {
        let f = v4();
        shield(env, 0, (0, 0), (0, 0));
        let mac = env.mac;
        let mut core = Core::new(f.relay.ip(), f.relay.ip());
        core.server.set_unauthenticated_limit(0, 0);
        core.server.set_unauthenticated_global_limit(0, 0);
        let stranger = sa("10.0.0.7:1000");
        let from = FiveTuple::new(stranger, f.listener, Transport::Udp);
        let header = (any::<u16>(), any::<[u8; 4]>(), 0usize..48).prop_map(|(t, c, extra)| {
            let cookie = if c[0] % 2 == 0 { COOKIE } else { c };
            stun(t & 0x3fff, cookie, extra)
        });
        let damaged =
            (header, any::<usize>(), any::<u8>(), 0usize..32).prop_map(|(mut m, at, byte, cut)| {
                let i = at % m.len();
                m[i] = byte;
                m.truncate(m.len().saturating_sub(cut % 4 * (cut / 4)));
                m
            });
        let payloads = prop_oneof![proptest::collection::vec(any::<u8>(), 0..64), damaged];
        let (env, core) = (RefCell::new(env), RefCell::new(&mut core));
        let mut dropped = 0u32;
        let dropped_ref = RefCell::new(&mut dropped);
        let config = Config {
            cases: 2_000,
            // Failures print their packet; there is no source file to persist them beside.
            failure_persistence: None,
            ..Config::default()
        };
        TestRunner::new(config)
            .run(&payloads, |payload| {
                let input = frame(stranger, f.listener, &payload, CLIENT_MAC, mac);
                let (action, _) = env.borrow_mut().run(&input);
                if action == XDP_DROP {
                    **dropped_ref.borrow_mut() += 1;
                    let mut out = vec![0u8; 2048];
                    let mut core = core.borrow_mut();
                    let answer =
                        core.server
                            .handle_client(Instant::now(), from, &payload, &mut out);
                    prop_assert!(
                        matches!(answer, ClientOutput::Nothing),
                        "the kernel dropped {payload:02x?}, the core answers it"
                    );
                } else {
                    prop_assert_eq!(action, XDP_PASS);
                }
                Ok(())
            })
            .unwrap();
        assert!(
            dropped > 100,
            "only {dropped} of the generated packets dropped"
        );
    });
}
