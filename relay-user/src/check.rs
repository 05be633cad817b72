//! `relay check --config FILE`: what the relay would run with, or which key is wrong.

use std::{fmt::Write as _, io::Write as _, path::Path};

use crate::config::{self, AttachMode, Config, ConfigError};

pub fn run(path: &Path) -> anyhow::Result<()> {
    let c = load(path)?;
    let text = render(path, &c);
    // main() restores SIGPIPE's default for this command, so `relay check | head -1`
    // ends quietly; any other write error is the operator's to see.
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

/// The config file as the relay runs it: parsed, validated, and its certificates loaded
/// (startup, SIGHUP and `relay check` all go through here).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let c = config::load(path)?;
    certificates(&c)?;
    Ok(c)
}

/// Loads `[tls]`'s certificate and key, as the TLS listeners will: a wrong path, or a key
/// of another certificate, is an error naming `tls.certificate` or `tls.private_key`.
pub fn certificates(c: &Config) -> Result<(), ConfigError> {
    if let Some(ca) = &c.cluster.ca {
        relay_admin_api::client::tls_config_from_ca(ca)
            .map_err(|e| ConfigError::new("cluster.ca", format!("{}: {e}", ca.display())))?;
    }
    match &c.tls {
        Some(files) => crate::tcp::tls::load(files)
            .map(drop)
            .map_err(|e| ConfigError::new(e.key(), e.to_string())),
        None => Ok(()),
    }
}

/// The report, as printed: settings first, then notes on values that take no effect
/// as written.
pub fn render(path: &Path, c: &Config) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(out, "  {label:<17}{value}");
    };
    line("realm", &c.realm);
    for l in &c.listeners {
        let t: Vec<String> = l
            .transports
            .iter()
            .map(|t| format!("{t:?}").to_lowercase())
            .collect();
        line("listen", &format!("{} ({})", l.address, t.join(", ")));
    }
    for (family, r) in [("IPv4", c.relay_v4), ("IPv6", c.relay_v6)] {
        if let Some(r) = r {
            line(
                &format!("relay {family}"),
                &format!("bind {} advertised as {}", r.bind, r.public),
            );
        }
    }
    line("relay ports", &format!("{}-{}", c.ports.low, c.ports.high));
    line("users", &c.users.len());
    line("shared secrets", &c.shared_secrets.len());
    fn list<T: std::fmt::Display>(v: &[T]) -> String {
        if v.is_empty() {
            return "none".to_owned();
        }
        v.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
    line("peers allowed", &list(&c.peers_allow));
    if let Some(rest) = &c.peers_rest_allow {
        line("peers for REST", &list(rest));
    }
    line("peers denied", &list(&c.peers_deny));
    line(
        "max allocations",
        &format!(
            "{} ({} per user; TURN REST: {} per username, {} per source)",
            c.max_allocations,
            c.max_allocations_per_user.min(c.max_allocations),
            c.max_allocations_per_rest_user,
            c.max_allocations_per_source
        ),
    );
    let xdp = if c.xdp_mode == AttachMode::Off {
        "off".to_owned()
    } else {
        format!(
            "{} on [{}], forwarding {}",
            c.xdp_mode,
            c.xdp_interfaces.join(", "),
            c.xdp_forwarding
        )
    };
    line("xdp", &xdp);
    match c.udp_workers {
        0 => line("udp workers", &"one per CPU"),
        n => line("udp workers", &n),
    }
    if let Some(tls) = &c.tls {
        line("tls certificate", &tls.certificate.display());
        line("tls private key", &tls.private_key.display());
    }
    line(
        "admin",
        &format!(
            "{}://{} (token {})",
            if c.admin.tls { "https" } else { "http" },
            c.admin.address,
            if c.admin.token.is_some() {
                "required"
            } else {
                "none"
            }
        ),
    );
    for n in &c.cluster.nodes {
        line(
            "cluster node",
            &format!("turn {} admin {}", n.turn, n.admin),
        );
    }
    let alternates: Vec<String> = c.alternate_servers.iter().map(|a| a.to_string()).collect();
    line(
        "when full",
        &if !c.cluster.nodes.is_empty() {
            "300 to the least-loaded cluster node with room, else the alternates, else 508"
                .to_owned()
        } else if alternates.is_empty() {
            "508 Insufficient Capacity".to_owned()
        } else {
            format!("300 to {}", alternates.join(", "))
        },
    );
    line("drain timeout", &format!("{} s", c.drain_timeout.as_secs()));
    line("log level", &c.log_level);
    if let Some(w) = crate::cores::rest_policy_warning(c) {
        let _ = writeln!(out, "warning: {w}");
    }
    if c.max_allocations_per_user > c.max_allocations {
        let _ = writeln!(
            out,
            "note: limits.max_allocations_per_user ({}) is above limits.max_allocations ({}): \
             each user is held to {}",
            c.max_allocations_per_user, c.max_allocations, c.max_allocations
        );
    }
    format!("{}: ok\n{out}", path.display())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{certificates, render};
    use crate::{
        config::{
            ConfigFile, TlsFiles,
            tests::{DEPLOYMENT, parse},
        },
        cores::rest_policy_warning,
    };

    const BASE: &str = r#"
[[listen]]
address = "198.51.100.50:3478"
[relay]
public_address = "203.0.113.50"
address = "198.51.100.50"
ports = "24000-29999"
[auth]
shared_secrets = ["s"]
[peers]
allow = ["192.0.2.0/24"]
[xdp]
interfaces = ["eth1", "eth0"]
mode = "off"
"#;

    fn report(text: &str) -> String {
        let file: ConfigFile = toml::from_str(text).unwrap();
        let c = file.validate(Path::new(".")).unwrap();
        render(Path::new("relay.toml"), &c)
    }

    fn value<'a>(report: &'a str, label: &str) -> &'a str {
        report
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .unwrap_or_else(|| panic!("no `{label}` in\n{report}"))
            .trim()
    }

    #[test]
    fn empty_lists_say_none_and_xdp_off_has_no_interfaces() {
        let r = report(BASE);
        assert!(r.starts_with("relay.toml: ok\n"), "{r}");
        assert_eq!(value(&r, "peers allowed"), "192.0.2.0/24");
        assert_eq!(value(&r, "peers denied"), "none");
        assert_eq!(value(&r, "xdp"), "off");
        assert!(!r.contains("tls"), "{r}");
        assert!(!r.contains("note:"), "{r}");

        let r = report(&BASE.replace("mode = \"off\"", "mode = \"native\""));
        assert_eq!(value(&r, "xdp"), "native on [eth1, eth0], forwarding auto");
    }

    #[test]
    fn per_user_limit_above_the_total_is_a_note_with_the_effective_value() {
        let r = report(&format!(
            "{BASE}[limits]\nmax_allocations = 1800\nmax_allocations_per_user = 5000\n"
        ));
        assert_eq!(
            value(&r, "max allocations"),
            "1800 (1800 per user; TURN REST: 16 per username, 1000 per source)"
        );
        assert!(
            r.lines().any(
                |l| l.starts_with("note: limits.max_allocations_per_user (5000)")
                    && l.ends_with("each user is held to 1800")
            ),
            "{r}"
        );
    }

    #[test]
    fn tls_files_are_shown() {
        let file: ConfigFile = toml::from_str(BASE).unwrap();
        let mut c = file.validate(Path::new(".")).unwrap();
        c.tls = Some(TlsFiles {
            certificate: "/etc/relay/tls/fullchain.pem".into(),
            private_key: "/etc/relay/tls/privkey.pem".into(),
        });
        let r = render(Path::new("relay.toml"), &c);
        assert_eq!(value(&r, "tls certificate"), "/etc/relay/tls/fullchain.pem");
        assert_eq!(value(&r, "tls private key"), "/etc/relay/tls/privkey.pem");
    }

    #[test]
    fn certificates_that_do_not_load_name_their_key() {
        let dir = std::env::temp_dir().join(format!("relay-check-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_test_certificate(&dir);
        let file: ConfigFile = toml::from_str(BASE).unwrap();
        let mut c = file.validate(Path::new(".")).unwrap();
        let with = |certificate: &str, private_key: &str| TlsFiles {
            certificate: dir.join(certificate),
            private_key: dir.join(private_key),
        };
        c.tls = Some(with("cert.pem", "key.pem"));
        certificates(&c).expect("the fixture loads");
        let cases = [
            (with("missing.pem", "key.pem"), "tls.certificate"),
            (with("cert.pem", "missing.pem"), "tls.private_key"),
            // The certificate where the key should be.
            (with("cert.pem", "cert.pem"), "tls.private_key"),
            (with("key.pem", "key.pem"), "tls.certificate"),
        ];
        for (files, key) in cases {
            c.tls = Some(files);
            let e = certificates(&c).expect_err(key);
            assert_eq!(e.key, key, "{e}");
        }
        // `[cluster] ca`: the certificate serves as a CA file; the key does not.
        c.tls = None;
        c.cluster.ca = Some(dir.join("cert.pem"));
        certificates(&c).expect("a PEM certificate is a usable CA file");
        c.cluster.ca = Some(dir.join("key.pem"));
        assert_eq!(certificates(&c).unwrap_err().key, "cluster.ca");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A self-signed P-256 certificate for 203.0.113.50 (`openssl req -x509 -newkey ec`), and
    /// its key.
    const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----\n\
    MIIBkTCCATigAwIBAgIUDZmx8c/qkNaFUXNVvkV9E6Fs95IwCgYIKoZIzj0EAwIw\n\
    FTETMBEGA1UEAwwKcmVsYXkudGVzdDAgFw0yNjExMjIxODAzMjJaGA8yMTI2MTAy\n\
    OTE4MDMyMlowFTETMBEGA1UEAwwKcmVsYXkudGVzdDBZMBMGByqGSM49AgEGCCqG\n\
    SM49AwEHA0IABPbAx+JJM4rZ0pV5OWQnYdR8ybFWmsXdZuta1VXMyFE4wQJjSMHs\n\
    4X0LbdV/74KNcg76Pb9PlVZVqBb6UXOeYaSjZDBiMB0GA1UdDgQWBBTGGU43n12W\n\
    FXsiNpIGxfk2EC9g4jAfBgNVHSMEGDAWgBTGGU43n12WFXsiNpIGxfk2EC9g4jAP\n\
    BgNVHRMBAf8EBTADAQH/MA8GA1UdEQQIMAaHBMsAcTIwCgYIKoZIzj0EAwIDRwAw\n\
    RAIgIuOBgd8U533H3xosonU2r13LyXZfKK+oMp4L7KxgcJYCIBASRkP2jfZiAq0/\n\
    VviAGgDhcehnnJns7afpvA7HxtOY\n\
    -----END CERTIFICATE-----\n\
    ";
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----\n\
    MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggEe5PQxfmHhq0MIo\n\
    LV03ts6T+wbqIggaH6/OnIl0HtShRANCAAT2wMfiSTOK2dKVeTlkJ2HUfMmxVprF\n\
    3WbrWtVVzMhROMECY0jB7OF9C23Vf++CjXIO+j2/T5VWVagW+lFznmGk\n\
    -----END PRIVATE KEY-----\n\
    ";

    /// Writes the fixture as `dir`/cert.pem and `dir`/key.pem; returns the key's path.
    fn write_test_certificate(dir: &Path) -> std::path::PathBuf {
        std::fs::write(dir.join("cert.pem"), TEST_CERT).unwrap();
        let key = dir.join("key.pem");
        std::fs::write(&key, TEST_KEY).unwrap();
        key
    }

    /// REST users (browsers) that share the media server's `allow` list reach every port of
    /// it: `relay check` and the start log say so, and how to restrict them.
    #[test]
    fn warns_when_rest_users_reach_every_port_of_an_allowed_host() {
        let c = parse(DEPLOYMENT).unwrap();
        let w = rest_policy_warning(&c).expect("a warning");
        assert!(
            w.contains("192.0.2.0/24") && w.contains("[peers.rest]"),
            "{w}"
        );
        let report = render(Path::new("relay.toml"), &c);
        assert!(
            report.contains("warning: REST-credential users"),
            "{report}"
        );
        let restricted = DEPLOYMENT.replace(
            "[limits]",
            "[peers.rest]\nallow = [\"192.0.2.10/32 udp 10000-20000\"]\n\n[limits]",
        );
        let c = parse(&restricted).unwrap();
        assert_eq!(rest_policy_warning(&c), None);
        let report = render(Path::new("relay.toml"), &c);
        assert!(report.contains("peers for REST"), "{report}");
        assert!(!report.contains("warning:"), "{report}");
        let no_secrets = DEPLOYMENT.replace("shared_secrets = [\"s3cret\"]\n", "");
        assert_eq!(rest_policy_warning(&parse(&no_secrets).unwrap()), None);
        let ported = DEPLOYMENT.replace(
            r#"allow = ["192.0.2.0/24", "10.1.2.3"]"#,
            r#"allow = ["192.0.2.0/24 udp 10000-20000"]"#,
        );
        assert_eq!(rest_policy_warning(&parse(&ported).unwrap()), None);
    }
}
