//! Where an admin endpoint is, as an operator writes it (`relay status --url`, the
//! `[cluster]` peers): `http://IP:PORT`, `https://IP:PORT` or `IP:PORT`. Pure, without
//! the `client` feature, so the fuzz crate reaches it without the HTTP stack.

use std::net::SocketAddr;

/// `http://IP:PORT`, `https://IP:PORT` (a trailing `/` allowed) or `IP:PORT`: the
/// address and whether it is over TLS; `None` for anything else (no host names: the
/// endpoint is reached without DNS).
pub fn parse_url(url: &str) -> Option<(SocketAddr, bool)> {
    let (tls, rest) = match url.split_once("://") {
        Some(("http", r)) => (false, r),
        Some(("https", r)) => (true, r),
        Some(_) => return None,
        None => (false, url),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    Some((rest.parse().ok()?, tls))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr, SocketAddrV6};

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn urls_parse_with_or_without_scheme() {
        let a: SocketAddr = "127.0.0.1:9641".parse().unwrap();
        assert_eq!(parse_url("http://127.0.0.1:9641"), Some((a, false)));
        assert_eq!(parse_url("http://127.0.0.1:9641/"), Some((a, false)));
        assert_eq!(parse_url("127.0.0.1:9641"), Some((a, false)));
        assert_eq!(parse_url("127.0.0.1:9641/"), Some((a, false)));
        assert_eq!(parse_url("https://127.0.0.1:9641"), Some((a, true)));
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(parse_url("https://[2001:db8::1]:443/"), Some((v6, true)));
        for bad in [
            "",
            "ftp://127.0.0.1:9641",
            "HTTP://127.0.0.1:9641",
            "localhost",
            "localhost:9641",
            "http://localhost:9641",
            "127.0.0.1",
            "http://127.0.0.1:9641//",
            "http://127.0.0.1:9641/api",
            "http://127.0.0.1:65536",
            "http://http://127.0.0.1:9641",
            "2001:db8::1:443",
        ] {
            assert_eq!(parse_url(bad), None, "{bad:?}");
        }
    }

    fn address() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            any::<(u32, u16)>().prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(ip.into()), port)),
            any::<(u128, u16, u32)>().prop_map(|(ip, port, scope)| {
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, scope))
            }),
        ]
    }

    proptest! {
        /// Every address, written in each of the accepted forms, reads back as itself.
        #[test]
        fn written_urls_round_trip(a in address(), tls: bool, slash: bool, scheme: bool) {
            let scheme = match (tls, scheme) {
                (true, _) => "https://",
                (false, true) => "http://",
                (false, false) => "",
            };
            let slash = if slash { "/" } else { "" };
            prop_assert_eq!(parse_url(&format!("{scheme}{a}{slash}")), Some((a, tls)));
        }

        /// No string makes the parser panic.
        #[test]
        fn never_panics(url in "\\PC{0,80}") {
            let _ = parse_url(&url);
        }
    }
}
