//! `[log] level` and `--log-level`: a level, or `target=level` directives.
//!
//! tracing's own filter syntax takes any bare word as a target, so `"infoo"` would mean
//! "only the target infoo, at every level" and the relay would run silent. Only the
//! subset operators need is accepted here.

/// The levels, in the order error messages list them.
pub const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Checks a log filter: comma-separated directives, each a level or `target=level` with
/// a target written as a Rust module path (`relay_user`, `aya::programs`).
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    let usage = || {
        format!(
            "use one of {} or `target=level` directives, e.g. \"info,relay_user=debug\"",
            LEVELS.join(", ")
        )
    };
    if filter.trim().is_empty() {
        return Err(format!("is empty: {}", usage()));
    }
    for directive in filter.split(',').map(str::trim) {
        let problem = match directive.split_once('=') {
            _ if directive.is_empty() => Some("an empty directive (stray comma?)".to_owned()),
            None if is_level(directive) => None,
            None => Some(format!("`{directive}` is not a level")),
            Some((target, level)) => {
                let (target, level) = (target.trim(), level.trim());
                if !is_module_path(target) {
                    Some(format!(
                        "`{target}` in `{directive}` is not a target (a Rust module path)"
                    ))
                } else if !is_level(level) {
                    Some(format!("`{level}` in `{directive}` is not a level"))
                } else {
                    None
                }
            }
        };
        if let Some(p) = problem {
            return Err(format!("{p}: {}", usage()));
        }
    }
    Ok(())
}

fn is_level(s: &str) -> bool {
    LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s))
}

/// `ident(::ident)*`, where an identifier starts with a letter or `_`.
fn is_module_path(s: &str) -> bool {
    !s.is_empty()
        && s.split("::").all(|seg| {
            let mut chars = seg.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::check_log_filter;

    #[test]
    fn levels_and_module_directives_pass() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "warn,relay_user=debug",
            "info, aya::programs::xdp = trace ,relay_ebpf=off",
        ] {
            check_log_filter(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_levels_listed() {
        for bad in [
            "infoo",
            "",
            " ",
            "info,",
            "relay_user=infoo",
            "relay-user=debug",
            "=debug",
            "relay_user::=debug",
            "9lives=info",
            "relay_user[conn]=debug",
            "3",
            "loud=[",
        ] {
            let e = check_log_filter(bad).expect_err(bad);
            assert!(
                e.contains("error, warn, info, debug, trace, off"),
                "{bad}: {e}"
            );
        }
        assert!(
            check_log_filter("infoo")
                .unwrap_err()
                .starts_with("`infoo` is not a level")
        );
    }
}
