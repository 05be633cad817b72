//! What `relay status` parses (relay-admin-api): the admin URL an operator gives and the
//! packet counters of a `/metrics` page, on arbitrary text. No panic; an address that
//! parses, written back as a URL, parses to the same; a counter line appended to any page
//! adds to its sum.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_admin_api::{endpoint::parse_url, metrics::packets};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    if let Some((address, tls)) = parse_url(&text) {
        let scheme = if tls { "https" } else { "http" };
        let again = format!("{scheme}://{address}/");
        assert_eq!(parse_url(&again), Some((address, tls)), "{again:?}");
    }

    let before = packets(&text);
    let more = format!("{text}\nrelay_packets_total{{path=\"xdp\",direction=\"to_peer\"}} 1\n");
    let (kernel, user) = before.unwrap_or((0, 0));
    assert_eq!(packets(&more), Some((kernel.saturating_add(1), user)));
});
