//! `proxy_protocol` and `proxy_from` on a `[[listen]]`: the relay behind a TCP load
//! balancer that announces each client with a PROXY protocol header.

use ipnet::IpNet;

use super::{ConfigError, ListenSection, Transport};

/// The networks allowed to send the header on listener `i`, if it expects one.
pub(super) fn proxy_from(i: usize, l: &ListenSection) -> Result<Option<Vec<IpNet>>, ConfigError> {
    if !l.proxy_protocol {
        if !l.proxy_from.is_empty() {
            return Err(ConfigError::new(
                format!("listen[{i}].proxy_from"),
                "has no effect without proxy_protocol = true on the same [[listen]]",
            ));
        }
        return Ok(None);
    }
    if l.transports.contains(&Transport::Udp) {
        return Err(ConfigError::new(
            format!("listen[{i}].proxy_protocol"),
            "PROXY protocol exists for TCP and TLS only (there is no UDP header): \
             serve udp from a [[listen]] on another address or port, without proxy_protocol",
        ));
    }
    if l.proxy_from.is_empty() {
        return Err(ConfigError::new(
            format!("listen[{i}].proxy_from"),
            "is required with proxy_protocol = true: list the load balancers' addresses \
             (CIDRs). The header sets the client address the relay uses for limits, logs and \
             XOR-MAPPED-ADDRESS, so anyone else allowed to send it could claim any address",
        ));
    }
    super::validate::cidrs(&format!("listen[{i}].proxy_from"), &l.proxy_from).map(Some)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigError, ConfigFile};

    /// A TLS listener behind load balancers, and plain TCP with UDP on 3478.
    const BEHIND_LB: &str = r#"
[[listen]]
address = "198.51.100.50:443"
transports = ["tls"]
proxy_protocol = true
proxy_from = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]

[[listen]]
address = "198.51.100.50:3478"
transports = ["udp", "tcp"]

[relay]
address = "198.51.100.50"
ports = "24000-29999"

[auth]
shared_secrets = ["s3cret"]

[tls]
certificate = "cert.pem"
private_key = "key.pem"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).expect("TOML");
        file.validate(Path::new("/nonexistent"))
    }

    #[test]
    fn proxy_from_is_kept_per_listener() {
        let c = parse(BEHIND_LB).unwrap();
        let nets: Vec<String> = c.listeners[0]
            .proxy_from
            .as_ref()
            .expect("proxy_protocol on the TLS listener")
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert_eq!(c.listeners[1].proxy_from, None);
    }

    #[test]
    fn mistakes_name_their_key_and_say_why() {
        let cases = [
            // UDP has no header to carry.
            (
                BEHIND_LB.replace("transports = [\"tls\"]", "transports = [\"tls\", \"udp\"]"),
                "listen[0].proxy_protocol",
                "TCP and TLS only",
            ),
            // Without a list, anyone could claim any client address.
            (
                BEHIND_LB.replace(
                    "proxy_from = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]\n",
                    "",
                ),
                "listen[0].proxy_from",
                "could claim any address",
            ),
            (
                BEHIND_LB.replace("\"10.0.0.0/8\"", "\"10.0.0.1/8\""),
                "listen[0].proxy_from[0]",
                "host bits",
            ),
            (
                BEHIND_LB.replace("\"192.0.2.7\"", "\"lb.example\""),
                "listen[0].proxy_from[1]",
                "",
            ),
            (
                BEHIND_LB.replace("proxy_protocol = true\n", ""),
                "listen[0].proxy_from",
                "no effect without proxy_protocol",
            ),
        ];
        for (text, key, why) in cases {
            let e = parse(&text).expect_err(key);
            assert_eq!(e.key, key, "{e}");
            assert!(e.to_string().contains(why), "{e}");
        }
    }
}
