//! The console's query string: `/?token=TOKEN`, what a bookmark or the console's login
//! form sends. Pure (no HTTP types) so the fuzz crate can reach it without the daemon.

/// The `token` parameter of a query string (`/?token=…`), percent-decoded as a browser's
/// form encodes it; `None` without one. Invalid escapes stay as they are and invalid
/// UTF-8 becomes U+FFFD: a wrong token is then refused, never a panic.
pub fn token_param(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "token")
        .map(|(_, v)| {
            // A form sends spaces as '+'.
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v)
                .decode_utf8_lossy()
                .into_owned()
        })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn token_parameter_vectors() {
        assert_eq!(token_param(None), None);
        assert_eq!(token_param(Some("")), None);
        assert_eq!(token_param(Some("x=1")), None);
        assert_eq!(token_param(Some("token")), None);
        assert_eq!(token_param(Some("token=abc")).as_deref(), Some("abc"));
        assert_eq!(
            token_param(Some("x=1&token=a%2Bb+c%26")).as_deref(),
            Some("a+b c&")
        );
        // The first one counts.
        assert_eq!(token_param(Some("token=a&token=b")).as_deref(), Some("a"));
        assert_eq!(token_param(Some("token=")).as_deref(), Some(""));
        assert_eq!(token_param(Some("token=%ZZ")).as_deref(), Some("%ZZ"));
        assert_eq!(token_param(Some("token=%4")).as_deref(), Some("%4"));
        assert_eq!(token_param(Some("token=%C3%A9")).as_deref(), Some("é"));
        assert_eq!(token_param(Some("token=%FF")).as_deref(), Some("\u{FFFD}"));
    }

    proptest! {
        /// What a browser's form encoding makes of any token comes back as it was.
        #[test]
        fn token_parameter_round_trips(token in "\\PC{0,40}") {
            let encoded: String = percent_encoding::utf8_percent_encode(
                &token,
                percent_encoding::NON_ALPHANUMERIC,
            )
            .to_string();
            let query = format!("a=b&token={encoded}&c=d");
            prop_assert_eq!(token_param(Some(&query)), Some(token));
        }

        /// No query string makes the parser panic.
        #[test]
        fn token_parameter_never_panics(query in "\\PC{0,80}") {
            let _ = token_param(Some(&query));
        }
    }
}
