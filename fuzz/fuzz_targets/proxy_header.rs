//! Parse arbitrary bytes as a PROXY protocol header (v1 and v2): no panic, a length
//! within the bounds, every prefix incomplete or parsed as the whole, and what parses
//! with an address written back out parses to the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_proto::proxy_header::*;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    match whole {
        Ok(Some((_, n))) => assert!(n <= data.len() && n <= V2_MAX),
        Ok(None) => assert!(data.len() < V2_MAX),
        Err(_) => {}
    }
    for k in 0..data.len().min(V2_MAX + 1) {
        let part = parse(&data[..k]);
        assert!(part == Ok(None) || part == whole, "prefix {k}");
    }
    if let Ok(Some((h, _))) = whole {
        let again = match h.version {
            Version::V1 => encode_v1(h.addresses),
            Version::V2 => encode_v2(h.command, h.addresses, &[]),
        };
        let (back, n) = parse(&again).expect("written header parses").expect("whole");
        assert_eq!((back.command, back.addresses, n), (h.command, h.addresses, again.len()));
    }
});
