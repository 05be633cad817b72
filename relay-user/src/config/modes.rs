//! The choices an operator names with one word: `[xdp] mode`, `[xdp] forwarding` and the
//! event loop of each transport (`[udp] engine`, `[tcp] engine`). Plain values: the XDP
//! loader, the forwarding setup and the event loops act on them.

use std::{fmt, str::FromStr};

/// `FromStr` and `Display` for an enum that the config names by one word per variant;
/// `$refusal` words the error for any other word.
macro_rules! one_word {
    ($ty:ident { $($variant:ident = $word:literal),+ $(,)? }, $refusal:expr) => {
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($word => Ok(Self::$variant),)+
                    other => Err($refusal(other)),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self {
                    $(Self::$variant => $word,)+
                })
            }
        }
    };
}

/// `[xdp] mode` in the config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode where the driver supports it, else generic.
    #[default]
    Auto,
    Native,
    Generic,
    /// No kernel fast path: everything is relayed from userspace.
    Off,
}

one_word!(
    AttachMode { Auto = "auto", Native = "native", Generic = "generic", Off = "off" },
    |other| format!("unknown XDP mode `{other}` (expected auto, native, generic or off)")
);

/// `[xdp] forwarding`: who turns on the IP forwarding the kernel's FIB lookups need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Forwarding {
    /// Enable forwarding on the XDP interfaces, guard it with nftables, restore at exit.
    #[default]
    Auto,
    /// The operator manages it: only check, and warn when the fast path cannot route.
    Manual,
}

one_word!(
    Forwarding { Auto = "auto", Manual = "manual" },
    |other| format!("unknown forwarding setting `{other}` (expected auto or manual)")
);

/// Which event loop serves a transport (`[udp] engine`, `[tcp] engine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEngine {
    /// io_uring when the kernel allows it, else epoll (the reason is logged).
    Auto,
    /// io_uring or fail to start.
    IoUring,
    /// epoll even where io_uring works.
    Epoll,
}

one_word!(
    IoEngine { Auto = "auto", IoUring = "io_uring", Epoll = "epoll" },
    |s| format!("`{s}` is not one of \"auto\", \"io_uring\", \"epoll\"")
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_word_reads_back_as_written() {
        for w in ["auto", "native", "generic", "off"] {
            assert_eq!(w.parse::<AttachMode>().unwrap().to_string(), w);
        }
        for w in ["auto", "manual"] {
            assert_eq!(w.parse::<Forwarding>().unwrap().to_string(), w);
        }
        for w in ["auto", "io_uring", "epoll"] {
            assert_eq!(w.parse::<IoEngine>().unwrap().to_string(), w);
        }
        // Operators see these: worded as before the enums moved here.
        assert_eq!(
            "on".parse::<Forwarding>(),
            Err("unknown forwarding setting `on` (expected auto or manual)".into())
        );
        assert_eq!(
            "xdp".parse::<AttachMode>(),
            Err("unknown XDP mode `xdp` (expected auto, native, generic or off)".into())
        );
        assert_eq!(
            "uring".parse::<IoEngine>(),
            Err("`uring` is not one of \"auto\", \"io_uring\", \"epoll\"".into())
        );
    }
}
