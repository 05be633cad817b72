//! What `relay status` reads of a `/metrics` page (Prometheus text): the packet counters
//! over a fleet. Pure, without the `client` feature, so the fuzz crate reaches it.

/// `(kernel, userspace)` packets relayed so far, from the `relay_packets` counter family
/// of a `/metrics` page (`path="xdp"` is the kernel's, the others userspace's); `None`
/// when the page has none (not a relay, or an older one). Lines it does not understand
/// are skipped; sums saturate rather than wrap, so a hostile page cannot panic it.
pub fn packets(metrics: &str) -> Option<(u64, u64)> {
    let mut found = false;
    let (mut kernel, mut user) = (0u64, 0u64);
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("relay_packets_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Ok(n) = value.trim().parse::<u64>() else {
            continue;
        };
        found = true;
        let sum = if labels.contains("path=\"xdp\"") {
            &mut kernel
        } else {
            &mut user
        };
        *sum = sum.saturating_add(n);
    }
    found.then_some((kernel, user))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn packets_split_kernel_from_userspace() {
        let page = "# TYPE relay_packets counter\n\
            relay_packets_total{path=\"xdp\",direction=\"to_peer\"} 10\n\
            relay_packets_total{path=\"xdp\",direction=\"to_client\"} 5\n\
            relay_packets_total{path=\"udp\",direction=\"to_peer\"} 7\n\
            relay_packets_total{path=\"tcp\",direction=\"to_client\"} 1\n\
            relay_bytes_total{path=\"udp\",direction=\"to_peer\"} 999\n";
        assert_eq!(packets(page), Some((15, 8)));
        assert_eq!(packets("# EOF\n"), None);
        assert_eq!(packets(""), None);
        // Not a count: skipped, and alone it is no counter at all.
        assert_eq!(packets("relay_packets_total{path=\"udp\"} 1.5\n"), None);
        assert_eq!(packets("relay_packets_total{path=\"udp\"} -1\n"), None);
        assert_eq!(packets("relay_packets_total{path=\"udp\"}\n"), None);
        assert_eq!(packets("relay_packets_total 3\n"), None);
        assert_eq!(
            packets("relay_packets_total{path=\"udp\"} 3\r\n"),
            Some((0, 3))
        );
        let max = format!(
            "relay_packets_total{{path=\"xdp\"}} {m}\nrelay_packets_total{{path=\"xdp\"}} {m}\n",
            m = u64::MAX
        );
        assert_eq!(packets(&max), Some((u64::MAX, 0)));
    }

    /// One counter line: path, direction, value.
    fn counter() -> impl Strategy<Value = (&'static str, &'static str, u64)> {
        (
            prop::sample::select(vec!["xdp", "udp", "tcp", "tls"]),
            prop::sample::select(vec!["to_peer", "to_client"]),
            0..1u64 << 48,
        )
    }

    proptest! {
        /// A page written as the daemon writes it, with other families in between, sums
        /// to what went in.
        #[test]
        fn written_counters_sum(lines in prop::collection::vec(counter(), 0..12)) {
            let mut page = String::from("# HELP relay_packets Packets relayed.\n# TYPE relay_packets counter\n");
            let (mut kernel, mut user) = (0, 0);
            for (path, direction, n) in &lines {
                page += &format!("relay_packets_total{{path=\"{path}\",direction=\"{direction}\"}} {n}\n");
                page += &format!("relay_bytes_total{{path=\"{path}\",direction=\"{direction}\"}} {}\n", n * 100);
                if *path == "xdp" { kernel += n } else { user += n }
            }
            page += "# EOF\n";
            let expected = (!lines.is_empty()).then_some((kernel, user));
            prop_assert_eq!(packets(&page), expected);
        }

        /// No page makes the reader panic.
        #[test]
        fn never_panics(page in "(\\PC|\n){0,200}") {
            let _ = packets(&page);
        }
    }
}
