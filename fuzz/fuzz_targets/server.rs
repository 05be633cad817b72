//! Drives the TURN server with a sequence of client packets, peer datagrams, signed requests
//! (so the authenticated paths are reached), clock jumps, data-path notifications and
//! operators' disconnects; checks
//! that nothing panics and that the command stream stays consistent with the table.

#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relay_proto::auth::{CredentialStore, NonceKey, PasswordAlgorithm as KeyAlg, long_term_key};
use relay_proto::policy::PeerPolicy;
use relay_proto::server::{
    ClientOutput, Command, FiveTuple, PeerOutput, RelayAddr, Server, ServerConfig, Transport,
};
use relay_proto::stun::*;

const REALM: &str = "fuzz.example";
const USER: &str = "alice";
const PASSWORD: &str = "pw";

/// Cursor over the fuzz input; running dry yields zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8().unwrap_or(0), self.u8().unwrap_or(0)])
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn tuple(i: u8) -> FiveTuple {
    let transport = if i & 4 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    FiveTuple::new(
        SocketAddr::new([192, 0, 2, 10 + (i & 1)].into(), 5000 + u16::from(i & 3)),
        ([192, 0, 2, 1], 3478).into(),
        transport,
    )
}

fn peer(i: u8) -> SocketAddr {
    match i % 4 {
        0 => ([198, 51, 100, 1], 1000).into(),
        1 => ([198, 51, 100, 2], 2000).into(),
        2 => ([10, 0, 0, 1], 53).into(), // denied by the default policy
        _ => "[2001:db8::9]:3000".parse().unwrap(),
    }
}

const METHODS: [Method; 6] = [
    Method::ALLOCATE,
    Method::REFRESH,
    Method::CREATE_PERMISSION,
    Method::CHANNEL_BIND,
    Method::BINDING,
    Method::CONNECT,
];

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let t0 = Instant::now();
    let mut now = t0;
    let relay4 = RelayAddr {
        bind: [10, 9, 0, 1].into(),
        public: [203, 0, 113, 1].into(),
    };
    let relay6 = RelayAddr::direct("2001:db8::1".parse().unwrap());
    let config = ServerConfig {
        realm: REALM.into(),
        software: Some("fuzz".into()),
        relay_v4: Some(relay4),
        relay_v6: Some(relay6),
        ports: 30000..=30015,
        max_allocations: 6,
        max_allocations_per_user: 5,
        alternate_servers: vec![([192, 0, 2, 99], 3478).into()],
        port_seed: 7,
        ..ServerConfig::default()
    };
    let mut creds = CredentialStore::new(REALM);
    creds.add_user(USER, PASSWORD).unwrap();
    let own: Vec<IpAddr> = vec![relay4.bind, relay4.public, relay6.bind];
    let mut server = Server::new(
        config,
        creds,
        PeerPolicy::new(vec![], vec![], own),
        NonceKey::new([3; 32]),
        t0,
        1_700_000_000,
    );
    let key = long_term_key(KeyAlg::Md5, USER, REALM, PASSWORD);
    let mut out = vec![0u8; 2048];
    let mut txid = 0u64;
    // Relay sockets the data path would hold open.
    let mut live: HashMap<SocketAddr, u64> = HashMap::new();
    let mut grants: HashSet<(u64, IpAddr)> = HashSet::new();

    while let Some(op) = input.u8() {
        match op % 9 {
            0 => {
                let from = tuple(input.u8().unwrap_or(0));
                let len = usize::from(input.u16() % 600);
                let pkt = input.bytes(len);
                let _ = server.handle_client(now, from, pkt, &mut out);
            }
            1 | 2 => {
                // A request signed with alice's key and a valid nonce, with fuzzed attributes.
                let from = tuple(input.u8().unwrap_or(0));
                let method = METHODS[usize::from(input.u8().unwrap_or(0)) % METHODS.len()];
                let mut challenge = [0u8; 64];
                let w = MessageWriter::new(
                    &mut challenge,
                    Class::Request,
                    Method::ALLOCATE,
                    TransactionId([0; 12]),
                )
                .unwrap();
                let n = w.finish();
                let nonce = match server.handle_client(now, from, &challenge[..n], &mut out) {
                    ClientOutput::Reply { len } => Message::parse(&out[..len])
                        .ok()
                        .and_then(|m| m.attr::<Nonce>())
                        .and_then(Result::ok)
                        .map(|n| n.0.to_owned()),
                    _ => None,
                };
                let Some(nonce) = nonce else { continue };
                txid += 1;
                let mut t = [0u8; 12];
                t[4..].copy_from_slice(&txid.to_be_bytes());
                let mut buf = vec![0u8; 1500];
                let mut w =
                    MessageWriter::new(&mut buf, Class::Request, method, TransactionId(t)).unwrap();
                let attrs = input.u8().unwrap_or(0) % 6;
                for _ in 0..attrs {
                    let sel = input.u8().unwrap_or(0);
                    let _ = match sel % 10 {
                        0 => w.attr(&RequestedTransport(if sel & 0x10 == 0 { 17 } else { 6 })),
                        1 => w.attr(&Lifetime(u32::from(input.u16()))),
                        2 => w.attr(&XorPeerAddress(peer(sel >> 4))),
                        3 => w.attr(&ChannelNumber(0x3FF0 + (input.u16() % 0x40))),
                        4 => w.attr(&EvenPort(sel & 0x10 != 0)),
                        5 => w.attr(&RequestedAddressFamily(if sel & 0x10 == 0 {
                            AddressFamily::V4
                        } else {
                            AddressFamily::V6
                        })),
                        6 => w.attr(&AdditionalAddressFamily(AddressFamily::V6)),
                        7 => w.attr(&DontFragment),
                        8 => {
                            let mut tok = [0u8; 8];
                            tok.copy_from_slice(&{
                                let b = input.bytes(8);
                                let mut a = [0u8; 8];
                                a[..b.len()].copy_from_slice(b);
                                a
                            });
                            w.attr(&ReservationToken(tok))
                        }
                        _ => {
                            let typ = AttrType(input.u16());
                            let len = usize::from(input.u8().unwrap_or(0) % 40);
                            let value = input.bytes(len).to_vec();
                            w.raw_attr(typ, &value)
                        }
                    };
                }
                let _ = w.attr(&Username(USER));
                let _ = w.attr(&Realm(REALM));
                let _ = w.attr(&Nonce(&nonce));
                let _ = w.integrity_sha1(key.as_bytes());
                let _ = w.fingerprint();
                let n = w.finish();
                let _ = server.handle_client(now, from, &buf[..n], &mut out);
            }
            3 => {
                // Peer datagram to one of the live relays (or a random port).
                let sel = input.u8().unwrap_or(0);
                let relay = live
                    .keys()
                    .copied()
                    .collect::<Vec<_>>()
                    .get(usize::from(sel) % (live.len() + 1))
                    .copied()
                    .unwrap_or(SocketAddr::new(relay4.bind, 30000 + u16::from(sel % 16)));
                let len = usize::from(input.u16() % 300);
                let payload = input.bytes(len);
                let from = peer(input.u8().unwrap_or(0));
                match server.handle_peer(now, relay, from, payload, &mut out) {
                    PeerOutput::ToClient { len, .. } => assert!(len <= out.len()),
                    PeerOutput::Drop(_) => {}
                }
            }
            4 => now += Duration::from_secs(u64::from(input.u16() % 1000)),
            5 => server.client_closed(now, tuple(input.u8().unwrap_or(0))),
            6 => {
                let port = 30000 + u16::from(input.u8().unwrap_or(0) % 16);
                server.relay_bind_failed(now, SocketAddr::new(relay4.bind, port));
            }
            7 => server.set_draining(input.u8().unwrap_or(0) & 1 == 1),
            _ => {
                // An operator ends one of the live allocations (or none: a stale id).
                let sel = usize::from(input.u8().unwrap_or(0));
                let n = server.allocation_count();
                let id = server.allocations().nth(sel % (n + 1)).map(|a| a.id());
                if let Some(id) = id {
                    assert!(server.disconnect(now, id).is_some());
                    assert!(server.disconnect(now, id).is_none(), "ended twice");
                }
            }
        }
        server.handle_timeout(now);
        if let Some(t) = server.poll_timeout() {
            let _ = t;
        }
        while let Some(c) = server.poll_command() {
            match c {
                Command::AllocationCreated { id, relay, .. } => {
                    assert!(
                        live.insert(relay, id.as_u64()).is_none(),
                        "relay {relay} twice"
                    );
                }
                Command::AllocationRemoved { id, relay, .. } => {
                    assert_eq!(live.remove(&relay), Some(id.as_u64()));
                    assert!(
                        !grants.iter().any(|(i, _)| *i == id.as_u64()),
                        "permissions left"
                    );
                }
                Command::PermissionCreated { id, peer, .. } => {
                    assert!(grants.insert((id.as_u64(), peer)));
                }
                Command::PermissionRemoved { id, peer, .. } => {
                    assert!(grants.remove(&(id.as_u64(), peer)));
                }
                Command::ChannelBound { .. } | Command::ChannelUnbound { .. } => {}
                Command::ConnectPeer { .. }
                | Command::SendToClient { .. }
                | Command::SpliceConnection { .. }
                | Command::CloseConnection { .. } => {}
                Command::CloseClient { id, client } => {
                    assert!(client.transport.is_stream(), "CloseClient for {client:?}");
                    assert!(
                        !live.values().any(|v| *v == id.as_u64()),
                        "connection closed before its relay"
                    );
                }
            }
        }
        while server.poll_event().is_some() {}
        let ids: HashSet<u64> = live.values().copied().collect();
        assert_eq!(ids.len(), server.allocation_count());
    }
});
