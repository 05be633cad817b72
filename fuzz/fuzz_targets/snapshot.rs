//! Loads arbitrary bytes as a handover snapshot and restores what parses into a server:
//! a snapshot comes from another process (possibly another build), so a broken one must be
//! refused with a reason, never panic or leave ports counted twice.

#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use relay_proto::auth::{CredentialStore, NonceKey};
use relay_proto::policy::PeerPolicy;
use relay_proto::server::{RelayAddr, Server, ServerConfig, Shared, Snapshot};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(snap) = Snapshot::from_json(text) else {
        return;
    };
    let config = ServerConfig {
        realm: "fuzz.example".into(),
        relay_v4: Some(RelayAddr::direct([10, 0, 0, 5].into())),
        relay_v6: Some(RelayAddr::direct("2001:db8::5".parse().unwrap())),
        ports: 24000..=24100,
        ..ServerConfig::default()
    };
    let now = Instant::now();
    let shared = Shared::new(&config);
    if shared.restore(now, &snap.shared).is_err() {
        return;
    }
    let key = snap.nonce_key().unwrap_or_else(|_| NonceKey::new([0; 32]));
    let mut server = Server::with_shared(
        config.clone(),
        CredentialStore::new("fuzz.example"),
        PeerPolicy::new(vec![], vec![], vec![]),
        key,
        now,
        1_700_000_000,
        shared,
    );
    for shard in &snap.shards {
        if server.restore(now, shard).is_err() {
            return;
        }
    }
    // What was restored can be snapshotted again and expires cleanly.
    let again = server.snapshot(now);
    assert_eq!(again.allocations.len(), server.allocation_count());
    server.handle_timeout(now + std::time::Duration::from_secs(1 << 20));
    assert_eq!(server.allocation_count(), 0);
    while server.poll_command().is_some() {}
});
