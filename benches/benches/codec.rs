//! Codec micro-benchmarks: the per-packet costs on the relay's hot paths.

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use relay_proto::stun::*;
use std::time::Duration;

const KEY: &[u8] = b"0123456789abcdef";
const TXID: TransactionId = TransactionId([0x42; 12]);

fn allocate_request(buf: &mut [u8], sha256: bool) -> usize {
    let mut w = MessageWriter::new(buf, Class::Request, Method::ALLOCATE, TXID).unwrap();
    w.attr(&RequestedTransport::UDP).unwrap();
    w.attr(&Lifetime(600)).unwrap();
    w.attr(&Username("1700000000:alice")).unwrap();
    w.attr(&Realm("relay.example.org")).unwrap();
    w.attr(&Nonce("obMatJos2AAAB6c2f9a1e0d4b3c2")).unwrap();
    if sha256 {
        w.integrity_sha256(KEY).unwrap();
    } else {
        w.integrity_sha1(KEY).unwrap();
    }
    w.fingerprint().unwrap();
    w.finish()
}

fn allocate_success(buf: &mut [u8]) -> usize {
    let mut w = MessageWriter::new(buf, Class::Success, Method::ALLOCATE, TXID).unwrap();
    w.attr(&XorRelayedAddress("203.0.113.7:49152".parse().unwrap()))
        .unwrap();
    w.attr(&XorMappedAddress("198.51.100.2:61000".parse().unwrap()))
        .unwrap();
    w.attr(&Lifetime(600)).unwrap();
    w.attr(&Software("relay 0.1")).unwrap();
    w.integrity_sha1(KEY).unwrap();
    w.fingerprint().unwrap();
    w.finish()
}

fn codec(c: &mut Criterion) {
    let payload = [0xA5u8; 160];

    let mut req = [0u8; 512];
    let n = allocate_request(&mut req, false);
    let req = &req[..n];
    c.bench_function("parse allocate request (sha1+fp)", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(req)).unwrap();
            black_box((m.attr::<Username>(), m.attr::<RequestedTransport>()))
        })
    });

    c.bench_function("encode allocate success (sha1+fp)", |b| {
        let mut out = [0u8; 512];
        b.iter(|| black_box(allocate_success(black_box(&mut out))))
    });

    let m = Message::parse(req).unwrap();
    c.bench_function("verify integrity sha1", |b| {
        b.iter(|| black_box(m.verify_integrity(black_box(KEY))))
    });
    let mut req256 = [0u8; 512];
    let n = allocate_request(&mut req256, true);
    let m256 = Message::parse(&req256[..n]).unwrap();
    c.bench_function("verify integrity sha256", |b| {
        b.iter(|| black_box(m256.verify_integrity(black_box(KEY))))
    });

    let mut cd = [0u8; 256];
    let n = write_channel_data(&mut cd, 0x4001, &payload, false).unwrap();
    let cd = &cd[..n];
    c.bench_function("channeldata parse 160B", |b| {
        b.iter(|| black_box(ChannelData::parse(black_box(cd)).unwrap().payload().len()))
    });
    c.bench_function("classify 160B", |b| {
        b.iter(|| black_box(classify(black_box(cd))))
    });

    let mut send = [0u8; 256];
    let mut w = MessageWriter::new(&mut send, Class::Indication, Method::SEND, TXID).unwrap();
    w.attr(&XorPeerAddress("192.0.2.9:5000".parse().unwrap()))
        .unwrap();
    w.attr(&Data(&payload)).unwrap();
    let n = w.finish();
    let send = &send[..n];
    c.bench_function("parse send indication 160B", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(send)).unwrap();
            black_box((m.attr::<XorPeerAddress>(), m.attr::<Data>()))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = codec
}
criterion_main!(benches);
