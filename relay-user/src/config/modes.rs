//! The choices an operator names with one word: `[xdp] mode`, `[xdp] forwarding` and the
//! event loop of each transport (`[udp] engine`, `[tcp] engine`). Plain values: the XDP
//! loader, the forwarding setup and the event loops act on them.

use std::{fmt, str::FromStr};

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

impl FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" => Ok(Self::Native),
            "generic" => Ok(Self::Generic),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown XDP mode `{other}` (expected auto, native, generic or off)"
            )),
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Off => "off",
        })
    }
}

/// `[xdp] forwarding`: who turns on the IP forwarding the kernel's FIB lookups need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Forwarding {
    /// Enable forwarding on the XDP interfaces, guard it with nftables, restore at exit.
    #[default]
    Auto,
    /// The operator manages it: only check, and warn when the fast path cannot route.
    Manual,
}

impl FromStr for Forwarding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "manual" => Ok(Self::Manual),
            other => Err(format!(
                "unknown forwarding setting `{other}` (expected auto or manual)"
            )),
        }
    }
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Manual => "manual",
        })
    }
}

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

impl FromStr for IoEngine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "io_uring" => Ok(Self::IoUring),
            "epoll" => Ok(Self::Epoll),
            _ => Err(format!(
                "`{s}` is not one of \"auto\", \"io_uring\", \"epoll\""
            )),
        }
    }
}

impl fmt::Display for IoEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::IoUring => "io_uring",
            Self::Epoll => "epoll",
        })
    }
}

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
        assert!("on".parse::<Forwarding>().is_err());
        assert!("xdp".parse::<AttachMode>().is_err());
        assert!("uring".parse::<IoEngine>().is_err());
    }
}
