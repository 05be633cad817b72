//! The deployment of CONTEXT.md in four namespaces, with its documentation-range plan:
//!
//! ```text
//!  client ──── firewall (static NAT 203.0.113.50 ⇄ 198.51.100.50) ──── relay ──── media
//!  203.0.113.10   203.0.113.1 | 198.51.100.1          ext 198.51.100.50 | int 192.0.2.50   192.0.2.10
//! ```
//!
//! The relay host has two NICs: external (behind the NAT) and internal (towards the media
//! server). The firewall maps the public address onto the external NIC, ports unchanged,
//! and optionally refuses NAT reflection (inside hosts reaching the public address).

use std::net::Ipv4Addr;

use crate::{
    cmd::CmdError,
    netns::{self, Netns},
};

/// Addresses of the plan (fixed: documentation ranges, only inside our namespaces).
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    pub client: Ipv4Addr,
    /// A second internet client on the same segment (client-to-client tests).
    pub client2: Ipv4Addr,
    pub firewall_outside: Ipv4Addr,
    /// The static NAT address browsers use (`relay.public_address`).
    pub public: Ipv4Addr,
    pub firewall_inside: Ipv4Addr,
    /// External NIC of the relay host (`relay.address`).
    pub relay_external: Ipv4Addr,
    /// Internal NIC of the relay host (the media server's `serverAddress`).
    pub relay_internal: Ipv4Addr,
    pub media: Ipv4Addr,
}

impl Default for Addresses {
    fn default() -> Self {
        Self {
            client: Ipv4Addr::new(203, 0, 113, 10),
            client2: Ipv4Addr::new(203, 0, 113, 11),
            firewall_outside: Ipv4Addr::new(203, 0, 113, 1),
            public: Ipv4Addr::new(203, 0, 113, 50),
            firewall_inside: Ipv4Addr::new(198, 51, 100, 1),
            relay_external: Ipv4Addr::new(198, 51, 100, 50),
            relay_internal: Ipv4Addr::new(192, 0, 2, 50),
            media: Ipv4Addr::new(192, 0, 2, 10),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct TopologyOptions {
    /// Whether the firewall hairpins inside → public-address traffic back inside. Many
    /// real firewalls refuse; the relay must not depend on it.
    pub nat_reflection: bool,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        Self {
            nat_reflection: true,
        }
    }
}

/// The four hosts. Dropping it deletes every namespace (and so every veth).
#[derive(Debug)]
pub struct Topology {
    pub id: String,
    pub addrs: Addresses,
    /// Interface names inside `relay`.
    pub relay_external_if: String,
    pub relay_internal_if: String,
    // Field order is drop order: hosts go before nothing depends on them.
    pub client: Netns,
    pub firewall: Netns,
    pub relay: Netns,
    pub media: Netns,
}

impl Topology {
    pub fn new(opts: TopologyOptions) -> Result<Self, CmdError> {
        netns::sweep_stale();
        let id = netns::unique_id();
        let a = Addresses::default();
        let client = Netns::new(&format!("{id}c"))?;
        let firewall = Netns::new(&format!("{id}f"))?;
        let relay = Netns::new(&format!("{id}r"))?;
        let media = Netns::new(&format!("{id}m"))?;
        let t = Self {
            relay_external_if: format!("{id}re"),
            relay_internal_if: format!("{id}ri"),
            id,
            addrs: a,
            client,
            firewall,
            relay,
            media,
        };
        let id = &t.id;
        link(
            &t.client,
            &format!("{id}cl"),
            &t.firewall,
            &format!("{id}fo"),
        )?;
        link(
            &t.firewall,
            &format!("{id}fi"),
            &t.relay,
            &t.relay_external_if,
        )?;
        link(&t.relay, &t.relay_internal_if, &t.media, &format!("{id}md"))?;

        addr(&t.client, &format!("{id}cl"), a.client, 24)?;
        addr(&t.client, &format!("{id}cl"), a.client2, 24)?;
        t.client.ip(&[
            "route",
            "add",
            "default",
            "via",
            &a.firewall_outside.to_string(),
        ])?;

        addr(&t.firewall, &format!("{id}fo"), a.firewall_outside, 24)?;
        // Owning the public address makes the firewall answer ARP for it; DNAT runs
        // before the local-delivery decision, so traffic still goes to the relay.
        addr(&t.firewall, &format!("{id}fo"), a.public, 32)?;
        addr(&t.firewall, &format!("{id}fi"), a.firewall_inside, 24)?;
        t.firewall.sysctl("net.ipv4.ip_forward", "1")?;
        t.firewall.exec_input(
            "nft",
            &["-f", "-"],
            &nat_rules(&a, &format!("{id}fi"), opts),
        )?;

        addr(&t.relay, &t.relay_external_if, a.relay_external, 24)?;
        addr(&t.relay, &t.relay_internal_if, a.relay_internal, 24)?;
        t.relay.ip(&[
            "route",
            "add",
            "default",
            "via",
            &a.firewall_inside.to_string(),
        ])?;

        addr(&t.media, &format!("{id}md"), a.media, 24)?;
        t.media.ip(&[
            "route",
            "add",
            "default",
            "via",
            &a.relay_internal.to_string(),
        ])?;
        Ok(t)
    }

    /// Interface names inside `client` and `media`.
    pub fn client_if(&self) -> String {
        format!("{}cl", self.id)
    }
    pub fn media_if(&self) -> String {
        format!("{}md", self.id)
    }
    /// The firewall's end of the link to the relay's external NIC.
    pub fn firewall_inside_if(&self) -> String {
        format!("{}fi", self.id)
    }

    /// One more relay node behind the firewall, for cluster tests: node `n` (1-9; node 0
    /// is the plan's) gets external address 198.51.100.(50+n) on the relay host's external
    /// NIC and public address 203.0.113.(50+n), statically NATed like the first. Several
    /// relay processes then share the relay namespace, each on its own addresses.
    /// Returns (public, external).
    pub fn add_relay_node(&self, n: u8) -> Result<(Ipv4Addr, Ipv4Addr), CmdError> {
        assert!((1..=9).contains(&n), "relay node {n}: 1 to 9");
        let public = Ipv4Addr::new(203, 0, 113, 50 + n);
        let external = Ipv4Addr::new(198, 51, 100, 50 + n);
        addr(&self.relay, &self.relay_external_if, external, 24)?;
        addr(&self.firewall, &format!("{}fo", self.id), public, 32)?;
        self.firewall.exec_input(
            "nft",
            &["-f", "-"],
            &format!(
                "add rule ip nat pre ip daddr {public} dnat to {external}\n\
                 add rule ip nat post ip saddr {external} snat to {public}\n"
            ),
        )?;
        Ok((public, external))
    }
}

/// A veth pair with one end in each namespace, up, with tx checksum offload off: packets
/// sent from local sockets over veth otherwise carry partial checksums, which XDP and
/// the receiving stack would see as wrong.
fn link(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<(), CmdError> {
    crate::cmd::run(
        "ip",
        &[
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    )?;
    for (ns, ifname) in [(a, a_if), (b, b_if)] {
        ns.exec("ethtool", &["-K", ifname, "tx", "off"])?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

fn addr(ns: &Netns, ifname: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), CmdError> {
    ns.ip(&["addr", "add", &format!("{ip}/{prefix}"), "dev", ifname])
        .map(drop)
}

/// Static 1:1 NAT of the public address onto the relay's external NIC, ports unchanged.
fn nat_rules(a: &Addresses, inside_if: &str, opts: TopologyOptions) -> String {
    let reflection = if opts.nat_reflection {
        String::new()
    } else {
        // No NAT reflection: inside hosts cannot reach the public address at all.
        format!(
            "table ip filter {{\n\
             chain pre {{ type filter hook prerouting priority -300; \
             iifname \"{inside_if}\" ip daddr {} drop; }}\n\
             }}\n",
            a.public
        )
    };
    format!(
        "table ip nat {{\n\
         chain pre {{ type nat hook prerouting priority dstnat; ip daddr {public} dnat to {ext}; }}\n\
         chain post {{ type nat hook postrouting priority srcnat; ip saddr {ext} snat to {public}; }}\n\
         }}\n{reflection}",
        public = a.public,
        ext = a.relay_external,
    )
}
