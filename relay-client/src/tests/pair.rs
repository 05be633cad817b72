//! Test harness: one [`Client`] and one [`Server`] joined by a lossy in-memory link.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay_proto::auth::{CredentialStore, NonceKey};
use relay_proto::policy::PeerPolicy;
use relay_proto::server::{
    ClientOutput, FiveTuple, PeerOutput, RelayAddr, Server, ServerConfig, Transport as Five,
};

use crate::{Client, Completed, Config, Credentials, Event, Input, Request, RequestId, Transport};

pub const REALM: &str = "example.org";
pub const USER: (&str, &str) = ("alice", "wonderland");
pub const SECRET: &[u8] = b"rest-shared-secret";
pub const UNIX_T0: u64 = 1_700_000_000;
pub const SEED: [u8; 16] = [7; 16];

pub fn relay() -> RelayAddr {
    RelayAddr {
        bind: [10, 0, 0, 5].into(),
        public: [203, 0, 113, 5].into(),
    }
}

pub fn peer() -> SocketAddr {
    ([198, 51, 100, 7], 5000).into()
}

pub fn server_config() -> ServerConfig {
    ServerConfig {
        realm: REALM.into(),
        software: Some("relay-test".into()),
        relay_v4: Some(relay()),
        ports: 24000..=29999,
        port_seed: 42,
        ..ServerConfig::default()
    }
}

pub fn user() -> Credentials {
    Credentials::new(USER.0, USER.1)
}

/// Data the server relayed towards a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToPeer {
    pub relay: SocketAddr,
    pub peer: SocketAddr,
    pub payload: Vec<u8>,
}

pub struct Pair {
    pub client: Client,
    pub server: Server,
    pub now: Instant,
    pub from: FiveTuple,
    /// Client datagrams to drop before they reach the server.
    pub drop_to_server: usize,
    /// Every datagram the client sent, with when.
    pub sent: Vec<(Instant, Vec<u8>)>,
    pub to_peer: Vec<ToPeer>,
    /// Server datagrams not yet handed to the client.
    to_client: VecDeque<Vec<u8>>,
    /// Data the client handed back, owned.
    pub data: Vec<(Option<SocketAddr>, Option<u16>, Vec<u8>)>,
    pub events: Vec<Completed>,
}

impl Pair {
    pub fn new(credentials: Option<Credentials>) -> Self {
        Self::with(Config::new(Transport::Udp, credentials), server_config())
    }

    pub fn with(config: Config, server: ServerConfig) -> Self {
        let now = Instant::now();
        let mut store = CredentialStore::new(REALM);
        store.add_user(USER.0, USER.1).unwrap();
        store.add_shared_secret(SECRET);
        let r = relay();
        let policy = PeerPolicy::new(vec![], vec![], vec![r.bind, r.public]);
        let five = match config.transport {
            Transport::Udp => Five::Udp,
            Transport::Tcp => Five::Tcp,
            Transport::Tls => Five::Tls,
        };
        Self {
            client: Client::new(config, SEED),
            server: Server::new(server, store, policy, NonceKey::new([9; 32]), now, UNIX_T0),
            now,
            from: FiveTuple::new(
                ([192, 0, 2, 100], 40000).into(),
                ([192, 0, 2, 1], 3478).into(),
                five,
            ),
            drop_to_server: 0,
            sent: Vec::new(),
            to_peer: Vec::new(),
            to_client: VecDeque::new(),
            data: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Delivers everything both sides have to say at the current time.
    pub fn drive(&mut self) {
        let mut buf = vec![0u8; 2048];
        let mut out = vec![0u8; 4096];
        loop {
            let mut busy = false;
            while let Some(t) = self.client.poll_transmit(&mut buf) {
                busy = true;
                let bytes = buf[..t.len].to_vec();
                self.sent.push((self.now, bytes.clone()));
                if self.drop_to_server > 0 {
                    self.drop_to_server -= 1;
                    continue;
                }
                self.deliver(&bytes, &mut out);
            }
            while let Some(bytes) = self.to_client.pop_front() {
                busy = true;
                self.input(&bytes);
            }
            while let Some(Event::Completed(c)) = self.client.poll_event() {
                self.events.push(c);
            }
            if !busy {
                return;
            }
        }
    }

    /// Bytes the client built itself (data), straight to the server.
    pub fn deliver(&mut self, bytes: &[u8], out: &mut [u8]) {
        match self.server.handle_client(self.now, self.from, bytes, out) {
            ClientOutput::Reply { len } => self.to_client.push_back(out[..len].to_vec()),
            ClientOutput::ToPeer {
                relay,
                peer,
                payload,
            } => self.to_peer.push(ToPeer {
                relay,
                peer,
                payload: payload.to_vec(),
            }),
            ClientOutput::ToClient { .. } | ClientOutput::Nothing => {}
        }
    }

    /// A peer's datagram to the allocation's relay address.
    pub fn peer_sends(&mut self, relay: SocketAddr, peer: SocketAddr, payload: &[u8]) {
        let mut out = vec![0u8; 4096];
        match self
            .server
            .handle_peer(self.now, relay, peer, payload, &mut out)
        {
            PeerOutput::ToClient { len, .. } => self.to_client.push_back(out[..len].to_vec()),
            PeerOutput::Drop(r) => panic!("server dropped the peer's datagram: {r:?}"),
        }
        self.drive();
    }

    fn input(&mut self, bytes: &[u8]) {
        if let Input::Data(d) = self.client.handle_input(bytes, self.now) {
            self.data.push((d.peer, d.channel, d.payload.to_vec()));
        }
    }

    /// Moves both clocks to `at` and runs both sides' timers.
    pub fn advance_to(&mut self, at: Instant) {
        self.now = self.now.max(at);
        self.server.handle_timeout(self.now);
        self.client.handle_timeout(self.now);
        self.drive();
    }

    /// Sends `request` and runs (advancing the clock to each timer) until it completes.
    pub fn run(&mut self, request: Request) -> Completed {
        let id = self
            .client
            .request(request, self.now)
            .expect("request builds");
        self.until(id)
    }

    pub fn until(&mut self, id: RequestId) -> Completed {
        for _ in 0..64 {
            self.drive();
            if let Some(i) = self.events.iter().position(|c| c.id == id) {
                return self.events.remove(i);
            }
            let at = self
                .client
                .poll_timeout()
                .expect("a request in flight has a timer");
            self.advance_to(at);
        }
        panic!("request {id:?} did not complete");
    }

    pub fn relayed(&self) -> SocketAddr {
        self.client.relayed()[0]
    }

    /// Lets `d` pass, stopping at each of the client's timers on the way.
    pub fn after(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) = self.client.poll_timeout().filter(|&at| at < end) {
            self.advance_to(at);
        }
        self.advance_to(end);
    }
}
