//! The console's `/?token=` parameter (relay-admin-api's query.rs) on arbitrary query
//! strings: no panic; and any token, percent-encoded as a form would, comes back as it
//! was, among other parameters.

#![no_main]

use std::fmt::Write;

use libfuzzer_sys::fuzz_target;
use relay_admin_api::query::token_param;

/// Every byte but ASCII letters and digits as `%XX`: what a browser's form does to the
/// characters that matter here ('&', '=', '+', '%', space and non-ASCII).
fn encode(token: &str) -> String {
    let mut out = String::with_capacity(token.len() * 3);
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            write!(out, "%{b:02X}").unwrap();
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = token_param(Some(&text));
    let query = format!("a=b&token={}&token=other", encode(&text));
    assert_eq!(token_param(Some(&query)).as_deref(), Some(&*text));
});
