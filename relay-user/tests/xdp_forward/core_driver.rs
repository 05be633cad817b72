//! The protocol core driven without sockets, as the daemon drives it: its commands are
//! what `XdpMaps::apply` mirrors into the kernel, and its data-path answers are the
//! oracle for what the kernel writes.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use relay_proto::auth::{CredentialStore, NonceKey, PasswordAlgorithm, long_term_key};
use relay_proto::policy::PeerPolicy;
use relay_proto::server::{
    ClientOutput, Command, FiveTuple, RelayAddr, Server, ServerConfig, Transport,
};
use relay_proto::stun::{
    ChannelNumber, Class, ErrorCode, Lifetime, Message, MessageWriter, Method, Nonce, Realm,
    RequestedTransport, TransactionId, Username, XorPeerAddress, XorRelayedAddress,
};

const REALM: &str = "xdp.test";
const USER: &str = "alice";
const PASSWORD: &str = "secret";

pub struct Core {
    pub server: Server,
    /// How the clients reach the relay (UDP unless a test says otherwise).
    pub transport: Transport,
    now: Instant,
    txid: u32,
}

impl Core {
    /// A core relaying on `bind`, advertised as `public` (static NAT), ports 24000-24009,
    /// peers in the test network allowed.
    pub fn new(bind: IpAddr, public: IpAddr) -> Self {
        let config = ServerConfig {
            realm: REALM.into(),
            relay_v4: Some(RelayAddr { bind, public }),
            ports: 24_000..=24_009,
            ..ServerConfig::default()
        };
        let mut creds = CredentialStore::new(REALM);
        creds.add_user(USER, PASSWORD).unwrap();
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let policy = PeerPolicy::new(
            vec!["10.0.0.0/24".parse().unwrap()],
            vec![],
            vec![bind, public],
        );
        let now = Instant::now();
        let server = Server::new(config, creds, policy, NonceKey::new([7; 32]), now, unix_now);
        Core {
            server,
            transport: Transport::Udp,
            now,
            txid: 0,
        }
    }

    fn next_txid(&mut self) -> TransactionId {
        self.txid += 1;
        let mut t = [0x5a; 12];
        t[8..].copy_from_slice(&self.txid.to_be_bytes());
        TransactionId(t)
    }

    /// One authenticated request (after the 401 challenge); panics unless it succeeds.
    fn request(
        &mut self,
        from: FiveTuple,
        method: Method,
        attrs: &dyn Fn(&mut MessageWriter<'_>),
    ) -> Vec<u8> {
        let mut nonce: Option<String> = None;
        for _ in 0..2 {
            let mut req = vec![0u8; 1024];
            let txid = self.next_txid();
            let n = {
                let mut w = MessageWriter::new(&mut req, Class::Request, method, txid).unwrap();
                attrs(&mut w);
                if let Some(nonce) = &nonce {
                    let key = long_term_key(PasswordAlgorithm::Md5, USER, REALM, PASSWORD);
                    w.attr(&Username(USER)).unwrap();
                    w.attr(&Realm(REALM)).unwrap();
                    w.attr(&Nonce(nonce)).unwrap();
                    w.integrity_sha1(key.as_bytes()).unwrap();
                }
                w.finish()
            };
            let mut out = vec![0u8; 1024];
            let len = match self
                .server
                .handle_client(self.now, from, &req[..n], &mut out)
            {
                ClientOutput::Reply { len } => len,
                other => panic!("{method:?}: no reply ({other:?})"),
            };
            out.truncate(len);
            let msg = Message::parse(&out).unwrap();
            if msg.class() == Class::Success {
                return out;
            }
            let code = msg.attr::<ErrorCode>().unwrap().unwrap().code;
            assert!(code == 401 && nonce.is_none(), "{method:?}: error {code}");
            nonce = Some(msg.attr::<Nonce>().unwrap().unwrap().0.to_owned());
        }
        panic!("{method:?}: still challenged after authenticating")
    }

    /// Allocates for the UDP client `client` on `listener`; returns the relayed address.
    pub fn allocate(&mut self, client: SocketAddr, listener: SocketAddr) -> SocketAddr {
        let from = FiveTuple::new(client, listener, self.transport);
        let resp = self.request(from, Method::ALLOCATE, &|w| {
            w.attr(&RequestedTransport(17)).unwrap();
        });
        let msg = Message::parse(&resp).unwrap();
        msg.attr::<XorRelayedAddress>().unwrap().unwrap().0
    }

    pub fn permit(&mut self, client: SocketAddr, listener: SocketAddr, peer: SocketAddr) {
        let from = FiveTuple::new(client, listener, self.transport);
        self.request(from, Method::CREATE_PERMISSION, &|w| {
            w.attr(&XorPeerAddress(peer)).unwrap();
        });
    }

    pub fn bind(
        &mut self,
        client: SocketAddr,
        listener: SocketAddr,
        channel: u16,
        peer: SocketAddr,
    ) {
        let from = FiveTuple::new(client, listener, self.transport);
        self.request(from, Method::CHANNEL_BIND, &|w| {
            w.attr(&ChannelNumber(channel)).unwrap();
            w.attr(&XorPeerAddress(peer)).unwrap();
        });
    }

    /// Refresh with lifetime 0: the allocation ends.
    pub fn release(&mut self, client: SocketAddr, listener: SocketAddr) {
        let from = FiveTuple::new(client, listener, self.transport);
        self.request(from, Method::REFRESH, &|w| {
            w.attr(&Lifetime(0)).unwrap();
        });
    }

    pub fn commands(&mut self) -> Vec<Command> {
        std::iter::from_fn(|| self.server.poll_command()).collect()
    }

    /// What the userspace data path does with `packet` from `client`: the client it goes
    /// to and the bytes, when it is delivered to another allocation (hairpin).
    pub fn hairpin(
        &mut self,
        client: SocketAddr,
        listener: SocketAddr,
        packet: &[u8],
    ) -> Option<(SocketAddr, Vec<u8>)> {
        let from = FiveTuple::new(client, listener, self.transport);
        let mut out = vec![0u8; 2048];
        match self.server.handle_client(self.now, from, packet, &mut out) {
            ClientOutput::ToClient { to, len } => Some((to.client, out[..len].to_vec())),
            _ => None,
        }
    }
}
