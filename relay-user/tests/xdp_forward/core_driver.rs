//! The protocol core driven without sockets, as the daemon drives it: its commands are
//! what `XdpMaps::apply` mirrors into the kernel, and its data-path answers are the
//! oracle for what the kernel writes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use relay_client::{
    Client, Config, Credentials, Event, MAX_REQUEST, Outcome, Request, Success,
    Transport as ClientTransport,
};
use relay_proto::auth::{CredentialStore, NonceKey};
use relay_proto::policy::PeerPolicy;
use relay_proto::server::{
    ClientOutput, Command, FiveTuple, RelayAddr, Server, ServerConfig, Transport,
};

const REALM: &str = "xdp.test";
const USER: &str = "alice";
const PASSWORD: &str = "secret";

pub struct Core {
    pub server: Server,
    /// How the clients reach the relay (UDP unless a test says otherwise).
    pub transport: Transport,
    now: Instant,
    /// One client per client address, as each browser has its own.
    clients: HashMap<SocketAddr, Client>,
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
            clients: HashMap::new(),
        }
    }

    /// One request from `from` through the shared client (the 401 challenge answered on
    /// the first); panics unless it succeeds.
    fn request(&mut self, from: FiveTuple, request: Request) -> Success {
        let seed = self.clients.len() as u64;
        let client = self.clients.entry(from.client).or_insert_with(|| {
            let creds = Credentials::new(USER, PASSWORD);
            let mut s = [0x5a; 16];
            s[..8].copy_from_slice(&seed.to_be_bytes());
            Client::new(Config::new(ClientTransport::Udp, Some(creds)), s)
        });
        let method = request.method();
        let id = client.request(request, self.now).unwrap();
        let mut req = vec![0u8; MAX_REQUEST];
        let mut out = vec![0u8; 1024];
        // At most two transactions: the challenged one and the signed one.
        for _ in 0..2 {
            let t = client.poll_transmit(&mut req).expect("a request to send");
            let len = match self
                .server
                .handle_client(self.now, from, &req[..t.len], &mut out)
            {
                ClientOutput::Reply { len } => len,
                other => panic!("{method:?}: no reply ({other:?})"),
            };
            client.handle_input(&out[..len], self.now);
            if let Some(Event::Completed(done)) = client.poll_event() {
                assert_eq!(done.id, id);
                match done.outcome {
                    Outcome::Success(s) => return s,
                    other => panic!("{method:?}: {other:?}"),
                }
            }
        }
        panic!("{method:?}: still challenged after authenticating")
    }

    /// Allocates for the UDP client `client` on `listener`; returns the relayed address.
    pub fn allocate(&mut self, client: SocketAddr, listener: SocketAddr) -> SocketAddr {
        let from = FiveTuple::new(client, listener, self.transport);
        self.request(from, Request::ALLOCATE).relayed[0]
    }

    pub fn permit(&mut self, client: SocketAddr, listener: SocketAddr, peer: SocketAddr) {
        let from = FiveTuple::new(client, listener, self.transport);
        let peers = vec![peer];
        self.request(from, Request::CreatePermission { peers });
    }

    pub fn bind(
        &mut self,
        client: SocketAddr,
        listener: SocketAddr,
        channel: u16,
        peer: SocketAddr,
    ) {
        let from = FiveTuple::new(client, listener, self.transport);
        self.request(from, Request::ChannelBind { channel, peer });
    }

    /// Refresh with lifetime 0: the allocation ends.
    pub fn release(&mut self, client: SocketAddr, listener: SocketAddr) {
        let from = FiveTuple::new(client, listener, self.transport);
        self.request(from, Request::DELETE);
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
