//! The kernel shield's settings from the config (see `relay_common::shield`): where the
//! relay listens and relays, and the unauthenticated-request buckets of `[limits]`, the
//! same keys and semantics as the userspace limiter's.

use std::net::{IpAddr, SocketAddr};

use relay_common::{SHIELD_ALL_CLIENTS_KNOWN, SHIELD_ON, ShieldConfig, bucket_params};

use super::{XdpMaps, XdpMapsError};
use crate::config::{Config, Transport};

/// The shield's settings for `config`. Every UDP allocation is mirrored into the maps, so
/// the kernel may start out knowing every client (a failed write clears that).
pub fn settings(config: &Config) -> ShieldConfig {
    let (source_interval_ns, source_burst_ns) =
        bucket_params(config.unauthenticated_rate, config.unauthenticated_burst);
    let (global_interval_ns, global_burst_ns) = bucket_params(
        config.unauthenticated_global_rate,
        config.unauthenticated_global_burst,
    );
    ShieldConfig {
        flags: SHIELD_ON | SHIELD_ALL_CLIENTS_KNOWN,
        relay_port_min: config.ports.low,
        relay_port_max: config.ports.high,
        source_interval_ns,
        source_burst_ns,
        global_interval_ns,
        global_burst_ns,
    }
}

/// Writes the listener ports, relay IPs and settings of `config` into the loaded maps.
pub fn install(maps: &mut XdpMaps, config: &Config) -> Result<(), XdpMapsError> {
    let listeners: Vec<SocketAddr> = config
        .listeners
        .iter()
        .filter(|l| l.transports.contains(&Transport::Udp))
        .map(|l| l.address)
        .collect();
    let relay_ips: Vec<IpAddr> = [config.relay_v4, config.relay_v6]
        .into_iter()
        .flatten()
        .map(|r| r.bind)
        .collect();
    maps.set_shield_addresses(&listeners, &relay_ips)?;
    maps.set_shield(settings(config))
}

/// New rates on SIGHUP (listeners, relay addresses and ports do not reload).
pub fn reload(maps: &mut XdpMaps, config: &Config) -> Result<(), XdpMapsError> {
    maps.set_shield(settings(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_limits() {
        let mut c = crate::cores::demo_config().expect("demo config").0;
        c.unauthenticated_rate = 100;
        c.unauthenticated_burst = 300;
        c.unauthenticated_global_rate = 0;
        let s = settings(&c);
        assert_eq!(s.source_interval_ns, 10_000_000);
        assert_eq!(s.source_burst_ns, 3_000_000_000);
        assert_eq!((s.global_interval_ns, s.global_burst_ns), (0, 0));
        assert_eq!(
            (s.relay_port_min, s.relay_port_max),
            (c.ports.low, c.ports.high)
        );
        assert_ne!(s.flags & SHIELD_ON, 0);
    }
}
