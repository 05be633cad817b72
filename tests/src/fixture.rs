//! Shared setup of the end-to-end tests in the deployment of CONTEXT.md: the relay's config
//! for the topology, the relay and the media host's echo peer started in it, the XDP pass
//! programs a kernel-path test needs, the clients, and uclient runs checked for loss.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    ops::RangeInclusive,
    time::{Duration, Instant},
};

use relay_user::{config::AttachMode, xdp::XdpPath};

use crate::{
    Addresses, Netns, Topology, TopologyOptions,
    certs::{Leaf, TestCa},
    coturn::{PeerProcess, Uclient, UclientRun},
    relay::RelayProcess,
    stream_client::{StreamClient, TlsStream, connect_tcp, connect_tls},
    turn_client::TurnClient,
};

pub const REALM: &str = "example.org";
/// The one long-term user of every config.
pub const USER: &str = "alice";
pub const PASSWORD: &str = "pw";
/// The relay ports on the external NIC.
pub const RELAY_PORTS: RangeInclusive<u16> = 24000..=29999;
/// The internal network of the media server, allowed as peers.
pub const MEDIA_SUBNET: &str = "192.0.2.0/24";
/// Where `turnutils_peer` (an echo server) listens on the media host.
pub const PEER_PORT: u16 = 3480;
/// Hard limit for one `turnutils_uclient` run.
pub const UCLIENT_TIMEOUT: Duration = Duration::from_secs(40);
/// Connect and read timeout of the stream clients.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the relay host may take to resolve its next hops.
const NEIGHBOUR_WAIT: Duration = Duration::from_secs(5);
/// The relay's `[tls]` files, written beside its config by [`start_tls_relay`].
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";

/// One `[[listen]]` table.
#[derive(Clone, Debug)]
pub struct Listen {
    pub address: SocketAddr,
    /// Empty: the relay's default (UDP).
    pub transports: &'static [&'static str],
}

impl Listen {
    pub fn new(ip: impl Into<IpAddr>, port: u16, transports: &'static [&'static str]) -> Self {
        Self {
            address: SocketAddr::new(ip.into(), port),
            transports,
        }
    }

    /// `port` on both NICs of the relay host, the internal one first.
    pub fn both_nics(a: &Addresses, port: u16, transports: &'static [&'static str]) -> Vec<Self> {
        vec![
            Self::new(a.relay_internal, port, transports),
            Self::new(a.relay_external, port, transports),
        ]
    }
}

/// The relay's config in the deployment: realm, listeners, relay ports on the external NIC
/// with the NAT address advertised, [`USER`], peers; `sections` holds the test's own
/// tables. `Display` writes the TOML.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub listen: Vec<Listen>,
    /// `[relay] address`: where relay ports bind.
    pub relay_address: Ipv4Addr,
    /// `[relay] public_address`: what XOR-RELAYED-ADDRESS says.
    pub public_address: Ipv4Addr,
    /// `[relay] address6`.
    pub relay6: Option<Ipv6Addr>,
    /// [`USER`]'s password.
    pub password: String,
    pub shared_secrets: Vec<String>,
    /// `[peers] allow`; empty: no `[peers]` table, only the default policy.
    pub peers_allow: Vec<String>,
    /// A `[tls]` table naming the files [`start_tls_relay`] writes.
    pub tls: bool,
    /// Further tables, verbatim TOML.
    pub sections: String,
}

impl RelayConfig {
    /// UDP on 3478 of both NICs, [`USER`] with [`PASSWORD`], the media subnet allowed as
    /// peers.
    pub fn deployment(a: &Addresses) -> Self {
        Self {
            listen: Listen::both_nics(a, 3478, &[]),
            relay_address: a.relay_external,
            public_address: a.public,
            relay6: None,
            password: PASSWORD.to_owned(),
            shared_secrets: Vec::new(),
            peers_allow: vec![MEDIA_SUBNET.to_owned()],
            tls: false,
            sections: String::new(),
        }
    }
}

impl fmt::Display for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "realm = \"{REALM}\"")?;
        for l in &self.listen {
            writeln!(f, "\n[[listen]]\naddress = \"{}\"", l.address)?;
            if !l.transports.is_empty() {
                writeln!(f, "transports = {}", toml_list(l.transports))?;
            }
        }
        writeln!(f, "\n[relay]")?;
        writeln!(f, "address = \"{}\"", self.relay_address)?;
        writeln!(f, "public_address = \"{}\"", self.public_address)?;
        if let Some(v6) = self.relay6 {
            writeln!(f, "address6 = \"{v6}\"")?;
        }
        writeln!(
            f,
            "ports = \"{}-{}\"",
            RELAY_PORTS.start(),
            RELAY_PORTS.end()
        )?;
        writeln!(f, "\n[auth]\nusers = {{ {USER} = \"{}\" }}", self.password)?;
        if !self.shared_secrets.is_empty() {
            writeln!(f, "shared_secrets = {}", toml_list(&self.shared_secrets))?;
        }
        if !self.peers_allow.is_empty() {
            writeln!(f, "\n[peers]\nallow = {}", toml_list(&self.peers_allow))?;
        }
        if self.tls {
            writeln!(
                f,
                "\n[tls]\ncertificate = \"{CERT_FILE}\"\nprivate_key = \"{KEY_FILE}\""
            )?;
        }
        write!(f, "\n{}", self.sections)
    }
}

/// A TOML array of strings: `["a", "b"]`.
pub fn toml_list(items: &[impl AsRef<str>]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.as_ref()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// `relay serve` in `ns` with `config`, running.
pub fn start_relay(ns: &Netns, config: &str) -> RelayProcess {
    RelayProcess::start(ns, config).unwrap_or_else(|e| panic!("relay did not start: {e}"))
}

/// Like [`start_relay`], with `leaf` as the certificate of a config with `tls` set.
pub fn start_tls_relay(ns: &Netns, config: &str, leaf: &Leaf) -> RelayProcess {
    RelayProcess::start_with_files(
        ns,
        config,
        &[(CERT_FILE, &leaf.chain_pem), (KEY_FILE, &leaf.key_pem)],
    )
    .unwrap_or_else(|e| panic!("relay did not start: {e}"))
}

/// The topology with the relay running in it, and what else a test asked for. Field order
/// is drop order: processes, then the pass programs, then the namespaces.
pub struct Deployment {
    /// `turnutils_peer` on the media host, after [`with_media_peer`](Self::with_media_peer).
    pub peer: Option<PeerProcess>,
    pub relay: RelayProcess,
    /// The pass programs of [`start_kernel_path`](Self::start_kernel_path).
    pub pass: Vec<XdpPath>,
    /// The CA that signed the relay's certificate, after [`start_tls`](Self::start_tls).
    pub ca: Option<TestCa>,
    pub topo: Topology,
}

impl Deployment {
    /// Builds the topology and runs `start` on it, which may prepare the relay host before
    /// it starts the relay.
    pub fn start(opts: TopologyOptions, start: impl FnOnce(&Topology) -> RelayProcess) -> Self {
        let topo = Topology::new(opts).expect("build topology");
        let relay = start(&topo);
        Self {
            peer: None,
            relay,
            pass: Vec::new(),
            ca: None,
            topo,
        }
    }

    /// Like [`start`](Self::start), ready for the relay's XDP program: veth delivers frames
    /// that program redirects (or sends back) into a link only when the link's other end
    /// runs an XDP program too, so the firewall's and the media server's ends get one that
    /// passes everything; and once the relay runs, its next hops are resolved.
    pub fn start_kernel_path(
        opts: TopologyOptions,
        start: impl FnOnce(&Topology) -> RelayProcess,
    ) -> Self {
        let topo = Topology::new(opts).expect("build topology");
        let pass = vec![
            attach_pass(&topo.firewall, topo.firewall_inside_if()),
            attach_pass(&topo.media, topo.media_if()),
        ];
        let relay = start(&topo);
        warm_neighbours(&topo);
        Self {
            peer: None,
            relay,
            pass,
            ca: None,
            topo,
        }
    }

    /// Like [`start`](Self::start) with a certificate for the public address, signed by a
    /// fresh test CA, for `start` to hand to [`start_tls_relay`].
    pub fn start_tls(
        opts: TopologyOptions,
        start: impl FnOnce(&Topology, &Leaf) -> RelayProcess,
    ) -> Self {
        let topo = Topology::new(opts).expect("build topology");
        let ca = TestCa::new("relay test CA");
        let leaf = ca.leaf("relay-a", &[&topo.addrs.public.to_string()]);
        let relay = start(&topo, &leaf);
        Self {
            peer: None,
            relay,
            pass: Vec::new(),
            ca: Some(ca),
            topo,
        }
    }

    /// Starts `turnutils_peer` (an echo server) on the media host.
    pub fn with_media_peer(mut self) -> Self {
        let a = self.topo.addrs;
        self.peer = Some(
            PeerProcess::start(&self.topo.media, a.media.into(), PEER_PORT)
                .unwrap_or_else(|e| panic!("turnutils_peer: {e}")),
        );
        self
    }

    pub fn addrs(&self) -> Addresses {
        self.topo.addrs
    }

    /// The NAT address's TURN port, as internet clients reach it.
    pub fn server(&self) -> SocketAddr {
        (self.topo.addrs.public, 3478).into()
    }

    /// The media host's echo peer.
    pub fn media_peer(&self) -> SocketAddr {
        (self.topo.addrs.media, PEER_PORT).into()
    }

    /// uclient as an internet client of the NAT address, [`USER`], with the media host's
    /// echo peer as its peer.
    pub fn uclient(&self) -> Uclient {
        let mut u = Uclient::new(self.topo.addrs.public.into());
        u.user = Some(USER.into());
        u.password = Some(PASSWORD.into());
        u.peer = Some(self.media_peer().ip());
        u.peer_port = Some(PEER_PORT);
        u
    }

    /// Runs `u` in `ns` (at most [`UCLIENT_TIMEOUT`]).
    pub fn run(&self, ns: &Netns, u: &Uclient) -> UclientRun {
        let run = u
            .run(ns, UCLIENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("turnutils_uclient: {e}"));
        // One line per run, so a passing test's output still shows what happened.
        eprintln!("{}: {:?}", run.command, run.summary);
        run
    }

    /// Runs `u` in `ns` and checks it relayed without loss: it exited cleanly, and every
    /// message of every client came back.
    pub fn run_lossless(&self, ns: &Netns, u: &Uclient) -> UclientRun {
        let run = self.run(ns, u);
        let expected = u64::from(u.clients * u.messages);
        let ctx = || self.context(&run);
        assert!(
            !run.timed_out,
            "uclient still running after {UCLIENT_TIMEOUT:?}\n{}",
            ctx()
        );
        assert!(run.success(), "uclient failed\n{}", ctx());
        let s = &run.summary;
        assert_eq!(s.send_msgs, Some(expected), "messages sent\n{}", ctx());
        assert_eq!(s.recv_msgs, Some(expected), "messages received\n{}", ctx());
        assert_eq!(s.lost_packets, Some(0), "lost packets\n{}", ctx());
        run
    }

    /// For assertion messages: uclient's command and output, and the relay log.
    pub fn context(&self, run: &UclientRun) -> String {
        self.with_log(run.describe())
    }

    /// For assertion messages: `what`, then the relay log (and why the relay stopped, if
    /// it did).
    pub fn with_log(&self, what: impl fmt::Display) -> String {
        format!(
            "{what}\n{}----- relay log -----\n{}",
            self.relay
                .unexpected_stop()
                .map(|s| format!("NOTE: {s}\n"))
                .unwrap_or_default(),
            self.relay.logs()
        )
    }

    /// A plain TCP client of `port` on the NAT address, connected from the client host.
    pub fn tcp_client(&self, port: u16) -> StreamClient<TcpStream> {
        let server = SocketAddr::from((self.topo.addrs.public, port));
        let s = self
            .topo
            .client
            .run(move || connect_tcp(server, STREAM_TIMEOUT))
            .expect("enter namespace")
            .unwrap_or_else(|e| panic!("connect {server}: {e}"));
        StreamClient::new(s, USER, PASSWORD)
    }

    /// A TLS client of 443 on the NAT address, verifying the chain against the test CA.
    pub fn tls_client(&self) -> StreamClient<TlsStream> {
        let public = self.topo.addrs.public;
        let roots = self
            .ca
            .as_ref()
            .expect("a relay started with `start_tls`")
            .roots();
        let s = self
            .topo
            .client
            .run(move || connect_tls((public, 443).into(), roots, public.into(), STREAM_TIMEOUT))
            .expect("enter namespace")
            .unwrap_or_else(|e| panic!("TLS to {public}:443: {e}"));
        StreamClient::new(s, USER, PASSWORD)
    }
}

/// A TURN-over-UDP client of `server` as [`USER`], its socket in `ns`.
pub fn turn_client(ns: &Netns, server: SocketAddr, password: &str) -> TurnClient {
    let password = password.to_owned();
    ns.run(move || TurnClient::new(server, USER, &password))
        .expect("enter namespace")
        .expect("bind client socket")
}

/// This crate's XDP program with empty maps on `ifname` in `ns`: it passes every frame, and
/// its presence lets the veth end receive what the relay's program redirects into it.
pub fn attach_pass(ns: &Netns, ifname: String) -> XdpPath {
    ns.run(move || {
        let mut xdp = XdpPath::load_with(16).expect("load XDP program (run as root)");
        xdp.attach(&ifname, AttachMode::Native)
            .unwrap_or_else(|e| panic!("attach pass program to {ifname}: {e}"));
        xdp
    })
    .expect("enter namespace")
}

/// Resolves the relay host's next hops (the firewall, the media server) before media
/// flows: the relay's program passes a packet up when the neighbour entry is missing, and
/// kernel-path tests want none passed up.
pub fn warm_neighbours(topo: &Topology) {
    let a = topo.addrs;
    for (ip, dev) in [
        (a.firewall_inside, &topo.relay_external_if),
        (a.media, &topo.relay_internal_if),
    ] {
        send_udp(&topo.relay, (ip, 9).into(), b"arp", 1);
        wait_until(
            &format!("a neighbour entry for {ip} on {dev}"),
            NEIGHBOUR_WAIT,
            || {
                topo.relay
                    .ip(&["neigh", "show", &ip.to_string(), "dev", dev])
                    .unwrap_or_default()
                    .contains("lladdr")
            },
        );
    }
}

/// Sends `payload` `count` times to `to` from an ephemeral socket in `ns`.
pub fn send_udp(ns: &Netns, to: SocketAddr, payload: &'static [u8], count: u64) {
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..count {
            s.send_to(payload, to).expect("send");
        }
    })
    .expect("enter namespace");
}

/// Polls `f` until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_deployment_config() {
        let a = Addresses::default();
        let mut listen = Listen::both_nics(&a, 3478, &[]);
        listen.push(Listen::new(a.relay_external, 443, &["tcp", "tls"]));
        let config = RelayConfig {
            listen,
            relay6: Some("2001:db8::50".parse().unwrap()),
            shared_secrets: vec!["s1".into(), "s2".into()],
            tls: true,
            sections: "[xdp]\nmode = \"off\"\n".into(),
            ..RelayConfig::deployment(&a)
        };
        assert_eq!(
            config.to_string(),
            r#"realm = "example.org"

[[listen]]
address = "192.0.2.50:3478"

[[listen]]
address = "198.51.100.50:3478"

[[listen]]
address = "198.51.100.50:443"
transports = ["tcp", "tls"]

[relay]
address = "198.51.100.50"
public_address = "203.0.113.50"
address6 = "2001:db8::50"
ports = "24000-29999"

[auth]
users = { alice = "pw" }
shared_secrets = ["s1", "s2"]

[peers]
allow = ["192.0.2.0/24"]

[tls]
certificate = "cert.pem"
private_key = "key.pem"

[xdp]
mode = "off"
"#
        );
        let bare = RelayConfig {
            peers_allow: Vec::new(),
            ..RelayConfig::deployment(&a)
        }
        .to_string();
        assert!(
            !bare.contains("[peers]") && !bare.contains("[tls]"),
            "{bare}"
        );
    }
}
