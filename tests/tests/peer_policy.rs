//! The peer policy end to end in the deployment of CONTEXT.md: what a credential holder can
//! reach inside the internal network through the relay.
//!
//! - REST users (browsers) get their own `allow` list (`[peers.rest]`) whose entries may
//!   name a protocol and ports: the media server's RTP range, not its sshd. The static user
//!   (the media server's own account) keeps every port. Checked with the XDP fast path on
//!   (the kernel forwards Send indications without looking at the port, so it must not be
//!   handed them for a port-limited permission) and off.
//! - Every address the relay host's kernel delivers locally is refused as a peer, not only
//!   the configured listeners: the internal NIC when it is no listener, and an address
//!   added while the relay runs.
//!
//! Needs root and `target/debug/relay` (`cargo build -p relay-user`).

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use relay_proto::{auth::rest, stun::AddressFamily};
use relay_tests::{
    Netns, Topology, TopologyOptions,
    fixture::{Deployment, Listen, PASSWORD, RelayConfig, start_relay, turn_client},
    turn_client::TurnClient,
};

const SECRET: &str = "browser-secret";
/// The media server's RTP range, the only ports REST users may reach.
const RTP: (u16, u16) = (10000, 20000);
/// A port inside [`RTP`], and one outside it (sshd).
const RTP_PORT: u16 = 15000;
const SSH_PORT: u16 = 22;
const RECV: Duration = Duration::from_secs(3);
/// How long the relay may take to see an address added to its host.
const LOCAL_ROUTE_WAIT: Duration = Duration::from_secs(5);
/// The relay's IPv6 address on the external NIC, and a second one added while it runs.
const RELAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x50);
const SECONDARY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x77);

/// A TURN REST username valid for an hour, and its password under [`SECRET`].
fn rest_credentials() -> (String, String) {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let user = format!("{expiry}:browser");
    let password = rest::password(SECRET.as_bytes(), &user).as_str().to_owned();
    (user, password)
}

fn rest_client(env: &Deployment) -> TurnClient {
    let (user, password) = rest_credentials();
    let server = env.server();
    env.topo
        .client
        .run(move || TurnClient::new(server, &user, &password))
        .expect("enter namespace")
        .expect("bind client socket")
}

/// A UDP socket on `port` of the media server, for what the relay delivers there.
fn media_socket(topo: &Topology, port: u16) -> UdpSocket {
    let at = SocketAddr::new(topo.addrs.media.into(), port);
    let s = topo
        .media
        .run(move || UdpSocket::bind(at))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("bind {at}: {e}"));
    s.set_read_timeout(Some(RECV)).expect("timeout");
    s
}

/// The next datagram on `s` within [`RECV`], or `None`.
fn recv(s: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

/// What is already queued on `s`, without waiting.
fn queued(s: &UdpSocket) -> Option<Vec<u8>> {
    s.set_nonblocking(true).expect("nonblocking");
    let got = recv(s);
    s.set_nonblocking(false).expect("blocking");
    got
}

fn xdp_sections(topo: &Topology, mode: &str) -> String {
    format!(
        "[xdp]\ninterfaces = [\"{}\", \"{}\"]\nmode = \"{mode}\"\n",
        topo.relay_external_if, topo.relay_internal_if
    )
}

/// The media server allowed whole for the static user, only its RTP range over UDP for
/// REST users.
fn rest_config(topo: &Topology, xdp: &str) -> String {
    RelayConfig {
        shared_secrets: vec![SECRET.to_owned()],
        peers_allow: vec![format!("{}/32", topo.addrs.media)],
        sections: format!(
            "[peers.rest]\nallow = [\"{}/32 udp {}-{}\"]\n\n{}",
            topo.addrs.media,
            RTP.0,
            RTP.1,
            xdp_sections(topo, xdp)
        ),
        ..RelayConfig::deployment(&topo.addrs)
    }
    .to_string()
}

fn rest_users_reach_only_allowed_ports(xdp: &str) {
    let env = if xdp == "off" {
        Deployment::start(TopologyOptions::default(), |topo| {
            start_relay(&topo.relay, &rest_config(topo, xdp))
        })
    } else {
        Deployment::start_kernel_path(TopologyOptions::default(), |topo| {
            start_relay(&topo.relay, &rest_config(topo, xdp))
        })
    };
    let media: IpAddr = env.addrs().media.into();
    let (rtp, ssh) = (
        SocketAddr::new(media, RTP_PORT),
        SocketAddr::new(media, SSH_PORT),
    );
    let rtp_sock = media_socket(&env.topo, RTP_PORT);
    let ssh_sock = media_socket(&env.topo, SSH_PORT);

    // The browser: a permission for the media server (some port of it is allowed), its
    // RTP port by channel and by Send indication, but neither way to sshd.
    let mut browser = rest_client(&env);
    browser.allocate().expect("REST allocate");
    browser
        .create_permission(&[rtp])
        .unwrap_or_else(|e| panic!("{}", env.with_log(format!("CreatePermission: {e}"))));
    browser
        .channel_bind(0x4000, rtp)
        .unwrap_or_else(|e| panic!("{}", env.with_log(format!("ChannelBind to RTP: {e}"))));
    let refused = browser.channel_bind(0x4001, ssh);
    assert_eq!(
        refused.as_ref().err().and_then(|e| e.code()),
        Some(403),
        "{}",
        env.with_log(format!(
            "a REST user's ChannelBind to {ssh} must be refused, got {refused:?}"
        ))
    );
    browser.send_indication(ssh, b"ssh via send").expect("send");
    browser.send_indication(rtp, b"rtp via send").expect("send");
    assert_eq!(
        recv(&rtp_sock).as_deref(),
        Some(&b"rtp via send"[..]),
        "{}",
        env.with_log("the Send indication to the RTP port did not arrive")
    );
    // Both indications took the same path in order (up to userspace: the permission is
    // port-limited); one leaking through the kernel would have arrived first.
    assert_eq!(
        queued(&ssh_sock),
        None,
        "{}",
        env.with_log("a REST user's Send indication reached sshd")
    );
    browser
        .send_channel_data(0x4000, b"rtp via channel")
        .expect("send");
    assert_eq!(
        recv(&rtp_sock).as_deref(),
        Some(&b"rtp via channel"[..]),
        "{}",
        env.with_log("ChannelData to the RTP port did not arrive")
    );
    // The media server answers from its RTP port, to where the data came from (the relay
    // socket on the external NIC; the NAT address is for internet clients).
    let relayed = browser.relayed_v4().expect("relayed address");
    let bind = SocketAddr::new(env.addrs().relay_external.into(), relayed.port());
    rtp_sock.send_to(b"rtp back", bind).expect("send");
    let back = browser
        .recv_data(RECV)
        .unwrap_or_else(|e| panic!("{}", env.with_log(format!("no data from the peer: {e}"))));
    assert_eq!(back.data, b"rtp back");
    assert_eq!(queued(&ssh_sock), None, "nothing reached sshd");

    // The static user (the media server's account) reaches every port.
    let mut server_user = turn_client(&env.topo.client, env.server(), PASSWORD);
    server_user.allocate().expect("allocate");
    server_user.channel_bind(0x4001, ssh).unwrap_or_else(|e| {
        panic!(
            "{}",
            env.with_log(format!("static user's ChannelBind: {e}"))
        )
    });
    server_user
        .send_indication(ssh, b"admin via send")
        .expect("send");
    assert_eq!(recv(&ssh_sock).as_deref(), Some(&b"admin via send"[..]));
    server_user
        .send_channel_data(0x4001, b"admin via channel")
        .expect("send");
    assert_eq!(recv(&ssh_sock).as_deref(), Some(&b"admin via channel"[..]));
}

#[test]
fn rest_users_reach_only_allowed_ports_xdp_native() {
    rest_users_reach_only_allowed_ports("native");
}

#[test]
fn rest_users_reach_only_allowed_ports_xdp_off() {
    rest_users_reach_only_allowed_ports("off");
}

/// CreatePermission for `peer` until it answers `want` (a code, or `None` for success),
/// within [`LOCAL_ROUTE_WAIT`].
fn wait_for_permission_answer(
    env: &Deployment,
    c: &mut TurnClient,
    peer: SocketAddr,
    want: Option<u16>,
) {
    let deadline = Instant::now() + LOCAL_ROUTE_WAIT;
    loop {
        let got = c.create_permission(&[peer]).err().map(|e| e.code());
        let got = got.map(|c| c.unwrap_or(0));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            env.with_log(format!(
                "CreatePermission for {peer}: wanted {want:?}, still {got:?} after {LOCAL_ROUTE_WAIT:?}"
            ))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `[peers] allow` covers the internal network, which holds the relay host's internal NIC
/// (not a listener here) and, later, a secondary address: both are the relay host, whose
/// services (sshd, an admin API on a wildcard) no client may reach; the media server stays
/// reachable. Likewise an IPv6 address added to the external NIC while the relay runs, and
/// a non-relay port of the IPv6 relay address.
#[test]
fn every_address_of_the_relay_host_is_refused() {
    let env = Deployment::start(TopologyOptions::default(), |topo| {
        add_address(
            &topo.relay,
            &format!("{RELAY6}/64"),
            &topo.relay_external_if,
        );
        let config = RelayConfig {
            listen: vec![Listen::new(topo.addrs.relay_external, 3478, &[])],
            relay6: Some(RELAY6),
            sections: "[xdp]\nmode = \"off\"\n".into(),
            ..RelayConfig::deployment(&topo.addrs)
        };
        start_relay(&topo.relay, &config.to_string())
    });
    let a = env.addrs();
    let mut c = turn_client(&env.topo.client, env.server(), PASSWORD);
    c.allocate().expect("allocate");
    c.create_permission(&[SocketAddr::new(a.media.into(), 5000)])
        .unwrap_or_else(|e| panic!("{}", env.with_log(format!("media server: {e}"))));

    let internal = SocketAddr::new(a.relay_internal.into(), 22);
    let refused = c.create_permission(&[internal]);
    assert_eq!(
        refused.as_ref().err().and_then(|e| e.code()),
        Some(403),
        "{}",
        env.with_log(format!(
            "the relay host's internal NIC {internal} must be refused, got {refused:?}"
        ))
    );

    // Free now; then the relay host takes it.
    let secondary = SocketAddr::new("192.0.2.77".parse().unwrap(), 22);
    wait_for_permission_answer(&env, &mut c, secondary, None);
    add_address(
        &env.topo.relay,
        "192.0.2.77/24",
        &env.topo.relay_internal_if,
    );
    wait_for_permission_answer(&env, &mut c, secondary, Some(403));

    // The same for IPv6 (a secondary or SLAAC address of the external NIC's prefix).
    let mut c6 = turn_client(&env.topo.client, env.server(), PASSWORD);
    c6.allocate_with(Some(AddressFamily::V6), None)
        .unwrap_or_else(|e| panic!("{}", env.with_log(format!("IPv6 allocation: {e}"))));
    let secondary6 = SocketAddr::new(IpAddr::V6(SECONDARY6), 22);
    let own6 = SocketAddr::new(IpAddr::V6(RELAY6), 22);
    wait_for_permission_answer(&env, &mut c6, secondary6, None);
    add_address(
        &env.topo.relay,
        &format!("{SECONDARY6}/64"),
        &env.topo.relay_external_if,
    );
    wait_for_permission_answer(&env, &mut c6, secondary6, Some(403));
    let r = c6.channel_bind(0x4000, own6);
    assert_eq!(
        r.as_ref().err().and_then(|e| e.code()),
        Some(403),
        "{}",
        env.with_log(format!("sshd on the IPv6 relay address {own6}: {r:?}"))
    );
    assert!(
        !env.relay.logs().contains("panicked"),
        "{}",
        env.with_log("the relay panicked")
    );
    c.create_permission(&[SocketAddr::new(a.media.into(), 5000)])
        .unwrap_or_else(|e| panic!("{}", env.with_log(format!("media server afterwards: {e}"))));
}

/// `ip addr add CIDR dev DEV` (IPv6 without duplicate address detection: usable at once).
fn add_address(ns: &Netns, cidr: &str, dev: &str) {
    let mut args = vec!["addr", "add", cidr, "dev", dev];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ns.ip(&args)
        .unwrap_or_else(|e| panic!("ip addr add {cidr} dev {dev}: {e}"));
}
