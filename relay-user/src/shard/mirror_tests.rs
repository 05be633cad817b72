//! What a shard's core commands leave in the XDP maps, without root or a loaded program:
//! a real core (the demo config) is driven through an allocation's life and every command
//! it emits is replayed, in order, into the in-memory map writer ([`FakeMaps`]), as
//! [`Kernel::apply`](super::Kernel::apply) replays them into the kernel's maps.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Instant,
};

use relay_common::{
    ALLOCATIONS_MAP, CHANNELS_MAP, CLIENTS_MAP, PEER_CHANNELS_MAP, PERMISSIONS_MAP, PUBLIC_IPS_MAP,
    RELAY_ADDRS_MAP,
};
use relay_proto::{
    auth::{PasswordAlgorithm, long_term_key},
    server::{ClientOutput, Command, FiveTuple, Server, Transport},
    stun::{
        ChannelNumber, Class, ErrorCode, Lifetime, Message, MessageWriter, Method, Nonce, Realm,
        TransactionId, Username, XorPeerAddress, XorRelayedAddress,
    },
};

use super::apply::{OUT_BYTES, tests::allocate_as};
use crate::xdp::{FakeMaps, XdpMaps};

/// Every map a UDP allocation, its permissions and channels write.
const MAPS: [&str; 7] = [
    ALLOCATIONS_MAP,
    RELAY_ADDRS_MAP,
    CLIENTS_MAP,
    PUBLIC_IPS_MAP,
    PERMISSIONS_MAP,
    CHANNELS_MAP,
    PEER_CHANNELS_MAP,
];

struct Shard {
    server: Server,
    password: String,
    maps: XdpMaps<FakeMaps>,
    now: Instant,
}

impl Shard {
    fn new() -> Self {
        let (config, password) = crate::cores::demo_config().unwrap();
        let now = Instant::now();
        Self {
            server: crate::cores::server(&config, now).unwrap(),
            password,
            maps: XdpMaps::with_writer(FakeMaps::default(), 1000),
            now,
        }
    }

    /// Replays what the core decided into the maps; the commands, to look at.
    fn replay(&mut self) -> Vec<Command> {
        let mut done = Vec::new();
        while let Some(cmd) = self.server.poll_command() {
            self.maps.apply(&cmd).expect("the fake maps refuse nothing");
            done.push(cmd);
        }
        done
    }

    /// An authenticated UDP allocation for `client`; its relayed address.
    fn allocate(&mut self, client: FiveTuple) -> SocketAddr {
        let user = ("demo", "relay.local", self.password.as_str());
        let reply = allocate_as(&mut self.server, user, client, self.now);
        let m = Message::parse(&reply).unwrap();
        assert!(m.attr::<ErrorCode>().is_none(), "the Allocate was refused");
        m.attr::<XorRelayedAddress>().unwrap().unwrap().0
    }

    /// A request of `method` from `client` signed as the demo user (after the 401 that
    /// brings the nonce), with what `attrs` adds; panics unless it succeeds.
    fn request(&mut self, client: FiveTuple, method: Method, attrs: &dyn Fn(&mut MessageWriter)) {
        let mut out = vec![0; OUT_BYTES];
        let mut req = [0u8; 512];
        let mut build = |txid: u8, sign: &dyn Fn(&mut MessageWriter<'_>)| {
            let id = TransactionId([txid; 12]);
            let mut w = MessageWriter::new(&mut req, Class::Request, method, id).unwrap();
            attrs(&mut w);
            sign(&mut w);
            let n = w.finish();
            req[..n].to_vec()
        };
        let first = build(1, &|_| {});
        let ClientOutput::Reply { len } = self
            .server
            .handle_client(self.now, client, &first, &mut out)
        else {
            panic!("no 401")
        };
        let nonce = Message::parse(&out[..len])
            .unwrap()
            .attr::<Nonce>()
            .unwrap()
            .unwrap()
            .0
            .to_owned();
        let key = long_term_key(
            PasswordAlgorithm::Md5,
            "demo",
            "relay.local",
            &self.password,
        );
        let signed = build(2, &|w| {
            w.attr(&Username("demo")).unwrap();
            w.attr(&Realm("relay.local")).unwrap();
            w.attr(&Nonce(&nonce)).unwrap();
            w.integrity_sha1(key.as_bytes()).unwrap();
        });
        let ClientOutput::Reply { len } = self
            .server
            .handle_client(self.now, client, &signed, &mut out)
        else {
            panic!("no answer to the {method:?}")
        };
        let answer = Message::parse(&out[..len]).unwrap();
        assert_eq!(
            answer.class(),
            Class::Success,
            "{method:?} refused: {:?}",
            answer.attr::<ErrorCode>()
        );
    }

    fn permit(&mut self, client: FiveTuple, peer: SocketAddr) {
        self.request(client, Method::CREATE_PERMISSION, &|w| {
            w.attr(&XorPeerAddress(peer)).unwrap();
        });
    }

    fn bind_channel(&mut self, client: FiveTuple, channel: u16, peer: SocketAddr) {
        self.request(client, Method::CHANNEL_BIND, &|w| {
            w.attr(&ChannelNumber(channel)).unwrap();
            w.attr(&XorPeerAddress(peer)).unwrap();
        });
    }

    fn delete(&mut self, client: FiveTuple) {
        self.request(client, Method::REFRESH, &|w| {
            w.attr(&Lifetime(0)).unwrap();
        });
    }

    fn count(&self, map: &str) -> usize {
        self.maps.writer().count(map)
    }

    /// `(map, entries)` of every map in [`MAPS`].
    fn counts(&self) -> Vec<(&'static str, usize)> {
        MAPS.iter().map(|m| (*m, self.count(m))).collect()
    }
}

fn client(port: u16) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        listener: SocketAddr::from((Ipv4Addr::LOCALHOST, 3478)),
        transport: Transport::Udp,
    }
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

#[test]
fn an_allocations_permission_and_channel_reach_the_maps_and_all_leave_with_it() {
    let mut s = Shard::new();
    let c = client(40000);
    let relay = s.allocate(c);
    let cmds = s.replay();
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::AllocationCreated { relay: r, .. } if *r == relay)),
        "{cmds:?}"
    );
    assert_eq!(s.count(ALLOCATIONS_MAP), 1);
    assert_eq!(s.count(CLIENTS_MAP), 1, "Send indications find the relay");
    assert_eq!(s.count(PUBLIC_IPS_MAP), 1, "hairpins are recognised");
    assert_eq!(s.count(PERMISSIONS_MAP), 0);

    s.permit(c, peer(5000));
    s.replay();
    assert_eq!(s.count(PERMISSIONS_MAP), 1);

    s.bind_channel(c, 0x4000, peer(5001));
    s.replay();
    assert_eq!(s.count(CHANNELS_MAP), 1, "ChannelData out");
    assert_eq!(s.count(PEER_CHANNELS_MAP), 1, "ChannelData in");
    // A channel also needs a permission for its peer's IP: the one above already covers
    // it (same IP, another port), so still one entry.
    assert_eq!(s.count(PERMISSIONS_MAP), 1);

    s.delete(c);
    let cmds = s.replay();
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::AllocationRemoved { relay: r, .. } if *r == relay)),
        "{cmds:?}"
    );
    assert!(
        s.counts().iter().all(|(_, n)| *n == 0),
        "entries left behind: {:?}",
        s.counts()
    );
}

#[test]
fn deleting_one_allocation_leaves_the_others_entries_in_place() {
    let mut s = Shard::new();
    let (a, b) = (client(40001), client(40002));
    s.allocate(a);
    s.allocate(b);
    s.replay();
    s.bind_channel(a, 0x4001, peer(6000));
    s.bind_channel(b, 0x4001, peer(6000));
    s.replay();
    assert_eq!(s.count(ALLOCATIONS_MAP), 2);
    assert_eq!(s.count(CHANNELS_MAP), 2, "one per client's channel");
    let both = s.counts();

    s.delete(a);
    s.replay();
    assert_eq!(s.count(ALLOCATIONS_MAP), 1);
    assert_eq!(s.count(CLIENTS_MAP), 1);
    assert_eq!(s.count(CHANNELS_MAP), 1);
    assert_eq!(s.count(PEER_CHANNELS_MAP), 1);
    assert_eq!(s.count(PERMISSIONS_MAP), 1);
    // Both relayed addresses share the relay's one public IP: it stays while b holds it.
    assert_eq!(s.count(PUBLIC_IPS_MAP), 1, "before: {both:?}");
}

#[test]
fn an_allocation_that_expires_takes_its_entries_out_of_the_maps() {
    let mut s = Shard::new();
    let c = client(40003);
    s.allocate(c);
    s.permit(c, peer(7000));
    s.replay();
    assert_eq!(s.count(ALLOCATIONS_MAP), 1);
    assert_eq!(s.count(PERMISSIONS_MAP), 1);
    // Past the default lifetime (600 s) and the permission's (300 s): the core's timers
    // end both without a word from the client.
    let later = s.now + std::time::Duration::from_secs(3600);
    s.server.handle_timeout(later);
    s.replay();
    assert!(
        s.counts().iter().all(|(_, n)| *n == 0),
        "entries left behind: {:?}",
        s.counts()
    );
}
