//! The PROXY protocol phase of a connection on a `proxy_protocol` listener: the load
//! balancer's address is checked against `proxy_from` at accept, then the header (v1 or
//! v2, [`relay_proto::proxy_header`]) is read before anything else, TLS included. Its
//! client address replaces the balancer's in the connection's 5-tuple before the core
//! sees a byte, so the allocation key, XOR-MAPPED-ADDRESS, the unauthenticated rate
//! limit, logs and the admin API all see the client. The per-source limit counts the
//! connection only then (counting the balancer would put every client in one source).
//!
//! A connection that sends no header within `tcp.handshake_timeout` is closed by the
//! sweep like any silent one; a bad header closes it at once. LOCAL headers (health
//! checks) keep the balancer's own address.

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use relay_proto::proxy_header::{self, ProxyError, ProxyHeader, V2_MAX};

use super::{State, bump, canonical};
use crate::{log_limit::Limiter, shard::slab::Key};

/// Balancer addresses whose refusals are logged one by one per window (beyond: counted
/// together), so a scan from many addresses cannot flood the log.
const LOGGED_SOURCES: usize = 1024;

/// Refusals of senders outside `proxy_from`, rate-limited per address.
pub type RefusedSources = Limiter<IpAddr, SocketAddr>;

pub fn refused_sources() -> RefusedSources {
    Limiter::new(LOGGED_SOURCES)
}

/// Feeds `data` to a connection waiting for its header, `pending` holding what came
/// before: `Ok(Some((header, used)))` once complete, `used` being the bytes of `data` it
/// took (the rest is the client's stream). `pending` never grows past the longest header.
pub fn take_header(
    pending: &mut Vec<u8>,
    data: &[u8],
) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if pending.is_empty() {
        // The usual case: the whole header in the first read, nothing copied.
        let done = proxy_header::parse(data)?;
        if done.is_none() {
            pending.extend_from_slice(data);
        }
        return Ok(done);
    }
    let before = pending.len();
    let take = data.len().min(V2_MAX.saturating_sub(before));
    pending.extend_from_slice(&data[..take]);
    Ok(proxy_header::parse(pending)?.map(|(h, n)| (h, n - before)))
}

impl State {
    /// Whether `peer` may connect to proxy listener `l`; a refusal is counted and logged
    /// (each address once per log window).
    pub(super) fn proxy_source_allowed(
        &mut self,
        l: usize,
        peer: SocketAddr,
        now: Instant,
    ) -> bool {
        let listener = &self.listeners[l];
        let Some(nets) = &listener.proxy_from else {
            return true;
        };
        if nets.iter().any(|n| n.contains(&peer.ip())) {
            return true;
        }
        let listener = listener.addr;
        let refused = bump(&self.stats.refused_proxy_source);
        self.expire_proxy_log(now);
        if self.proxy_refused.admit(peer.ip(), now, listener) {
            tracing::warn!(source = %peer, %listener, refused,
                "TCP connection refused: not from an address in this listener's proxy_from, so it may not send a PROXY header \
                 (a client bypassing the load balancer, or a balancer missing from proxy_from)");
        }
        false
    }

    /// Logs how many refusals each address had beyond its first line, once its window
    /// ended.
    pub(super) fn expire_proxy_log(&mut self, now: Instant) {
        self.proxy_refused.expire(now, |s| {
            let source = s.key.map(|ip| ip.to_string());
            tracing::warn!(source = source.as_deref().unwrap_or("(other addresses)"), listener = %s.last, more = s.more,
                "more TCP connections refused from outside proxy_from");
        });
    }

    /// Takes the PROXY header from the start of `data` for connection `id` if it still
    /// waits for one. Returns how much of `data` is left for the client's stream (all of
    /// it once the header is done), `None` if nothing is (header incomplete, or refused
    /// and the connection closing).
    pub(super) fn proxy_phase(&mut self, id: Key, data: &[u8]) -> Option<usize> {
        let c = self.conns.get_mut(id)?;
        let Some(pending) = c.proxy_pending.as_mut() else {
            return Some(0);
        };
        let balancer = c.five.client;
        let listener = c.five.listener;
        let (header, used) = match take_header(pending, data) {
            Ok(Some(done)) => done,
            Ok(None) => return None,
            Err(e) => {
                bump(&self.stats.refused_proxy_header);
                tracing::info!(source = %balancer, %listener, error = %e,
                    "TCP connection refused: bad PROXY protocol header (is the load balancer sending the PROXY protocol, v1 or v2?)");
                self.close(id, format!("PROXY header: {e}"));
                return None;
            }
        };
        c.proxy_pending = None;
        let client = header.client().map(canonical).unwrap_or(balancer);
        // Two connections cannot share one 5-tuple (the allocation key).
        if client != balancer && self.by_tuple.contains_key(&(client, listener)) {
            bump(&self.stats.refused_proxy_header);
            tracing::info!(%client, source = %balancer, %listener,
                "TCP connection refused: its PROXY header names a client address and port that another connection holds");
            self.close(id, "PROXY header names a client already connected");
            return None;
        }
        if !self.admit(client, listener) {
            self.close(id, "over the connection limits");
            return None;
        }
        let c = self.conns.get_mut(id)?;
        c.five.client = client;
        c.counted = true;
        if self.by_tuple.get(&(balancer, listener)) == Some(&id) {
            self.by_tuple.remove(&(balancer, listener));
        }
        self.by_tuple.insert((client, listener), id);
        tracing::debug!(%client, via = %balancer, %listener, version = ?header.version, command = ?header.command,
            "TCP connection accepted through a load balancer");
        Some(used)
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::proxy_header::{Addresses, Command, encode_v1, encode_v2};

    use super::*;

    fn addrs() -> Addresses {
        Addresses {
            source: "203.0.113.7:40000".parse().unwrap(),
            destination: "198.51.100.50:443".parse().unwrap(),
        }
    }

    #[test]
    fn a_header_in_one_read_leaves_the_rest_for_the_stream_and_copies_nothing() {
        let mut pending = Vec::new();
        let h = encode_v2(Command::Proxy, Some(addrs()), &[]);
        let data = [&h[..], b"\x16\x03\x01"].concat();
        let (header, used) = take_header(&mut pending, &data).unwrap().unwrap();
        assert_eq!(header.client(), Some(addrs().source));
        assert_eq!(&data[used..], b"\x16\x03\x01");
        assert!(pending.is_empty());
    }

    #[test]
    fn a_header_byte_by_byte_is_the_same_and_the_first_stream_byte_is_not_taken() {
        for h in [
            encode_v1(Some(addrs())),
            encode_v2(Command::Proxy, Some(addrs()), &[(0xea, b"vpce")]),
        ] {
            let mut pending = Vec::new();
            let data = [&h[..], b"\x00\x01"].concat();
            for (i, b) in data.iter().enumerate() {
                match take_header(&mut pending, std::slice::from_ref(b)).unwrap() {
                    None => assert!(i < h.len() - 1, "incomplete at byte {i}"),
                    Some((header, used)) => {
                        assert_eq!((i, used), (h.len() - 1, 1));
                        assert_eq!(header.client(), Some(addrs().source));
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn a_split_header_with_stream_bytes_in_its_last_read() {
        let h = encode_v1(Some(addrs()));
        let mut pending = Vec::new();
        assert_eq!(take_header(&mut pending, &h[..10]).unwrap(), None);
        let rest = [&h[10..], b"STUN"].concat();
        let (_, used) = take_header(&mut pending, &rest).unwrap().unwrap();
        assert_eq!(&rest[used..], b"STUN");
    }

    #[test]
    fn garbage_and_endless_headers_are_refused_and_the_buffer_stays_bounded() {
        let mut pending = Vec::new();
        // A TLS ClientHello straight to a proxy listener: the client bypassed the balancer.
        assert_eq!(
            take_header(&mut pending, b"\x16\x03\x01\x02\x00"),
            Err(ProxyError::NotProxy)
        );
        let mut pending = Vec::new();
        let mut endless = b"PROXY ".to_vec();
        assert_eq!(take_header(&mut pending, &endless).unwrap(), None);
        endless = vec![b'1'; 4096];
        assert_eq!(
            take_header(&mut pending, &endless),
            Err(ProxyError::V1TooLong)
        );
        assert!(pending.len() <= V2_MAX);
    }
}
