use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;

use super::RelayProtocol;
use super::reason::{V4_RANGES, V6_RANGES};
use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn open_policy() -> PeerPolicy {
    PeerPolicy::new(vec![], vec![], vec![])
}

fn deny_default(r: DefaultDeny) -> PeerVerdict {
    PeerVerdict::Deny(DenyReason::Default(r))
}

fn embedded(form: EmbeddingForm, inner: EmbeddedDeny) -> PeerVerdict {
    PeerVerdict::Deny(DenyReason::Embedded { form, inner })
}

/// First, middle and last address of every default range are refused by that rule; the
/// addresses just outside are not refused by it.
#[test]
fn every_default_range() {
    let p = open_policy();
    let mut seen = 0;
    for (rule, n) in V4_RANGES {
        let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
        for a in [lo, lo + (hi - lo) / 2, hi] {
            let expect = if a == u32::MAX {
                DefaultDeny::Broadcast
            } else {
                rule
            };
            assert_eq!(
                p.check(Ipv4Addr::from(a).into()),
                deny_default(expect),
                "{rule:?} {a:x}"
            );
        }
        for a in [lo.checked_sub(1), hi.checked_add(1)].into_iter().flatten() {
            assert_ne!(
                p.check(Ipv4Addr::from(a).into()),
                deny_default(rule),
                "{rule:?} {a:x}"
            );
        }
        assert_eq!(rule.net(), IpNet::V4(n));
        seen += 1;
    }
    for (rule, n) in V6_RANGES {
        let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
        for a in [lo, lo + (hi - lo) / 2, hi] {
            assert_eq!(
                p.check(Ipv6Addr::from(a).into()),
                deny_default(rule),
                "{rule:?} {a:x}"
            );
        }
        for a in [lo.checked_sub(1), hi.checked_add(1)].into_iter().flatten() {
            assert_ne!(
                p.check(Ipv6Addr::from(a).into()),
                deny_default(rule),
                "{rule:?} {a:x}"
            );
        }
        assert_eq!(rule.net(), IpNet::V6(n));
        seen += 1;
    }
    assert_eq!(seen, 20, "one table entry per DefaultDeny variant");
    // Just outside the edges lands on the public internet.
    for a in [
        "1.0.0.0",
        "9.255.255.255",
        "11.0.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "169.253.255.255",
        "192.0.1.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "192.167.255.255",
        "2001:1:ffff:ffff:ffff:ffff:ffff:ffff",
        "2001:3::",
        "100:0:0:1::",
        "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "2606:4700::1111",
    ] {
        assert_eq!(p.check(ip(a)), PeerVerdict::Allow, "{a}");
    }
}

#[test]
fn documentation_ranges_are_the_internet() {
    let p = open_policy();
    for a in [
        "192.0.2.1",
        "198.51.100.255",
        "203.0.113.0",
        "2001:db8::1",
        "8.8.8.8",
    ] {
        assert_eq!(p.check(ip(a)), PeerVerdict::Allow, "{a}");
    }
}

/// Every IPv6 spelling of `v4`, with the form the policy should blame.
fn spellings(v4: Ipv4Addr) -> Vec<(EmbeddingForm, Ipv6Addr)> {
    let b = u128::from(u32::from(v4));
    let public = u128::from(u32::from(Ipv4Addr::new(192, 0, 2, 1)));
    let nat_local =
        |prefix_len: u8, a: u128| (EmbeddingForm::Nat64Local { prefix_len }, Ipv6Addr::from(a));
    let o = v4.octets().map(u128::from);
    let local = 0x0064_ff9b_0001u128 << 80;
    vec![
        (EmbeddingForm::Ipv4Mapped, Ipv6Addr::from(0xffff << 32 | b)),
        (EmbeddingForm::Ipv4Compatible, Ipv6Addr::from(b)),
        (
            EmbeddingForm::Ipv4Translated,
            Ipv6Addr::from(0xffff << 48 | b),
        ),
        (
            EmbeddingForm::SixToFour,
            Ipv6Addr::from(0x2002u128 << 112 | b << 80 | 1),
        ),
        // Server and client forms, each with the other half public.
        (
            EmbeddingForm::TeredoServer,
            Ipv6Addr::from(0x2001u128 << 112 | b << 64 | (!public & 0xffff_ffff)),
        ),
        (
            EmbeddingForm::TeredoClient,
            Ipv6Addr::from(0x2001u128 << 112 | public << 64 | (!b & 0xffff_ffff)),
        ),
        (
            EmbeddingForm::Nat64,
            Ipv6Addr::from(0x64_ff9bu128 << 96 | b),
        ),
        // RFC 6052 layouts; octet 8 is the zero u-octet.
        nat_local(
            48,
            local | o[0] << 72 | o[1] << 64 | o[2] << 48 | o[3] << 40,
        ),
        nat_local(
            56,
            local | o[0] << 64 | o[1] << 48 | o[2] << 40 | o[3] << 32,
        ),
        nat_local(
            64,
            local | o[0] << 48 | o[1] << 40 | o[2] << 32 | o[3] << 24,
        ),
        nat_local(96, local | b),
    ]
}

#[test]
fn every_embedding_of_internal_addresses() {
    let p = open_policy();
    let cases = [
        ("127.0.0.1", DefaultDeny::Loopback),
        ("10.0.0.1", DefaultDeny::Private10),
        ("169.254.169.254", DefaultDeny::LinkLocal),
        ("0.0.0.0", DefaultDeny::ThisNetwork),
    ];
    for (v4, rule) in cases {
        for (form, v6) in spellings(v4.parse().unwrap()) {
            let verdict = p.check(v6.into());
            if v6 == Ipv6Addr::UNSPECIFIED {
                assert_eq!(verdict, deny_default(DefaultDeny::Unspecified6));
            } else if let EmbeddingForm::Nat64Local { .. } = form {
                // Other readings of the same address may be blamed first; it must be refused.
                assert!(
                    matches!(verdict, PeerVerdict::Deny(DenyReason::Embedded { .. })),
                    "{v6} {verdict:?}"
                );
            } else {
                assert_eq!(verdict, embedded(form, EmbeddedDeny::Default(rule)), "{v6}");
            }
        }
    }
    assert_eq!(
        p.check(ip("::ffff:127.0.0.1")).to_string_reason(),
        "IPv4-mapped IPv6 of loopback 127.0.0.0/8"
    );
    assert_eq!(p.check(ip("::1")), deny_default(DefaultDeny::Loopback6));
}

#[test]
fn embedded_public_addresses_pass() {
    let p = open_policy();
    for (form, v6) in spellings(Ipv4Addr::new(198, 51, 100, 7)) {
        if matches!(form, EmbeddingForm::Nat64Local { .. }) {
            // Judged under every layout at once: some reading is always 0.0.0.0/8.
            assert!(matches!(p.check(v6.into()), PeerVerdict::Deny(_)));
        } else {
            assert_eq!(p.check(v6.into()), PeerVerdict::Allow, "{form:?} {v6}");
        }
    }
}

#[test]
fn allow_list_exceptions() {
    let p = PeerPolicy::new(
        vec![
            net("10.1.0.0/16"),
            net("192.168.1.10/32"),
            net("fd00:1::/64"),
        ],
        vec![],
        vec![],
    );
    assert_eq!(p.check(ip("10.1.2.3")), PeerVerdict::Allow);
    assert_eq!(
        p.check(ip("10.2.0.1")),
        deny_default(DefaultDeny::Private10)
    );
    assert_eq!(p.check(ip("192.168.1.10")), PeerVerdict::Allow);
    assert_eq!(
        p.check(ip("192.168.1.11")),
        deny_default(DefaultDeny::Private192)
    );
    assert_eq!(p.check(ip("fd00:1::5")), PeerVerdict::Allow);
    assert_eq!(
        p.check(ip("fd00:2::5")),
        deny_default(DefaultDeny::UniqueLocal6)
    );
    // IPv4 allow entries vouch for embedded forms too.
    assert_eq!(p.check(ip("::ffff:10.1.2.3")), PeerVerdict::Allow);
    assert_eq!(p.check(ip("64:ff9b::10.1.2.3")), PeerVerdict::Allow);
    assert_eq!(
        p.check(ip("::ffff:10.2.0.1")),
        embedded(
            EmbeddingForm::Ipv4Mapped,
            EmbeddedDeny::Default(DefaultDeny::Private10)
        )
    );
    // Host bits in a configured entry are ignored.
    let p = PeerPolicy::new(vec![net("10.1.2.3/16")], vec![], vec![]);
    assert_eq!(p.check(ip("10.1.200.1")), PeerVerdict::Allow);
}

#[test]
fn explicit_deny_overrides_allow() {
    let p = PeerPolicy::new(
        vec![net("10.0.0.0/8"), net("2001:db8::/32")],
        vec![
            net("10.9.0.0/16"),
            net("203.0.113.0/24"),
            net("2001:db8:bad::/48"),
        ],
        vec![ip("203.0.113.1")],
    );
    assert_eq!(p.check(ip("10.1.0.1")), PeerVerdict::Allow);
    assert_eq!(
        p.check(ip("10.9.0.1")),
        PeerVerdict::Deny(DenyReason::Configured(net("10.9.0.0/16")))
    );
    assert_eq!(
        p.check(ip("2001:db8:bad::1")),
        PeerVerdict::Deny(DenyReason::Configured(net("2001:db8:bad::/48")))
    );
    // Deny beats the relay's own address too.
    assert_eq!(
        p.check(ip("203.0.113.1")),
        PeerVerdict::Deny(DenyReason::Configured(net("203.0.113.0/24")))
    );
    // And reaches embedded forms.
    assert_eq!(
        p.check(ip("2002:cb00:7105::1")),
        embedded(
            EmbeddingForm::SixToFour,
            EmbeddedDeny::Configured("203.0.113.0/24".parse().unwrap())
        )
    );
    assert_eq!(
        PeerVerdict::Deny(DenyReason::Configured(net("10.9.0.0/16"))).to_string_reason(),
        "configured deny 10.9.0.0/16"
    );
}

#[test]
fn hairpin_v4_and_v6() {
    let p = PeerPolicy::new(
        vec![],
        vec![],
        vec![
            ip("198.51.100.7"),
            ip("2001:db8::7"),
            ip("::ffff:192.0.2.9"),
            ip("0.0.0.0"),
            ip("::"),
            ip("10.0.0.5"),
        ],
    );
    assert_eq!(p.check(ip("198.51.100.7")), PeerVerdict::Hairpin);
    assert_eq!(p.check(ip("2001:db8::7")), PeerVerdict::Hairpin);
    assert_eq!(
        p.check(ip("192.0.2.9")),
        PeerVerdict::Hairpin,
        "mapped relay address normalised"
    );
    // A private bind address is still our own.
    assert_eq!(p.check(ip("10.0.0.5")), PeerVerdict::Hairpin);
    assert_eq!(p.check(ip("198.51.100.8")), PeerVerdict::Allow);
    // Wildcard binds are not hairpins.
    assert_eq!(
        p.check(ip("0.0.0.0")),
        deny_default(DefaultDeny::ThisNetwork)
    );
    assert_eq!(p.check(ip("::")), deny_default(DefaultDeny::Unspecified6));
    // Only the plain form hairpins.
    let relay = Ipv4Addr::new(198, 51, 100, 7);
    assert_eq!(
        p.check(ip("::ffff:198.51.100.7")),
        embedded(EmbeddingForm::Ipv4Mapped, EmbeddedDeny::RelayAddress(relay))
    );
    assert_eq!(
        p.check(ip("64:ff9b::198.51.100.7")).to_string_reason(),
        "NAT64 64:ff9b::/96 of the relay's own address 198.51.100.7"
    );
}

impl PeerVerdict {
    fn to_string_reason(self) -> String {
        match self {
            PeerVerdict::Deny(r) => r.to_string(),
            other => format!("{other:?}"),
        }
    }
}

fn interesting_v4() -> impl Strategy<Value = Ipv4Addr> {
    let bases: Vec<(u32, u32)> = V4_RANGES
        .iter()
        .map(|(_, n)| (u32::from(n.network()), u32::from(n.hostmask())))
        .chain([
            (0xc000_0200, 0xff),
            (0xcb00_7100, 0xff),
            (0xc633_6400, 0xff),
        ])
        .collect();
    prop_oneof![
        any::<u32>().prop_map(Ipv4Addr::from),
        (proptest::sample::select(bases), any::<u32>())
            .prop_map(|((b, m), x)| Ipv4Addr::from(b | (x & m))),
    ]
}

proptest! {
    /// ::ffff:a is judged exactly like a, by the same rule; only a hairpin differs (refused).
    #[test]
    fn mapped_matches_plain(a in interesting_v4()) {
        let p = PeerPolicy::new(
            vec![net("10.1.0.0/16"), net("192.168.0.0/24")],
            vec![net("203.0.113.0/24"), net("10.1.9.0/24")],
            vec![ip("198.51.100.7"), ip("192.168.0.1")],
        );
        let form = EmbeddingForm::Ipv4Mapped;
        let plain = p.check(a.into());
        let mapped = p.check(a.to_ipv6_mapped().into());
        let expect = match plain {
            PeerVerdict::Allow => PeerVerdict::Allow,
            PeerVerdict::Hairpin => embedded(form, EmbeddedDeny::RelayAddress(a)),
            PeerVerdict::Deny(DenyReason::Default(r)) => embedded(form, EmbeddedDeny::Default(r)),
            PeerVerdict::Deny(DenyReason::Configured(IpNet::V4(n))) => embedded(form, EmbeddedDeny::Configured(n)),
            PeerVerdict::Deny(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(mapped, expect);
        // The other single-reading forms agree on allow/deny (compat excludes :: and ::1).
        for (form, v6) in spellings(a) {
            if matches!(form, EmbeddingForm::Nat64Local { .. }) || u32::from(a) < 2 {
                continue;
            }
            prop_assert_eq!(
                matches!(p.check(v6.into()), PeerVerdict::Allow),
                plain == PeerVerdict::Allow,
                "{:?} {}", form, v6
            );
        }
    }

    #[test]
    fn never_panics(octets in any::<[u8; 16]>()) {
        let p = PeerPolicy::new(vec![net("::/0")], vec![net("0.0.0.0/0")], vec![ip("::1")]);
        let _ = p.check(IpAddr::from(octets)).to_string_reason();
        let _ = open_policy().check(IpAddr::from(octets));
    }
}

/// The relay host's listener addresses are not relays: refused even inside a broad allow
/// entry (no TURN loop through the relay's own listener), also when embedded, unless the
/// allow list names the address as a single host. Relay addresses stay hairpins.
#[test]
fn relay_host_addresses_need_a_single_host_allow_entry() {
    let relay = ip("198.51.100.50");
    let listener = ip("192.0.2.50");
    let policy = |allow: &[&str]| {
        PeerPolicy::new(allow.iter().map(|s| net(s)).collect(), vec![], vec![relay])
            .with_host_addresses([listener, relay, ip("0.0.0.0")])
    };
    let p = policy(&["192.0.2.0/24"]);
    assert_eq!(
        p.check(listener),
        PeerVerdict::Deny(DenyReason::RelayHost(listener))
    );
    assert_eq!(p.check(ip("192.0.2.10")), PeerVerdict::Allow);
    assert_eq!(
        p.check(ip("::ffff:192.0.2.50")),
        PeerVerdict::Deny(DenyReason::Embedded {
            form: EmbeddingForm::Ipv4Mapped,
            inner: EmbeddedDeny::RelayAddress(Ipv4Addr::new(192, 0, 2, 50)),
        })
    );
    assert_eq!(p.check(relay), PeerVerdict::Hairpin);
    assert!(!p.is_host_allow_listed((listener, 22).into(), Scope::STATIC_UDP));
    assert!(
        DenyReason::RelayHost(listener)
            .to_string()
            .contains("relay host address 192.0.2.50")
    );

    let p = policy(&["192.0.2.0/24", "192.0.2.50/32"]);
    assert_eq!(p.check(listener), PeerVerdict::Allow);
    assert!(p.is_host_allow_listed((listener, 22).into(), Scope::STATIC_UDP));
    assert!(!p.is_host_allow_listed((ip("192.0.2.10"), 22).into(), Scope::STATIC_UDP));
    // The wildcard is never an own address.
    assert!(!p.is_host_address(ip("0.0.0.0")));
    assert!(p.is_host_address(relay) && p.is_host_address(listener));
    // Deny still wins over an exact allow entry.
    let p = PeerPolicy::new(
        vec![net("192.0.2.50/32")],
        vec![net("192.0.2.0/24")],
        vec![],
    )
    .with_host_addresses([listener]);
    assert!(!p.is_host_allow_listed((listener, 22).into(), Scope::STATIC_UDP));
    assert!(matches!(
        p.check(listener),
        PeerVerdict::Deny(DenyReason::Configured(_))
    ));
}

/// A relay host address in a default range (an admin port on loopback) is refused by
/// that range's rule, unless the allow list covers it: then by the relay-host rule.
#[test]
fn relay_host_address_in_a_default_range_names_the_range() {
    let admin = ip("127.0.0.1");
    let p = PeerPolicy::new(vec![], vec![], vec![]).with_host_addresses([admin]);
    assert_eq!(p.check(admin), deny_default(DefaultDeny::Loopback));
    let p = PeerPolicy::new(vec![net("127.0.0.0/8")], vec![], vec![]).with_host_addresses([admin]);
    assert_eq!(
        p.check(admin),
        PeerVerdict::Deny(DenyReason::RelayHost(admin))
    );
    assert_eq!(p.check(ip("127.0.0.2")), PeerVerdict::Allow);
}

fn rules(v: &[&str]) -> Vec<AllowRule> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

fn sa(s: &str) -> std::net::SocketAddr {
    s.parse().unwrap()
}

const STATIC_TCP: Scope = Scope::new(CredentialKind::Static, RelayProtocol::Tcp);
const REST_UDP: Scope = Scope::new(CredentialKind::Rest, RelayProtocol::Udp);
const REST_TCP: Scope = Scope::new(CredentialKind::Rest, RelayProtocol::Tcp);

fn port_denied(v: PeerVerdict) -> bool {
    matches!(v, PeerVerdict::Deny(DenyReason::NotInAllowEntry { .. }))
}

/// An address an `allow` entry names is reachable only on that entry's protocol and
/// ports; the entries for one address add up; addresses no entry names keep the default.
#[test]
fn allow_entries_confine_the_addresses_they_name() {
    let p = PeerPolicy::new(vec![], vec![], vec![]).with_allow(rules(&[
        "192.0.2.10/32 udp 10000-20000",
        "192.0.2.10/32 tcp 443",
        "10.1.0.0/16 udp",
    ]));
    let s = Scope::STATIC_UDP;
    assert_eq!(p.check_ip(ip("192.0.2.10"), s), PeerVerdict::Allow);
    assert_eq!(p.check_port(sa("192.0.2.10:10000"), s), PeerVerdict::Allow);
    assert_eq!(p.check_port(sa("192.0.2.10:20000"), s), PeerVerdict::Allow);
    for refused in [
        "192.0.2.10:22",
        "192.0.2.10:9999",
        "192.0.2.10:20001",
        "192.0.2.10:443",
    ] {
        assert!(port_denied(p.check_port(sa(refused), s)), "{refused}");
    }
    assert_eq!(
        p.check_port(sa("192.0.2.10:443"), STATIC_TCP),
        PeerVerdict::Allow
    );
    assert!(port_denied(
        p.check_port(sa("192.0.2.10:15000"), STATIC_TCP)
    ));
    // Its neighbours are not named: the default (the documentation range is "internet").
    assert_eq!(p.check_port(sa("192.0.2.11:22"), s), PeerVerdict::Allow);
    // A UDP-only entry vouches for a private range for UDP, and refuses TCP to it.
    assert_eq!(p.check_port(sa("10.1.2.3:5"), s), PeerVerdict::Allow);
    assert!(port_denied(p.check_ip(ip("10.1.2.3"), STATIC_TCP)));
    assert_eq!(
        p.check_ip(ip("10.2.0.1"), s),
        deny_default(DefaultDeny::Private10)
    );
    // Embedded spellings are confined like the address they carry.
    assert!(port_denied(p.check_port(sa("[::ffff:192.0.2.10]:22"), s)));
    assert!(port_denied(p.check_port(sa("[64:ff9b::192.0.2.10]:22"), s)));
    assert_eq!(
        p.check_port(sa("[::ffff:192.0.2.10]:15000"), s),
        PeerVerdict::Allow
    );
    // The reason names the list, the entry and the port.
    let PeerVerdict::Deny(why) = p.check_port(sa("192.0.2.10:22"), s) else {
        panic!("refused above");
    };
    let why = why.to_string();
    for part in [
        "udp port 22 of 192.0.2.10",
        "[peers] allow",
        "192.0.2.10/32 udp 10000-20000",
    ] {
        assert!(why.contains(part), "{why}");
    }
    // Deny still wins.
    let p = p.clone_with_deny(vec![net("192.0.2.10/32")]);
    assert!(matches!(
        p.check_port(sa("192.0.2.10:15000"), s),
        PeerVerdict::Deny(DenyReason::Configured(_))
    ));
}

impl PeerPolicy {
    fn clone_with_deny(&self, deny: Vec<IpNet>) -> PeerPolicy {
        let mut p = self.clone();
        p.deny = deny;
        p
    }
}

/// REST users use `[peers.rest] allow` when it exists, the main list otherwise.
#[test]
fn rest_users_have_their_own_list() {
    let main = rules(&["192.0.2.10/32", "10.9.0.0/16"]);
    let p = PeerPolicy::new(vec![], vec![], vec![])
        .with_allow(main.clone())
        .with_rest_allow(Some(rules(&["192.0.2.10/32 udp 10000-20000"])));
    assert_eq!(
        p.check_port(sa("192.0.2.10:22"), Scope::STATIC_UDP),
        PeerVerdict::Allow
    );
    assert_eq!(
        p.check_port(sa("192.0.2.10:22"), STATIC_TCP),
        PeerVerdict::Allow
    );
    let refused = p.check_port(sa("192.0.2.10:22"), REST_UDP);
    assert!(port_denied(refused));
    assert!(refused.to_string_reason().contains("[peers.rest] allow"));
    assert_eq!(
        p.check_port(sa("192.0.2.10:15000"), REST_UDP),
        PeerVerdict::Allow
    );
    assert!(port_denied(p.check_ip(ip("192.0.2.10"), REST_TCP)));
    // The main list's exceptions are not the REST users'.
    assert_eq!(
        p.check_ip(ip("10.9.0.1"), Scope::STATIC_UDP),
        PeerVerdict::Allow
    );
    assert_eq!(
        p.check_ip(ip("10.9.0.1"), REST_UDP),
        deny_default(DefaultDeny::Private10)
    );
    // Without a REST list, REST users use the main one.
    let p = PeerPolicy::new(vec![], vec![], vec![]).with_allow(main);
    assert_eq!(
        p.check_port(sa("192.0.2.10:22"), REST_UDP),
        PeerVerdict::Allow
    );
    assert_eq!(p.check_ip(ip("10.9.0.1"), REST_TCP), PeerVerdict::Allow);
}

/// Whether the kernel may take Send indications for a permission: only when every port
/// of the peer is allowed.
#[test]
fn every_port_or_some() {
    let relay = ip("203.0.113.5");
    let p = PeerPolicy::new(vec![], vec![], vec![relay])
        .with_allow(rules(&[
            "192.0.2.10/32",
            "192.0.2.20/32 udp 10000-20000",
            "192.0.2.30/32 tcp",
        ]))
        .with_rest_allow(Some(rules(&["192.0.2.10/32 udp 1-1024"])));
    let s = Scope::STATIC_UDP;
    assert!(p.allows_every_port(ip("192.0.2.10"), s));
    assert!(!p.allows_every_port(ip("192.0.2.10"), REST_UDP));
    assert!(!p.allows_every_port(ip("192.0.2.20"), s));
    assert!(
        !p.allows_every_port(ip("192.0.2.30"), s),
        "a TCP-only entry refuses UDP"
    );
    assert!(p.allows_every_port(ip("192.0.2.30"), STATIC_TCP));
    assert!(
        p.allows_every_port(ip("198.51.100.1"), s),
        "not named: every port"
    );
    assert!(p.allows_every_port(relay, REST_UDP), "hairpin");
    assert!(!p.allows_every_port(ip("10.0.0.1"), s), "refused");
}

/// Every address the host's kernel delivers locally is the relay host: refused even
/// inside a broad allow entry, also embedded, unless allow names it exactly; relay
/// addresses inside a local prefix stay hairpins. New prefixes replace the old ones.
#[test]
fn locally_routed_prefixes_are_the_relay_host() {
    let relay = ip("198.51.100.50");
    let mut p = PeerPolicy::new(vec![net("192.0.2.0/24")], vec![], vec![relay]);
    assert_eq!(p.check(ip("192.0.2.77")), PeerVerdict::Allow);
    p.set_local_prefixes([
        net("192.0.2.50/32"),
        net("192.0.2.77/32"),
        net("198.51.100.50/32"),
        net("127.0.0.0/8"),
        net("2001:db8:1::/64"),
    ]);
    for host in ["192.0.2.50", "192.0.2.77"] {
        assert_eq!(
            p.check(ip(host)),
            PeerVerdict::Deny(DenyReason::RelayHost(ip(host))),
            "{host}"
        );
        assert!(p.is_host_address(ip(host)));
    }
    assert_eq!(p.check(ip("192.0.2.10")), PeerVerdict::Allow);
    assert_eq!(p.check(relay), PeerVerdict::Hairpin);
    assert_eq!(
        p.check(ip("127.0.0.2")),
        deny_default(DefaultDeny::Loopback)
    );
    assert_eq!(
        p.check(ip("2001:db8:1::abcd")),
        PeerVerdict::Deny(DenyReason::RelayHost(ip("2001:db8:1::abcd")))
    );
    assert_eq!(
        p.check(ip("::ffff:192.0.2.77")),
        PeerVerdict::Deny(DenyReason::Embedded {
            form: EmbeddingForm::Ipv4Mapped,
            inner: EmbeddedDeny::RelayAddress(Ipv4Addr::new(192, 0, 2, 77)),
        })
    );
    // Named exactly (and on that port), the operator means it.
    let mut p = PeerPolicy::new(vec![], vec![], vec![relay])
        .with_allow(rules(&["192.0.2.0/24", "192.0.2.77/32 udp 5000"]));
    p.set_local_prefixes([net("192.0.2.77/32")]);
    assert_eq!(
        p.check_port(sa("192.0.2.77:5000"), Scope::STATIC_UDP),
        PeerVerdict::Allow
    );
    assert_eq!(
        p.check_port(sa("192.0.2.77:22"), Scope::STATIC_UDP),
        PeerVerdict::Deny(DenyReason::RelayHost(ip("192.0.2.77")))
    );
    assert!(!p.allows_every_port(ip("192.0.2.77"), Scope::STATIC_UDP));
    assert!(p.is_host_allow_listed(sa("192.0.2.77:5000"), Scope::STATIC_UDP));
    assert!(!p.is_host_allow_listed(sa("192.0.2.77:5000"), STATIC_TCP));
    // A new list replaces the old.
    p.set_local_prefixes([]);
    assert_eq!(
        p.check_port(sa("192.0.2.77:22"), Scope::STATIC_UDP),
        PeerVerdict::Allow
    );
    assert!(p.local_prefixes().is_empty());
}
