//! `[relay]` addresses: where relay ports bind, what clients are told, and that the port
//! range stays clear of the TURN listeners. Apart from the key-by-key checks in
//! `validate.rs` because these keys depend on each other and on the listeners (one family
//! each, the public address beside its bind address, a listener's IP as the default).

use std::net::IpAddr;

use super::{ConfigError, Listener, PortRange, RelayAddrs};

fn ip(key: &str, value: &str) -> Result<IpAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::new(key, format!("`{value}` is not an IP address")))
}

/// Relay addresses per family. Without `relay.address`, a single listener's specific IP
/// is used (the demo and one-NIC hosts).
pub(super) fn relay_addresses(
    r: &crate::config::RelaySection,
    listeners: &[Listener],
) -> Result<(Option<RelayAddrs>, Option<RelayAddrs>), ConfigError> {
    let pair = |bind_key: &str, bind: &Option<String>, pub_key: &str, public: &Option<String>| {
        let Some(bind) = bind else {
            if public.is_some() {
                return Err(ConfigError::new(
                    pub_key,
                    format!("needs {bind_key} as well"),
                ));
            }
            return Ok(None);
        };
        let bind = ip(bind_key, bind)?;
        if bind.is_unspecified() || bind.is_multicast() {
            return Err(ConfigError::new(
                bind_key,
                format!("must be the NIC's own address, not {bind}"),
            ));
        }
        let public = match public {
            Some(p) => ip(pub_key, p)?,
            None => bind,
        };
        // Clients send to this address: a wildcard or a group cannot reach one relay.
        if public.is_unspecified() || public.is_multicast() {
            return Err(ConfigError::new(
                pub_key,
                format!(
                    "must be the address clients reach the relay on (the static NAT address), not {public}"
                ),
            ));
        }
        if public.is_ipv4() != bind.is_ipv4() {
            return Err(ConfigError::new(
                pub_key,
                format!("must be the same IP family as {bind_key}"),
            ));
        }
        Ok(Some(RelayAddrs { bind, public }))
    };
    let v4 = pair(
        "relay.address",
        &r.address,
        "relay.public_address",
        &r.public_address,
    )?;
    let v6 = pair(
        "relay.address6",
        &r.address6,
        "relay.public_address6",
        &r.public_address6,
    )?;
    if v4.is_some_and(|a| !a.bind.is_ipv4()) {
        return Err(ConfigError::new(
            "relay.address",
            "must be IPv4 (use relay.address6 for IPv6)",
        ));
    }
    if v6.is_some_and(|a| a.bind.is_ipv4()) {
        return Err(ConfigError::new("relay.address6", "must be IPv6"));
    }
    if v4.is_some() || v6.is_some() {
        return Ok((v4, v6));
    }
    match listeners {
        [only] if !only.address.ip().is_unspecified() => {
            let a = RelayAddrs {
                bind: only.address.ip(),
                public: only.address.ip(),
            };
            Ok(if a.bind.is_ipv4() {
                (Some(a), None)
            } else {
                (None, Some(a))
            })
        }
        _ => Err(ConfigError::new(
            "relay.address",
            "missing: set the address relay ports bind on (the external NIC)",
        )),
    }
}

/// Relay sockets (UDP, and RFC 6062 TCP listeners) take any port of the range on the
/// relay address; one that is also a TURN listener's port would fail to bind or, worse,
/// the listener would fail at the next start.
pub(super) fn ports_clear_of_listeners(
    ports: PortRange,
    relays: &[Option<RelayAddrs>],
    listeners: &[Listener],
) -> Result<(), ConfigError> {
    let shared = |ip: IpAddr| {
        relays
            .iter()
            .flatten()
            .any(|r| r.bind == ip || ip.is_unspecified())
    };
    match listeners
        .iter()
        .find(|l| (ports.low..=ports.high).contains(&l.address.port()) && shared(l.address.ip()))
    {
        Some(l) => Err(ConfigError::new(
            "relay.ports",
            format!(
                "{}-{} contains the port of the TURN listener {} on the relay address: \
                 relay sockets would collide with it; move the range or the listener",
                ports.low, ports.high, l.address
            ),
        )),
        None => Ok(()),
    }
}
