use std::path::Path;

use super::*;

/// The deployment of CONTEXT.md in the documented key names.
pub(crate) const DEPLOYMENT: &str = r#"
realm = "example.org"

[[listen]]
address = "192.0.2.50:3478"
transports = ["udp"]

[[listen]]
address = "198.51.100.50:3478"

[relay]
address = "198.51.100.50"
public_address = "203.0.113.50"
ports = "24000-29999"

[auth]
shared_secrets = ["s3cret"]
users = { alice = "pw", legacy = { md5_key = "0x0123456789abcdef0123456789abcdef" } }

[peers]
allow = ["192.0.2.0/24", "10.1.2.3"]

[limits]
max_allocations = 1800

[udp]
workers = 4

[xdp]
interfaces = ["eth1", "eth0"]
mode = "native"
forwarding = "manual"
program_upgrades = false

[log]
level = "debug"
"#;

pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
    let file: ConfigFile =
        toml::from_str(text).map_err(|e| ConfigError::new("file", e.message().to_owned()))?;
    file.validate(Path::new("."))
}

fn err(text: &str) -> ConfigError {
    parse(text).expect_err("should be refused")
}

#[test]
fn deployment_config_parses() {
    let c = parse(DEPLOYMENT).unwrap();
    assert_eq!(c.realm, "example.org");
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[1].transports, vec![Transport::Udp]);
    let r = c.relay_v4.unwrap();
    assert_eq!(r.bind.to_string(), "198.51.100.50");
    assert_eq!(r.public.to_string(), "203.0.113.50");
    assert!(c.relay_v6.is_none());
    assert_eq!(
        c.ports,
        PortRange {
            low: 24000,
            high: 29999
        }
    );
    assert_eq!(c.users["alice"], UserEntry::Password("pw".into()));
    assert!(matches!(c.users["legacy"], UserEntry::Key { .. }));
    assert_eq!(c.peers_allow.len(), 2);
    assert_eq!(c.peers_allow[1].to_string(), "10.1.2.3/32");
    assert_eq!(c.max_allocations, 1800);
    assert_eq!(c.max_allocations_per_user, 1800);
    assert_eq!(c.xdp_mode, AttachMode::Native);
    assert_eq!(c.xdp_forwarding, Forwarding::Manual);
    assert!(!c.xdp_program_upgrades);
    assert_eq!(c.udp_workers, 4);
    assert_eq!(c.log_level, "debug");
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let e =
        parse(&DEPLOYMENT.replace("max_allocations = 1800", "max_allocation = 1800")).unwrap_err();
    assert!(e.message.contains("max_allocation"), "{e}");
    let e = parse(&format!("{DEPLOYMENT}\n[turn]\nx = 1\n")).unwrap_err();
    assert!(e.message.contains("turn"), "{e}");
}

#[test]
fn each_bad_value_names_its_key() {
    let cases = [
        (
            DEPLOYMENT.replace("24000-29999", "29999-24000"),
            "relay.ports",
        ),
        (DEPLOYMENT.replace("24000-29999", "24000"), "relay.ports"),
        (
            DEPLOYMENT.replace("\"203.0.113.50\"", "\"2001:db8::1\""),
            "relay.public_address",
        ),
        (
            DEPLOYMENT.replace("\"198.51.100.50\"\npublic", "\"0.0.0.0\"\npublic"),
            "relay.address",
        ),
        (
            DEPLOYMENT.replace("192.0.2.50:3478", "192.0.2.50"),
            "listen[0].address",
        ),
        (
            DEPLOYMENT.replace("[\"udp\"]", "[]"),
            "listen[0].transports",
        ),
        (
            DEPLOYMENT.replace("[\"udp\"]", "[\"udp\", \"udp\"]"),
            "listen[0].transports",
        ),
        (
            DEPLOYMENT.replace("10.1.2.3", "10.1.2.3/33"),
            "peers.allow[1]",
        ),
        (
            DEPLOYMENT.replace("max_allocations = 1800", "max_allocations = 0"),
            "limits.max_allocations",
        ),
        (
            DEPLOYMENT.replace("mode = \"native\"", "mode = \"fast\""),
            "xdp.mode",
        ),
        (
            DEPLOYMENT.replace("forwarding = \"manual\"", "forwarding = \"on\""),
            "xdp.forwarding",
        ),
        (
            DEPLOYMENT.replace("workers = 4", "workers = 100000"),
            "udp.workers",
        ),
        (
            DEPLOYMENT.replace("workers = 4", "workers = 4\nengine = \"uring\""),
            "udp.engine",
        ),
        (
            DEPLOYMENT.replace("[\"s3cret\"]", "[\"\"]"),
            "auth.shared_secrets[0]",
        ),
        (
            DEPLOYMENT.replace("level = \"debug\"", "level = \"loud=[\""),
            "log.level",
        ),
    ];
    for (text, key) in cases {
        assert_eq!(err(&text).key, key, "{}", err(&text));
    }
}

#[test]
fn no_credentials_at_all_is_an_error() {
    let text = "[[listen]]\naddress = \"127.0.0.1:3478\"\n";
    assert_eq!(err(text).key, "auth");
}

#[test]
fn single_listener_supplies_the_relay_address() {
    let c = parse("[[listen]]\naddress = \"127.0.0.1:3478\"\n[auth]\nshared_secrets = [\"x\"]\n")
        .unwrap();
    assert_eq!(c.relay_v4.unwrap().bind.to_string(), "127.0.0.1");
    assert_eq!(c.ports, validate::DEFAULT_PORTS);
    // Defaults: a worker per CPU; forwarding managed by the relay.
    assert_eq!(c.udp_workers, 0);
    assert_eq!(c.udp_engine, IoEngine::Auto);
    assert_eq!(c.xdp_forwarding, Forwarding::Auto);
    assert!(c.xdp_program_upgrades);
    // Two listeners: which NIC relays is the operator's call.
    let two = "[[listen]]\naddress = \"127.0.0.1:3478\"\n[[listen]]\naddress = \"127.0.0.2:3478\"\n\
               [auth]\nshared_secrets = [\"x\"]\n";
    assert_eq!(err(two).key, "relay.address");
}

#[test]
fn users_file_adds_shared_secrets() {
    let dir = std::env::temp_dir().join(format!("relay-config-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("secrets.toml"),
        "shared_secrets = [\"from-file\"]\n",
    )
    .unwrap();
    let cfg = dir.join("relay.toml");
    // The file's secrets alone are enough credentials to start.
    std::fs::write(
        &cfg,
        "[[listen]]\naddress = \"127.0.0.1:3478\"\n[auth]\nusers_file = \"secrets.toml\"\n",
    )
    .unwrap();
    assert_eq!(load(&cfg).unwrap().shared_secrets, ["from-file"]);
    // Inline ones come first, the file's after them.
    std::fs::write(
        &cfg,
        "[[listen]]\naddress = \"127.0.0.1:3478\"\n[auth]\nusers_file = \"secrets.toml\"\n\
         shared_secrets = [\"inline\"]\n",
    )
    .unwrap();
    assert_eq!(load(&cfg).unwrap().shared_secrets, ["inline", "from-file"]);
    std::fs::write(dir.join("secrets.toml"), "shared_secrets = [\"\"]\n").unwrap();
    assert_eq!(load(&cfg).unwrap_err().key, "auth.users_file");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn users_file_is_read_relative_to_the_config() {
    let dir = std::env::temp_dir().join(format!("relay-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("users.toml"), "[users]\nbob = \"pw2\"\n").unwrap();
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        "[[listen]]\naddress = \"127.0.0.1:3478\"\n[auth]\nusers_file = \"users.toml\"\n",
    )
    .unwrap();
    let c = load(&cfg).unwrap();
    assert_eq!(c.users["bob"], UserEntry::Password("pw2".into()));

    std::fs::write(
        &cfg,
        "[[listen]]\naddress = \"127.0.0.1:3478\"\n[auth]\nusers_file = \"nope.toml\"\n",
    )
    .unwrap();
    assert_eq!(load(&cfg).unwrap_err().key, "auth.users_file");
    std::fs::write(
        &cfg,
        "[[listen]]\naddress = \"127.0.0.1:3478\"\nbogus = 1\n",
    )
    .unwrap();
    let e = load(&cfg).unwrap_err();
    assert!(
        e.message.contains("bogus") && e.message.contains("line 2"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn admin_and_capacity_keys() {
    // Defaults: loopback admin without a token, no alternates, a minute to drain.
    let c = parse(DEPLOYMENT).unwrap();
    assert_eq!(c.admin.address, DEFAULT_ADMIN_ADDRESS);
    assert_eq!(c.admin.token, None);
    assert!(!c.admin.explicit);
    assert_eq!(c.admin.header_timeout, std::time::Duration::from_secs(10));
    assert_eq!(c.admin.max_connections, 64);
    assert!(c.alternate_servers.is_empty());
    assert_eq!(c.drain_timeout, DEFAULT_DRAIN_TIMEOUT);

    let text = DEPLOYMENT.replace(
        "max_allocations = 1800",
        "max_allocations = 1800\nalternate_servers = [\"203.0.113.60:3478\", \"[2001:db8::60]:3478\"]\ndrain_timeout = 120",
    ) + "\n[admin]\naddress = \"192.0.2.50:9641\"\ntoken = \"t0ken\"\n\
           header_timeout = 3\nmax_connections = 8\n";
    let c = parse(&text).unwrap();
    assert_eq!(c.admin.header_timeout, std::time::Duration::from_secs(3));
    assert_eq!(c.admin.max_connections, 8);
    assert_eq!(c.admin.address.to_string(), "192.0.2.50:9641");
    assert_eq!(c.admin.token.as_deref(), Some("t0ken"));
    assert!(c.admin.explicit);
    assert_eq!(c.alternate_servers.len(), 2);
    assert_eq!(c.alternate_servers[1].to_string(), "[2001:db8::60]:3478");
    assert_eq!(c.drain_timeout, std::time::Duration::from_secs(120));
    // The token never shows in debug output (logs, `relay check`).
    assert!(!format!("{:?}", c.admin).contains("t0ken"));
}

#[test]
fn admin_and_capacity_mistakes_name_their_key() {
    let admin = |body: &str| format!("{DEPLOYMENT}\n[admin]\n{body}\n");
    let limits = |extra: &str| {
        DEPLOYMENT.replace(
            "max_allocations = 1800",
            &format!("max_allocations = 1800\n{extra}"),
        )
    };
    let cases = [
        (admin("address = \"9641\""), "admin.address"),
        // The TURN ports, on the same or every address, and the relay range.
        (admin("address = \"192.0.2.50:3478\""), "admin.address"),
        (
            admin("address = \"0.0.0.0:3478\"\ntoken = \"x\""),
            "admin.address",
        ),
        (
            admin("address = \"198.51.100.50:25000\"\ntoken = \"x\""),
            "admin.address",
        ),
        (admin("address = \"127.0.0.1:0\""), "admin.address"),
        // Off loopback a token is required; it must fit in a header.
        (admin("address = \"192.0.2.50:9641\""), "admin.token"),
        (admin("token = \"\""), "admin.token"),
        (admin("token = \"two words\""), "admin.token"),
        (admin("bogus = 1"), "file"),
        (admin("header_timeout = 0"), "admin.header_timeout"),
        (admin("header_timeout = 600"), "admin.header_timeout"),
        (admin("max_connections = 0"), "admin.max_connections"),
        (
            limits("alternate_servers = [\"203.0.113.60\"]"),
            "limits.alternate_servers[0]",
        ),
        (
            limits("alternate_servers = [\"203.0.113.60:3478\", \"0.0.0.0:3478\"]"),
            "limits.alternate_servers[1]",
        ),
        (
            limits("alternate_servers = [\"192.0.2.50:3478\"]"),
            "limits.alternate_servers[0]",
        ),
        (limits("drain_timeout = 90000"), "limits.drain_timeout"),
    ];
    for (text, key) in cases {
        assert_eq!(err(&text).key, key, "{}", err(&text));
    }
    // A wildcard admin address is fine with a token and a free port.
    parse(&admin("address = \"0.0.0.0:9641\"\ntoken = \"x\"")).unwrap();
}

#[test]
fn tcp_and_tls_listeners_with_their_tables() {
    // No such folder: the config names the certificate files, it does not read them.
    let dir = Path::new("/nonexistent/relay-config-tls");
    let text = DEPLOYMENT.replace(
        "address = \"198.51.100.50:3478\"\n",
        "address = \"198.51.100.50:3478\"\ntransports = [\"udp\", \"tcp\"]\n\n\
         [[listen]]\naddress = \"198.51.100.50:443\"\ntransports = [\"tcp\", \"tls\"]\n",
    ) + "\n[tls]\ncertificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n\
         [tcp]\nengine = \"epoll\"\nmax_connections_per_source = 20\nidle_timeout = 45\n\
         relay_tcp = true\nworkers = 3\n";
    let file: ConfigFile = toml::from_str(&text).unwrap();
    let c = file.validate(dir).unwrap();
    assert_eq!(
        c.listeners[2].transports,
        vec![Transport::Tcp, Transport::Tls]
    );
    assert_eq!(c.tcp.engine, IoEngine::Epoll);
    assert_eq!(c.tcp.max_connections_per_source, 20);
    assert_eq!(c.tcp.idle_timeout, std::time::Duration::from_secs(45));
    assert!(c.tcp.relay_tcp);
    assert_eq!(c.tcp.workers, 3);
    assert_eq!(TcpSettings::default().workers, 0, "one per CPU");
    assert!(
        !TcpSettings::default().relay_tcp,
        "RFC 6062 is off unless asked for"
    );
    assert_eq!(
        c.tcp.handshake_timeout,
        TcpSettings::default().handshake_timeout
    );
    let tls = c.tls.unwrap();
    assert_eq!(tls.certificate, dir.join("cert.pem"));
    assert_eq!(tls.private_key, dir.join("key.pem"));

    // Mistakes name their key.
    let cases = [
        (
            text.replace("engine = \"epoll\"", "engine = \"kqueue\""),
            "tcp.engine",
        ),
        (
            text.replace("idle_timeout = 45", "idle_timeout = 0"),
            "tcp.idle_timeout",
        ),
        (
            text.replace(
                "max_connections_per_source = 20",
                "max_connections_per_source = 0",
            ),
            "tcp.max_connections_per_source",
        ),
        (
            text.replace("workers = 3", "workers = 100000"),
            "tcp.workers",
        ),
        (
            text.replace("certificate = \"cert.pem\"\n", ""),
            "tls.certificate",
        ),
        (
            text.replace("198.51.100.50:443", "198.51.100.50:3478"),
            "listen[2].address",
        ),
    ];
    for (t, k) in cases {
        let file: ConfigFile = toml::from_str(&t).unwrap();
        let e = file.validate(dir).expect_err(k);
        assert_eq!(e.key, k, "{e}");
    }
}

#[test]
fn log_level_must_be_a_level_or_target_directives() {
    let level = |l: &str| DEPLOYMENT.replace("level = \"debug\"", &format!("level = \"{l}\""));
    // tracing alone would take `infoo` as a target and log nothing at all.
    let e = err(&level("infoo"));
    assert_eq!(e.key, "log.level");
    assert!(
        e.message.contains("error, warn, info, debug, trace, off"),
        "{e}"
    );
    assert_eq!(err(&level("relay_user=loud")).key, "log.level");
    assert_eq!(
        parse(&level("warn,relay_user=debug")).unwrap().log_level,
        "warn,relay_user=debug"
    );
}

#[test]
fn addresses_clients_cannot_use_are_refused() {
    let cases = [
        (
            DEPLOYMENT.replace("\"203.0.113.50\"", "\"0.0.0.0\""),
            "relay.public_address",
        ),
        (
            DEPLOYMENT.replace("\"203.0.113.50\"", "\"224.0.0.1\""),
            "relay.public_address",
        ),
        (
            DEPLOYMENT.replace(
                "public_address = \"203.0.113.50\"",
                "public_address = \"203.0.113.50\"\naddress6 = \"2001:db8::50\"\npublic_address6 = \"::\"",
            ),
            "relay.public_address6",
        ),
        (
            DEPLOYMENT.replace(
                "public_address = \"203.0.113.50\"",
                "public_address = \"203.0.113.50\"\naddress6 = \"2001:db8::50\"\npublic_address6 = \"ff02::1\"",
            ),
            "relay.public_address6",
        ),
        (
            DEPLOYMENT.replace("192.0.2.50:3478", "192.0.2.50:0"),
            "listen[0].address",
        ),
    ];
    for (text, key) in cases {
        assert_eq!(err(&text).key, key, "{}", err(&text));
    }
}

#[test]
fn relay_ports_may_not_contain_a_listener_on_the_relay_address() {
    let e = err(&DEPLOYMENT.replace("24000-29999", "3000-3500"));
    assert_eq!(e.key, "relay.ports");
    assert!(e.message.contains("198.51.100.50:3478"), "{e}");
    // The internal NIC's listener is on another address: relay sockets never bind there.
    let text = DEPLOYMENT
        .replace("192.0.2.50:3478", "192.0.2.50:3100")
        .replace("198.51.100.50:3478", "198.51.100.50:3600")
        .replace("24000-29999", "3000-3500");
    parse(&text).unwrap();
    // Edges of the range count.
    assert_eq!(
        err(&DEPLOYMENT.replace("24000-29999", "3478-3478")).key,
        "relay.ports"
    );
}

#[test]
fn cidrs_with_host_bits_are_refused_with_both_readings() {
    let e = err(&DEPLOYMENT.replace("192.0.2.0/24", "192.0.2.10/24"));
    assert_eq!(e.key, "peers.allow[0]");
    assert_eq!(
        e.message,
        "192.0.2.10/24 has host bits set: write 192.0.2.0/24, or 192.0.2.10/32 for one host"
    );
    let text = DEPLOYMENT.replace(
        "allow = [\"192.0.2.0/24\", \"10.1.2.3\"]",
        "allow = [\"192.0.2.0/24\", \"10.1.2.3\"]\ndeny = [\"192.0.2.0/25\", \"2001:db8::1/64\"]",
    );
    let e = err(&text);
    assert_eq!(e.key, "peers.deny[1]");
    assert!(
        e.message
            .contains("write 2001:db8::/64, or 2001:db8::1/128 for one host"),
        "{e}"
    );
}

#[test]
fn per_user_limit_above_the_total_is_accepted() {
    let c = parse(&DEPLOYMENT.replace(
        "max_allocations = 1800",
        "max_allocations = 1800\nmax_allocations_per_user = 5000",
    ))
    .unwrap();
    assert_eq!(c.max_allocations_per_user, 5000);
}

#[test]
fn allow_entries_take_a_protocol_and_ports() {
    let c = parse(&DEPLOYMENT.replace(
        r#"allow = ["192.0.2.0/24", "10.1.2.3"]"#,
        r#"allow = ["192.0.2.0/24", "192.0.2.10/32 udp", "192.0.2.11 5432", "10.1.0.0/16 tcp 10000-20000"]"#,
    ))
    .unwrap();
    let shown: Vec<String> = c.peers_allow.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        shown,
        [
            "192.0.2.0/24",
            "192.0.2.10/32 udp",
            "192.0.2.11/32 5432",
            "10.1.0.0/16 tcp 10000-20000"
        ]
    );
    assert!(c.peers_rest_allow.is_none());
    for (entry, says) in [
        ("192.0.2.10/32 sctp", "sctp"),
        ("192.0.2.10/32 udp 0", "ports need 1 <= low"),
        ("192.0.2.10/32 20-10", "20-10"),
        ("192.0.2.10/32 80 udp", "protocol before ports"),
        ("192.0.2.10/24 udp", "host bits"),
    ] {
        let e = err(&DEPLOYMENT.replace(
            r#"allow = ["192.0.2.0/24", "10.1.2.3"]"#,
            &format!(r#"allow = ["192.0.2.0/24", "10.1.2.3", "{entry}"]"#),
        ));
        assert_eq!(e.key, "peers.allow[2]", "{entry}: {e}");
        assert!(e.message.contains(says), "{entry}: {e}");
    }
    // deny stays plain CIDRs.
    let e = err(&DEPLOYMENT.replace("[limits]", "deny = [\"10.0.0.0/8 udp\"]\n\n[limits]"));
    assert_eq!(e.key, "peers.deny[0]", "{e}");
}

#[test]
fn rest_users_get_their_own_allow_list() {
    let text = DEPLOYMENT.replace(
        "[limits]",
        "[peers.rest]\nallow = [\"192.0.2.10/32 udp 10000-20000\"]\n\n[limits]",
    );
    let c = parse(&text).unwrap();
    let rest: Vec<String> = c
        .peers_rest_allow
        .as_ref()
        .expect("[peers.rest]")
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(rest, ["192.0.2.10/32 udp 10000-20000"]);
    assert_eq!(c.peers_allow.len(), 2, "the main list is unchanged");
    let e = err(&text.replace("10000-20000\"]", "10000-20000\", \"bad\"]"));
    assert_eq!(e.key, "peers.rest.allow[1]", "{e}");
    let e = err(&text.replace("[peers.rest]\nallow", "[peers.rest]\nalow"));
    assert!(e.message.contains("alow"), "{e}");
    // An empty REST list is allowed: REST users then get only the default policy.
    let c =
        parse(&text.replace("allow = [\"192.0.2.10/32 udp 10000-20000\"]", "allow = []")).unwrap();
    assert_eq!(c.peers_rest_allow.as_deref(), Some(&[][..]));
}

#[test]
fn unauthenticated_rate_and_burst() {
    let c = parse(DEPLOYMENT).unwrap();
    assert_eq!(
        (c.unauthenticated_rate, c.unauthenticated_burst),
        (200, 400)
    );
    let with = |lines: &str| {
        parse(&DEPLOYMENT.replace(
            "max_allocations = 1800",
            &format!("max_allocations = 1800\n{lines}"),
        ))
    };
    let c = with("unauthenticated_rate = 50\nunauthenticated_burst = 60").unwrap();
    assert_eq!((c.unauthenticated_rate, c.unauthenticated_burst), (50, 60));
    // The burst follows a higher rate.
    let c = with("unauthenticated_rate = 1000").unwrap();
    assert_eq!(
        (c.unauthenticated_rate, c.unauthenticated_burst),
        (1000, 2000)
    );
    // Off.
    let c = with("unauthenticated_rate = 0\nunauthenticated_burst = 0").unwrap();
    assert_eq!(c.unauthenticated_rate, 0);
    let e = with("unauthenticated_burst = 0").unwrap_err();
    assert_eq!(e.key, "limits.unauthenticated_burst", "{e}");
    // Refused by the file's types (`load` adds the line).
    let e = with("unauthenticated_rate = -1").unwrap_err();
    assert!(e.to_string().contains("u32"), "{e}");
}

#[test]
fn unauthenticated_global_rate_and_burst() {
    let c = parse(DEPLOYMENT).unwrap();
    assert_eq!(
        (
            c.unauthenticated_global_rate,
            c.unauthenticated_global_burst
        ),
        (5000, 10_000)
    );
    let with = |lines: &str| {
        parse(&DEPLOYMENT.replace(
            "max_allocations = 1800",
            &format!("max_allocations = 1800\n{lines}"),
        ))
    };
    let c = with("unauthenticated_global_rate = 800\nunauthenticated_global_burst = 900").unwrap();
    assert_eq!(
        (
            c.unauthenticated_global_rate,
            c.unauthenticated_global_burst
        ),
        (800, 900)
    );
    // The burst follows a higher rate.
    let c = with("unauthenticated_global_rate = 20000").unwrap();
    assert_eq!(c.unauthenticated_global_burst, 40_000);
    // Off, independently of the per-source limit.
    let c = with("unauthenticated_global_rate = 0").unwrap();
    assert_eq!(
        (c.unauthenticated_global_rate, c.unauthenticated_rate),
        (0, 200)
    );
    let e = with("unauthenticated_global_burst = 0").unwrap_err();
    assert_eq!(e.key, "limits.unauthenticated_global_burst", "{e}");
    assert!(
        e.to_string().contains("unauthenticated_global_rate = 0"),
        "{e}"
    );
    let e = with("unauthenticated_global_rate = -1").unwrap_err();
    assert!(e.to_string().contains("u32"), "{e}");
}

#[test]
fn rest_credentials_get_their_own_quotas() {
    let c = parse(DEPLOYMENT).unwrap();
    assert_eq!(c.max_allocations_per_rest_user, 16);
    assert_eq!(c.max_allocations_per_source, 1000);
    let c = parse(&DEPLOYMENT.replace(
        "max_allocations = 1800",
        "max_allocations = 1800\nmax_allocations_per_rest_user = 4\nmax_allocations_per_source = 300",
    ))
    .unwrap();
    assert_eq!(c.max_allocations_per_rest_user, 4);
    assert_eq!(c.max_allocations_per_source, 300);
    for key in [
        "max_allocations_per_rest_user",
        "max_allocations_per_source",
    ] {
        let e = parse(&DEPLOYMENT.replace(
            "max_allocations = 1800",
            &format!("max_allocations = 1800\n{key} = 0"),
        ))
        .unwrap_err();
        assert_eq!(e.key, format!("limits.{key}"), "{e}");
    }
}

#[test]
fn the_default_allocation_limit_is_the_one_the_kernel_maps_are_sized_for() {
    let c = parse(&DEPLOYMENT.replace("max_allocations = 1800\n", "")).unwrap();
    // README: 10,000 when `[limits] max_allocations` is not set.
    assert_eq!(c.max_allocations, 10_000);
    assert_eq!(
        c.max_allocations,
        relay_common::DEFAULT_MAX_ALLOCATIONS as usize,
        "the kernel object's default map sizes (relay_common) and the config's default differ"
    );
}

#[test]
fn bandwidth_limits_default_off_and_take_bit_per_second_in_range() {
    let c = parse(DEPLOYMENT).unwrap();
    assert_eq!((c.max_bps_per_allocation, c.max_bps_per_user), (0, 0));
    let limits = |extra: &str| {
        DEPLOYMENT.replace(
            "max_allocations = 1800",
            &format!("max_allocations = 1800\n{extra}"),
        )
    };
    let c = parse(&limits(
        "max_bps_per_allocation = 800000\nmax_bps_per_user = 0",
    ))
    .unwrap();
    assert_eq!((c.max_bps_per_allocation, c.max_bps_per_user), (800_000, 0));
    for (text, key) in [
        (
            "max_bps_per_allocation = 100",
            "limits.max_bps_per_allocation",
        ),
        ("max_bps_per_user = 200000000000", "limits.max_bps_per_user"),
    ] {
        assert_eq!(err(&limits(text)).key, key);
    }
}

#[test]
fn cluster_nodes_and_admin_tls() {
    let base = format!("{DEPLOYMENT}\n[admin]\ntoken = \"t0ken\"\n");
    let c = parse(&format!(
        "{base}\n[cluster]\nnodes = [{{ turn = \"203.0.113.51:3478\", admin = \"http://192.0.2.51:9641\" }},\n  {{ turn = \"203.0.113.52:3478\", admin = \"https://192.0.2.52:9641/\" }}]\nca = \"ca.pem\"\n"
    ))
    .unwrap();
    assert_eq!(c.cluster.nodes.len(), 2);
    assert_eq!(c.cluster.nodes[0].turn.to_string(), "203.0.113.51:3478");
    assert_eq!(
        c.cluster.nodes[1].admin.to_string(),
        "https://192.0.2.52:9641"
    );
    assert!(c.cluster.nodes[1].admin.tls);
    assert_eq!(c.cluster.ca.as_deref(), Some(Path::new("./ca.pem")));
    assert!(!c.admin.tls);

    let key = |text: &str| err(text).key;
    let node = |turn: &str, admin: &str| format!("{{ turn = \"{turn}\", admin = \"{admin}\" }}");
    let cluster = |nodes: &[String]| format!("{base}\n[cluster]\nnodes = [{}]\n", nodes.join(", "));
    let ok = node("203.0.113.51:3478", "http://192.0.2.51:9641");
    assert_eq!(
        key(&cluster(&[node("nope", "http://192.0.2.51:9641")])),
        "cluster.nodes[0].turn"
    );
    assert_eq!(
        key(&cluster(&[
            ok.clone(),
            node("203.0.113.52:3478", "ftp://x")
        ])),
        "cluster.nodes[1].admin"
    );
    // Our own listener, twice the same node, https without a CA, no token to send.
    assert_eq!(
        key(&cluster(&[node(
            "192.0.2.50:3478",
            "http://192.0.2.51:9641"
        )])),
        "cluster.nodes[0].turn"
    );
    assert_eq!(key(&cluster(&[ok.clone(), ok.clone()])), "cluster.nodes[1]");
    assert_eq!(
        key(&cluster(&[node(
            "203.0.113.52:3478",
            "https://192.0.2.52:9641"
        )])),
        "cluster.ca"
    );
    let no_token = format!("{DEPLOYMENT}\n[cluster]\nnodes = [{ok}]\n");
    assert_eq!(key(&no_token), "admin.token");
    // The admin endpoint over TLS needs the [tls] certificate.
    assert_eq!(key(&format!("{base}tls = true\n")), "admin.tls");
    let c = parse(&format!(
        "{base}tls = true\n[tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n"
    ))
    .unwrap();
    assert!(c.admin.tls);
}
