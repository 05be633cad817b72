//! Server state machine benchmarks: the control-path cost of an authenticated Allocate and
//! the userspace data-path costs (ChannelData lookup client → peer, Data indication build
//! peer → client).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use relay_client::{
    Client, Config, Credentials, Input, MAX_REQUEST, Request, Transport as ClientTransport,
};
use relay_proto::auth::{CredentialStore, NonceKey};
use relay_proto::policy::PeerPolicy;
use relay_proto::server::{
    ClientOutput, FiveTuple, PeerOutput, RelayAddr, Server, ServerConfig, Transport,
};
use relay_proto::stun::*;

const REALM: &str = "relay.example.org";
const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const UNIX: u64 = 1_700_000_000;

fn config() -> ServerConfig {
    ServerConfig {
        realm: REALM.into(),
        software: Some("relay".into()),
        relay_v4: Some(RelayAddr {
            bind: [10, 0, 0, 5].into(),
            public: [203, 0, 113, 5].into(),
        }),
        ports: 1024..=65535,
        max_allocations: usize::MAX,
        port_seed: 1,
        // Every client is on one of a few addresses, at one instant.
        unauthenticated_rate: 0,
        unauthenticated_global_rate: 0,
        ..ServerConfig::default()
    }
}

fn server(now: Instant) -> Server {
    let mut creds = CredentialStore::new(REALM);
    creds.add_user(USER, PASSWORD).unwrap();
    let own: Vec<IpAddr> = vec![[10, 0, 0, 5].into(), [203, 0, 113, 5].into()];
    Server::new(
        config(),
        creds,
        PeerPolicy::new(vec![], vec![], own),
        NonceKey::new([9; 32]),
        now,
        UNIX,
    )
}

/// The `n`th client: a port of 1024-65535 per address (port 0 is never answered).
fn client(n: u32) -> FiveTuple {
    const PORTS: u32 = 65536 - 1024;
    let ip = [192, 0, 2, (n / PORTS) as u8 + 1];
    FiveTuple::new(
        SocketAddr::new(ip.into(), (1024 + n % PORTS) as u16),
        ([192, 0, 2, 254], 3478).into(),
        Transport::Udp,
    )
}

fn peer() -> SocketAddr {
    ([198, 51, 100, 7], 50000).into()
}

/// A browser-like client for `from` (relay-client) that `s` has challenged: returns it
/// with its signed Allocate (MD5 key, MESSAGE-INTEGRITY). Nonces are bound to the client
/// IP only, so the request is good on any server with the same nonce key.
fn challenged(s: &mut Server, now: Instant, from: FiveTuple, n: u32) -> (Client, Vec<u8>) {
    let mut seed = [0u8; 16];
    seed[..4].copy_from_slice(&n.to_be_bytes());
    let creds = Credentials::new(USER, PASSWORD);
    let mut c = Client::new(Config::new(ClientTransport::Udp, Some(creds)), seed);
    let unsigned = request(&mut c, Request::ALLOCATE, now);
    let mut out = [0u8; 512];
    let len = match s.handle_client(now, from, &unsigned, &mut out) {
        ClientOutput::Reply { len } => len,
        other => panic!(
            "no challenge to a {}-byte Allocate: {other:?}",
            unsigned.len()
        ),
    };
    assert_eq!(c.handle_input(&out[..len], now), Input::Response);
    let signed = transmit(&mut c);
    (c, signed)
}

/// `r` as the client sends it.
fn request(c: &mut Client, r: Request, now: Instant) -> Vec<u8> {
    c.request(r, now).unwrap();
    transmit(c)
}

fn transmit(c: &mut Client) -> Vec<u8> {
    let mut buf = [0u8; MAX_REQUEST];
    let t = c.poll_transmit(&mut buf).expect("a request to send");
    buf[..t.len].to_vec()
}

fn drain(s: &mut Server) {
    while s.poll_command().is_some() {}
    while s.poll_event().is_some() {}
}

fn bench_allocate(c: &mut Criterion) {
    const BATCH: u32 = 20_000;
    let now = Instant::now();
    let mut probe = server(now);
    let requests: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| challenged(&mut probe, now, client(i), i).1)
        .collect();
    let mut g = c.benchmark_group("server");
    g.throughput(Throughput::Elements(1));
    g.bench_function("allocate_authenticated", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut out = vec![0u8; 1500];
            let mut left = iters;
            while left > 0 {
                let n = left.min(u64::from(BATCH)) as u32;
                let mut s = server(now);
                let start = Instant::now();
                for i in 0..n {
                    let r = s.handle_client(now, client(i), &requests[i as usize], &mut out);
                    debug_assert!(matches!(r, ClientOutput::Reply { .. }));
                    black_box(r);
                    drain(&mut s);
                }
                total += start.elapsed();
                assert_eq!(s.allocation_count(), n as usize);
                left -= u64::from(n);
            }
            total
        })
    });
    g.finish();
}

/// A server with `n` allocations, each with channel 0x4000 bound to `peer()`.
fn populated(now: Instant, n: u32) -> (Server, Vec<SocketAddr>) {
    let mut s = server(now);
    let mut out = vec![0u8; 1500];
    let mut relays = Vec::new();
    for i in 0..n {
        let from = client(i);
        let (mut c, alloc) = challenged(&mut s, now, from, i);
        let ClientOutput::Reply { len } = s.handle_client(now, from, &alloc, &mut out) else {
            panic!()
        };
        let m = Message::parse(&out[..len]).unwrap();
        assert_eq!(m.class(), Class::Success);
        let channel = Request::ChannelBind {
            channel: 0x4000,
            peer: peer(),
        };
        let bind = request(&mut c, channel, now);
        let ClientOutput::Reply { len } = s.handle_client(now, from, &bind, &mut out) else {
            panic!()
        };
        assert_eq!(Message::parse(&out[..len]).unwrap().class(), Class::Success);
        relays.push(s.allocation(&from).unwrap().relayed().next().unwrap().bind);
    }
    drain(&mut s);
    (s, relays)
}

fn bench_data(c: &mut Criterion) {
    const N: u32 = 10_000;
    let now = Instant::now();
    let (mut s, relays) = populated(now, N);
    let payload = [0x55u8; 160];
    let mut cd = vec![0u8; 200];
    let len = write_channel_data(&mut cd, 0x4000, &payload, false).unwrap();
    cd.truncate(len);
    let mut out = vec![0u8; 1500];

    let mut g = c.benchmark_group("server");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u32;
    g.bench_function("channel_data_client_to_peer_10k_allocs", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            let r = s.handle_client(now, client(i), black_box(&cd), &mut out);
            debug_assert!(matches!(r, ClientOutput::ToPeer { .. }));
            black_box(r);
        })
    });

    // Peer → client without a channel (another peer port of the permitted IP): Data indication.
    let other_port: SocketAddr = ([198, 51, 100, 7], 50001).into();
    g.bench_function("data_indication_peer_to_client_10k_allocs", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            let r = s.handle_peer(
                now,
                relays[i as usize],
                other_port,
                black_box(&payload),
                &mut out,
            );
            debug_assert!(matches!(r, PeerOutput::ToClient { .. }));
            black_box(r);
        })
    });
    g.bench_function("channel_data_peer_to_client_10k_allocs", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            let r = s.handle_peer(
                now,
                relays[i as usize],
                peer(),
                black_box(&payload),
                &mut out,
            );
            debug_assert!(matches!(r, PeerOutput::ToClient { .. }));
            black_box(r);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_allocate, bench_data
}
criterion_main!(benches);
