//! `relay check --config FILE`: what the relay would run with, or which key is wrong.

use std::path::Path;

use crate::config;

pub fn run(path: &Path) -> anyhow::Result<()> {
    let c = config::load(path)?;
    println!("{}: ok", path.display());
    println!("  realm            {}", c.realm);
    for l in &c.listeners {
        let t: Vec<String> = l
            .transports
            .iter()
            .map(|t| format!("{t:?}").to_lowercase())
            .collect();
        println!("  listen           {} ({})", l.address, t.join(", "));
    }
    for (family, r) in [("IPv4", c.relay_v4), ("IPv6", c.relay_v6)] {
        if let Some(r) = r {
            println!(
                "  relay {family}       bind {} advertised as {}",
                r.bind, r.public
            );
        }
    }
    println!("  relay ports      {}-{}", c.ports.low, c.ports.high);
    println!("  users            {}", c.users.len());
    println!("  shared secrets   {}", c.shared_secrets.len());
    let nets = |v: &[ipnet::IpNet]| {
        v.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("  peers allowed    {}", nets(&c.peers_allow));
    println!("  peers denied     {}", nets(&c.peers_deny));
    println!(
        "  max allocations  {} ({} per user)",
        c.max_allocations, c.max_allocations_per_user
    );
    println!(
        "  xdp              {} on [{}], forwarding {}",
        c.xdp_mode,
        c.xdp_interfaces.join(", "),
        c.xdp_forwarding
    );
    match c.udp_workers {
        0 => println!("  udp workers      one per CPU"),
        n => println!("  udp workers      {n}"),
    }
    println!(
        "  admin            {} (token {})",
        c.admin.address,
        if c.admin.token.is_some() {
            "required"
        } else {
            "none"
        }
    );
    let alternates: Vec<String> = c.alternate_servers.iter().map(|a| a.to_string()).collect();
    println!(
        "  when full        {}",
        if alternates.is_empty() {
            "508 Insufficient Capacity".to_owned()
        } else {
            format!("300 to {}", alternates.join(", "))
        }
    );
    println!("  drain timeout    {} s", c.drain_timeout.as_secs());
    println!("  log level        {}", c.log_level);
    Ok(())
}
