use std::path::Path;

use super::*;

/// The deployment of CONTEXT.md in the documented key names.
const DEPLOYMENT: &str = r#"
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

[xdp]
interfaces = ["eth1", "eth0"]
mode = "native"

[log]
level = "debug"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
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
    assert_eq!(c.xdp_mode, crate::xdp::AttachMode::Native);
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
            DEPLOYMENT.replace("[\"udp\"]", "[\"tcp\"]"),
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
    // Two listeners: which NIC relays is the operator's call.
    let two = "[[listen]]\naddress = \"127.0.0.1:3478\"\n[[listen]]\naddress = \"127.0.0.2:3478\"\n\
               [auth]\nshared_secrets = [\"x\"]\n";
    assert_eq!(err(two).key, "relay.address");
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
