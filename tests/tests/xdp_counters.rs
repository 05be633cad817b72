//! The kernel program, attached natively to the relay host's two veth NICs inside the
//! namespace topology, counts the UDP that reaches each NIC.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use relay_tests::{Topology, TopologyOptions, fixture::send_udp};
use relay_user::{config::AttachMode, xdp::XdpPath};

const PACKETS: u64 = 50;
const PAYLOAD: &[u8] = &[0x5a; 100];
/// How long the counters may take to show every datagram sent.
const COUNT_WAIT: Duration = Duration::from_secs(10);

#[test]
fn xdp_counts_packets_on_both_nics() {
    let topo = Topology::new(TopologyOptions::default()).expect("build topology");
    let (ext, int) = (
        topo.relay_external_if.clone(),
        topo.relay_internal_if.clone(),
    );
    let xdp = topo
        .relay
        .run(move || {
            let mut xdp = XdpPath::load().expect("load XDP program");
            let e = xdp
                .attach(&ext, AttachMode::Native)
                .expect("attach external")
                .ifindex;
            let i = xdp
                .attach(&int, AttachMode::Native)
                .expect("attach internal")
                .ifindex;
            assert!(xdp.attached().iter().all(|a| a.mode == "native"));
            (xdp, e, i)
        })
        .expect("enter relay namespace");
    let (xdp, ext_index, int_index) = xdp;

    // Internet client → public NAT address → firewall → external NIC.
    send_udp(
        &topo.client,
        (topo.addrs.public, 3478).into(),
        PAYLOAD,
        PACKETS,
    );
    // Media server → internal NIC, twice as many so the two counts cannot be confused.
    send_udp(
        &topo.media,
        (topo.addrs.relay_internal, 3478).into(),
        PAYLOAD,
        2 * PACKETS,
    );
    // `send_to` returns once a datagram is queued: veth hands it to the receiving NIC's
    // NAPI poll, and the firewall forwards it after resolving the relay's address, so
    // the program may count it later (much later on a busy host). Wait for every UDP
    // frame to be counted, then check nothing else was.
    let get = |ifindex| {
        xdp.iface_counters()
            .expect("read counters")
            .iter()
            .find(|(i, _)| *i == ifindex)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    };
    let deadline = Instant::now() + COUNT_WAIT;
    let (ext_c, int_c) = loop {
        let (e, i) = (get(ext_index), get(int_index));
        if (e.packets >= PACKETS && i.packets >= 2 * PACKETS) || Instant::now() >= deadline {
            break (e, i);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // ARP and neighbour discovery add a few frames; the UDP must all be there.
    assert!(
        ext_c.packets >= PACKETS && ext_c.packets < PACKETS + 10,
        "{ext_c:?}"
    );
    assert!(
        int_c.packets >= 2 * PACKETS && int_c.packets < 2 * PACKETS + 10,
        "{int_c:?}"
    );
    // Each UDP frame: 14 Ethernet + 20 IPv4 + 8 UDP + payload.
    let frame = (14 + 20 + 8 + PAYLOAD.len()) as u64;
    assert!(ext_c.bytes >= PACKETS * frame, "{ext_c:?}");
    assert!(int_c.bytes >= 2 * PACKETS * frame, "{int_c:?}");
}

#[test]
fn static_nat_reaches_relay_and_reflection_switch_works() {
    for reflection in [true, false] {
        let topo = Topology::new(TopologyOptions {
            nat_reflection: reflection,
        })
        .expect("topology");
        let a = topo.addrs;
        // A socket on the relay's external address sees the client's own address (static
        // NAT only rewrites the destination inbound).
        let relay_sock = topo
            .relay
            .run(move || {
                let s = UdpSocket::bind((a.relay_external, 3478)).expect("bind relay");
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s
            })
            .unwrap();
        send_udp(&topo.client, (a.public, 3478).into(), PAYLOAD, 1);
        let mut buf = [0u8; 256];
        let (_, from) = relay_sock
            .recv_from(&mut buf)
            .expect("client packet through NAT");
        assert_eq!(from.ip(), std::net::IpAddr::V4(a.client));

        // The relay host sending to its own public address (the hairpin a TURN relay
        // faces) only comes back with NAT reflection, then seemingly from the public IP.
        topo.relay
            .run(move || {
                let s = UdpSocket::bind((a.relay_external, 0)).expect("bind");
                s.send_to(b"hairpin", (a.public, 3478)).expect("send");
            })
            .unwrap();
        let got = relay_sock.recv_from(&mut buf);
        if reflection {
            let (_, from) = got.expect("reflected packet");
            assert_eq!(from.ip(), std::net::IpAddr::V4(a.public));
        } else {
            assert!(
                got.is_err(),
                "reflection is off, yet the packet arrived: {got:?}"
            );
        }
    }
}
