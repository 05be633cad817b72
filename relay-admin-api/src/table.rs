//! The allocations table as `relay status` prints it and the console renders it without
//! scripts: one set of columns and one way to write traffic and durations.

use crate::{AllocationView, Traffic, XdpView};

/// The fast path in a few words: `eth1 native, eth0 native`, or `off (why)`.
pub fn xdp(x: &XdpView) -> String {
    if x.interfaces.is_empty() {
        return match &x.off_reason {
            Some(r) => format!("off ({r})"),
            None => "off".to_owned(),
        };
    }
    x.interfaces
        .iter()
        .map(|i| format!("{} {}", i.name, i.mode))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table's headings, in column order.
pub const COLUMNS: [&str; 12] = [
    "CLIENT",
    "USER",
    "LISTENER",
    "RELAYED",
    "PEERS",
    "CH",
    "TO PEER",
    "TO CLIENT",
    "DROPPED",
    "IN KERNEL",
    "AGE",
    "EXPIRES",
];

/// One allocation's cells, in [`COLUMNS`] order.
pub fn row(a: &AllocationView) -> [String; 12] {
    let relayed: Vec<String> = a.relayed.iter().map(|r| r.public.to_string()).collect();
    let peers: Vec<String> = a.permissions.iter().map(|p| p.peer.to_string()).collect();
    let channels = a.channels.iter().filter(|c| !c.cooling).count();
    let kernel = match a.kernel {
        None => "-".to_owned(),
        Some(k) => {
            let all = a.total.to_peer_packets + a.total.to_client_packets;
            let fast = k.to_peer_packets + k.to_client_packets;
            // No traffic yet: no share to show.
            (fast * 100)
                .checked_div(all)
                .map_or_else(|| "-".to_owned(), |p| format!("{p}%"))
        }
    };
    [
        format!("{} {}", a.transport, a.client),
        a.user.clone(),
        a.listener.to_string(),
        relayed.join(","),
        if peers.is_empty() {
            "-".to_owned()
        } else {
            peers.join(",")
        },
        channels.to_string(),
        traffic(a.total, true),
        traffic(a.total, false),
        // Over a bandwidth limit (`[limits] max_bps_*`).
        a.bandwidth_dropped.to_string(),
        kernel,
        duration(a.age_s),
        duration(a.remaining_s),
    ]
}

pub fn traffic(t: Traffic, to_peer: bool) -> String {
    let (p, b) = if to_peer {
        (t.to_peer_packets, t.to_peer_bytes)
    } else {
        (t.to_client_packets, t.to_client_bytes)
    };
    format!("{p} pkt/{}", bytes(b))
}

pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if b < 1000 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1000.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

pub fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(12_345), "12.3 kB");
        assert_eq!(bytes(5_000_000_000), "5.0 GB");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(61), "1m01s");
        assert_eq!(duration(7260), "2h01m");
        assert_eq!(duration(90_000), "1d01h");
    }
}
